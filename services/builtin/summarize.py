"""summarize: any length of text, by map-reduce over chunks; styles one_line, bullets, paragraph.

Map: the text is cut into chunks that fit the model's context; in each chunk every sentence is
scored by how central it is (MiniLM similarity to the chunk's centroid, a little extra for a
document's opening sentence) and the best few are kept, with maximal marginal relevance so
they do not repeat each other. Reduce: the kept sentences compete again against the whole
text's centroid, and the winners are put back in document order.

A text of more than MAX_SENTENCES sentences is summarized from every k-th of them (MAX_SENTENCES in
all, spread over the whole text): what the kernel embeds and what the host compares stays bounded,
whatever the length. Splitting and picking run on a worker thread (ctx.cpu), not the host's loop.

That is `mode="extractive"`, the default: every sentence of the summary is a sentence of the
text, so a small model cannot slip in facts that are not there. `mode="abstractive"` then lets
the model rewrite the extract in the chosen style; its rewrite is kept only when most of its
content words come from the text, else the extract is returned (and `fallback` says so).
"""

from __future__ import annotations

import click
import numpy as np

from llmos.services import Task, hookimpl
from llmos.services import nlp
from llmos.userland.cli import connect, echo_stream, read_text

STYLES = ("one_line", "bullets", "paragraph")
DEFAULT_COUNT = {"one_line": 1, "bullets": 5, "paragraph": 4}
CHUNK_CHARS = 3000             # a map step: ~750 tokens, well inside SmolLM2's context
LEAD_BONUS = 0.08             # a document's first sentence often says what it is about
MIN_FAITHFUL = 0.7             # share of a rewrite's content words that must occur in the source
MAX_SENTENCES = 2048           # sentences embedded and compared per call, at most
MAX_SENTENCE_CHARS = 2000      # a longer "sentence" (text without a full stop) is cut: a summary stays small


def _select(vectors: np.ndarray, ids: list[int], target: np.ndarray, n: int, lead: set[int]) -> list[int]:
    """The n sentences among ids most central to target, not repeating each other."""
    scores = vectors[ids] @ target + np.array([LEAD_BONUS if i in lead else 0.0 for i in ids])
    picked = nlp.mmr(scores, vectors[ids], n, diversity=0.3)
    return [ids[j] for j in picked]


def candidates(text: str) -> list[nlp.Span]:
    """The sentences that may be picked: those of four words or more (else all), at most MAX_SENTENCES,
    evenly spread over the text, each cut at MAX_SENTENCE_CHARS."""
    every = nlp.sentences(text)
    spans = [s for s in every if len(nlp.words(s.text)) >= 4 and not s.text.startswith("#")] or every
    return [s if len(s.text) <= MAX_SENTENCE_CHARS else nlp.Span(s.text[:MAX_SENTENCE_CHARS], s.start,
                                                                  s.start + MAX_SENTENCE_CHARS)
            for s in spans[::max(1, -(-len(spans) // MAX_SENTENCES))]]


async def _here(fn, *args):
    return fn(*args)


async def extract(kernel, text: str, n: int, chunk_chars: int = CHUNK_CHARS, cpu=_here) -> tuple[list[nlp.Span], int]:
    """The n sentences that best summarize text (map-reduce over chunks), in document order; and the chunk
    count. cpu: how to run the pure-Python parts (a task passes ctx.cpu)."""
    spans = await cpu(candidates, text)
    if len(spans) <= n:
        return spans, 1
    vectors = await nlp.embed(kernel, [s.text for s in spans])
    best, chunks = await cpu(_pick, vectors, spans, n, chunk_chars)
    return [spans[i] for i in best], chunks


def _pick(vectors: np.ndarray, spans: list[nlp.Span], n: int, chunk_chars: int) -> tuple[list[int], int]:
    """Map, then reduce: the indexes of the n best spans in order, and how many chunks there were."""
    chunks: list[list[int]] = [[]]
    size = 0
    for i, s in enumerate(spans):
        if chunks[-1] and size + len(s.text) > chunk_chars:
            chunks.append([])
            size = 0
        chunks[-1].append(i)
        size += len(s.text) + 1
    lead = {0}
    kept: list[int] = []
    centroids, weights = [], []
    for ids in chunks:                                     # map
        c = nlp.centroid(vectors[ids])
        centroids.append(c)
        weights.append(len(ids))
        kept += _select(vectors, ids, c, min(len(ids), max(n, 3)), lead)
    overall = nlp.centroid(np.array(centroids) * np.array(weights)[:, None])
    best = _select(vectors, kept, overall, n, lead)        # reduce
    return sorted(best), len(chunks)


def render(sentences: list[str], style: str) -> list[str]:
    """The summary as the pieces it streams in."""
    sentences = [" ".join(s.split()) for s in sentences]      # hard-wrapped source lines become one line
    if style == "bullets":
        return [("\n" if i else "") + "- " + s.lstrip("-*• ").strip() for i, s in enumerate(sentences)]
    if style == "one_line":
        return [" ".join(s.strip() for s in sentences)]
    return [(" " if i else "") + s.strip() for i, s in enumerate(sentences)]


_INSTRUCTION = {
    "one_line": "Rewrite the key points below as one short sentence.",
    "bullets": "Rewrite the key points below as {n} short bullet points, one per line, each starting with '- '.",
    "paragraph": "Rewrite the key points below as one short paragraph of {n} sentences.",
}


def faithful(summary: str, source: str) -> bool:
    words = nlp.stems(summary)
    return bool(words) and len(words & nlp.stems(source)) / len(words) >= MIN_FAITHFUL


async def summarize(ctx, text: str, style: str = "paragraph", sentences: int | None = None,
                    mode: str = "extractive", chunk_chars: int = CHUNK_CHARS) -> dict:
    n = sentences or DEFAULT_COUNT[style]
    picked, chunks = await extract(ctx.kernel, text, n, chunk_chars, ctx.cpu)
    extract_pieces = render([s.text for s in picked], style)
    result = {"style": style, "mode": mode, "chunks": chunks, "fallback": False,
              "sentences": [{"text": " ".join(s.text.split()), "start": s.start, "end": s.end} for s in picked]}
    if mode == "abstractive" and picked:
        points = "\n".join(f"- {s.text}" for s in picked)
        prompt = _INSTRUCTION[style].format(n=n) + "\n\n" + points
        out = await ctx.kernel.infer(messages=[{"role": "user", "content": prompt}], max_tokens=60 * n + 40,
                                     temperature=0.0)
        rewrite = out["text"].strip()
        if style == "one_line":
            rewrite = rewrite.split("\n")[0].strip()
        if await ctx.cpu(faithful, rewrite, text):
            ctx.emit(rewrite)
            result["text"] = rewrite
            return result
        result["fallback"] = True
    for piece in extract_pieces:
        ctx.emit(piece)
    result["text"] = "".join(extract_pieces)
    return result


@hookimpl
def register_services(register):
    register("summarize", {
        "text": Task(summarize, "Summarize a text of any length (map-reduce over chunks). extractive: the most "
                                "central sentences, in order; abstractive: the model rewrites them, checked against "
                                "the source.",
                     args={"text": {"type": "str", "max_len": 16 << 20},
                           "style": {"type": "str", "default": "paragraph", "choices": list(STYLES)},
                           "sentences": {"type": "int|null", "nullable": True, "min": 1, "max": 50,
                                         "doc": "how many sentences or bullets (default 1, 5, 4 by style)"},
                           "mode": {"type": "str", "default": "extractive", "choices": ["extractive", "abstractive"]},
                           "chunk_chars": {"type": "int", "default": CHUNK_CHARS, "min": 500, "max": 32000,
                                           "doc": "size of a map step"}},
                     stream=True, cost_limit_s=300),     # up to 2,048 sentences embedded, and a rewrite
    }, description="Summaries of any length of text: extractive by default, optionally rewritten by the model.")


@click.command("summarize", help="summarize a text file, or - for stdin (map-reduce; any length)")
@click.argument("file")
@click.option("--style", type=click.Choice(STYLES), default="paragraph", show_default=True)
@click.option("--sentences", type=int, default=None, help="how many sentences or bullets")
@click.option("--mode", type=click.Choice(["extractive", "abstractive"]), default="extractive", show_default=True)
def summarize_command(file: str, style: str, sentences: int | None, mode: str) -> None:
    args = {"text": read_text(file), "style": style, "sentences": sentences, "mode": mode}
    with connect("llmos-summarize") as c:
        result = echo_stream(c.svc_stream("summarize", "text", args))
    if result.get("fallback"):
        click.echo("[the model's rewrite strayed from the text; this is the extract]", err=True)


@hookimpl
def register_commands(register):
    register(summarize_command)
