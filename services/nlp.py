"""Text plumbing the built-in services share: sentences, chunks, embeddings, similarity.

Nothing here loads a model: embeddings come from the kernel's `embed` syscall (the registry's
DEFAULT_EMBED_MODEL, MiniLM, unless LLMOS_SERVICES_EMBED_MODEL names another), so this module
is plain Python and numpy.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from llmos.specs.modelspec import DEFAULT_EMBED_MODEL, SERVICES_EMBED_ENV

EMBED_MODEL = os.environ.get(SERVICES_EMBED_ENV, DEFAULT_EMBED_MODEL)
EMBED_BATCH = 256                  # texts per embed syscall (the kernel takes up to 1024)

_ABBREV = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "inc", "ltd", "co", "no",
           "fig", "approx", "dept", "est", "min", "max", "mt", "jan", "feb", "mar", "apr", "jun", "jul", "aug",
           "sep", "sept", "oct", "nov", "dec", "u.s", "u.k", "a.m", "p.m"}
# A sentence ends at a run of .!? (matched at its start: inside "!!!..." it re-read the run), a blank line, a list item
_SENT_END = re.compile(r"(?<![.!?])[.!?]+[\"')\]]*\s+|\n\s*\n+|\n(?=\s*(?:[-*+•]|\d+[.)])\s)")
_ABBREV_TAIL = re.compile(r"([A-Za-z.]+)\.$")
_SPACES = re.compile(r"\s*")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")
STOPWORDS = frozenset("""a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which while
who whom why will with would you your yours yourself yourselves also may might must shall can't cannot won't don't
doesn't didn't isn't aren't wasn't weren't i'm i've i'd you're it's that's there's what's let's get got""".split())


@dataclass
class Span:
    text: str
    start: int
    end: int


def sentences(text: str) -> list[Span]:
    """Sentences with their offsets; knows common abbreviations, blank lines and list items. Linear: an
    abbreviation is seen in the 16 characters before its dot (re-reading the sentence so far was quadratic)."""
    out: list[Span] = []
    start = 0
    for m in _SENT_END.finditer(text):
        end = m.start() + len(m.group(0).rstrip())
        if "\n" not in m.group(0):
            last = _ABBREV_TAIL.search(text, max(start, end - 16), end)
            if last and last.group(1).lower().rstrip(".") in _ABBREV:
                continue      # "Dr. Smith": not the end of a sentence
        _add(out, text, start, end)
        start = m.end()
    _add(out, text, start, len(text))
    return out


def _add(out: list[Span], text: str, start: int, end: int) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start and _WORD.search(text[start:end]):
        out.append(Span(text[start:end], start, end))


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS and len(w) > 1}


def stem(word: str) -> str:
    """A crude suffix stripper (costs -> cost, exchanges -> exchange, boxes -> box): enough for overlap counts."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("es") and word[-3] in "sxz" or word.endswith(("ches", "shes")):
        return word[:-2]
    for suffix in ("ing", "ed", "ly", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[:-len(suffix)]
    return word


def stems(text: str) -> set[str]:
    return {stem(w) for w in content_words(text)}


def overlap(query: str, text: str) -> float:
    """The share of the query's content words (stemmed) that the text contains."""
    q = stems(query)
    return len(q & stems(text)) / len(q) if q else 0.0


def approx_tokens(text: str) -> int:
    """Tokens for a BPE tokenizer on English, within ~20%: enough to keep prompts inside a context."""
    return max(1, len(text) // 4)


def pack(pieces: list[str], max_chars: int, overlap: int = 0) -> list[str]:
    """Greedy packing of pieces (sentences, paragraphs) into chunks of at most max_chars.

    overlap: how many trailing pieces of a chunk start the next one too, so a fact that
    straddles a boundary is whole in at least one chunk. A piece longer than max_chars is cut.
    """
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for piece in pieces:
        if len(piece) > max_chars:
            heads, piece = _cut(piece, max_chars)
            if current:
                chunks.append(current)
                current, size = [], 0
            chunks += [[head] for head in heads]
        if current and size + len(piece) + 1 > max_chars:
            chunks.append(current)
            carried = current[-overlap:] if overlap else []
            if sum(len(p) + 1 for p in carried) + len(piece) > max_chars:
                carried = []
            current, size = list(carried), sum(len(p) + 1 for p in carried)
        current.append(piece)
        size += len(piece) + 1
    if current:
        chunks.append(current)
    return [" ".join(c) for c in chunks if c]


def _cut(piece: str, max_chars: int) -> tuple[list[str], str]:
    """A piece longer than max_chars cut at a space near each limit: the heads, and the tail that fits.
    It walks an index along the piece: cutting the head off a copy each time was quadratic."""
    heads, pos, end, trimmed = [], 0, len(piece), len(piece.rstrip())
    while end - pos > max_chars:
        cut = piece.rfind(" ", pos, pos + max_chars)
        cut = cut if cut - pos > max_chars // 2 else pos + max_chars
        heads.append(piece[pos:cut].strip())
        pos, end = _SPACES.match(piece, cut).end(), trimmed      # the rest, stripped as a copy of it would be
    return heads, piece[pos:end]


@dataclass
class Section:
    heading: str        # "Title > Section", "" before the first heading
    paragraphs: list[str]


_HEADING = re.compile(r"(#{1,6})\s(.+)")
_EMPHASIS = re.compile(r"\*\*|__|(?<![\w*])\*(?=\S)|(?<=\S)\*(?![\w*])")
_TABLE_RULE = re.compile(r"^:?-{2,}:?$")
HEADING_CHARS = 200      # of a section's heading path: it is repeated in every chunk of the section


def table_cells(line: str) -> list[str] | None:
    """The cells of a markdown table row ("| a | b |"), None for a line that is not one."""
    stripped = line.strip()
    if not (stripped.startswith("|") and stripped.endswith("|") and len(stripped) > 1):
        return None
    return [cell.strip() for cell in stripped[1:-1].split("|")]


def table_row_sentence(header: list[str], cells: list[str]) -> str:
    """A table row as a sentence that names its columns ("Method: Ground; Price: $9."): a row alone
    says nothing, and the whole table as one paragraph is one long "sentence" of every answer."""
    pairs = [f"{h}: {c}" if h else c for h, c in zip(header + [""] * len(cells), cells) if c]
    return "; ".join(pairs) + "."


def markdown_sections(text: str) -> list[Section]:
    """Split markdown (or plain text) by headings, then by blank lines into paragraphs.

    List items are paragraphs of their own, and so is each row of a table, written out with its
    column names; emphasis markers are dropped.
    """
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    current = Section("", [])
    para: list[str] = []
    table_header: list[str] | None = None

    def end_para():
        if para:
            joined = " ".join(line.strip() for line in para).strip()
            if joined:
                current.paragraphs.append(joined)
            para.clear()

    for line in text.splitlines():
        line = _EMPHASIS.sub("", line)
        cells = table_cells(line)
        if cells is not None:
            end_para()
            if all(_TABLE_RULE.match(c) for c in cells if c):
                continue
            if table_header is None:
                table_header = cells
            else:
                current.paragraphs.append(table_row_sentence(table_header, cells))
            continue
        table_header = None
        m = _HEADING.match(line)
        if m:
            end_para()
            if current.paragraphs:
                sections.append(current)
            level, rest = len(m.group(1)), m.group(2)    # closing #s stripped by hand: as a regex, cubic in spaces
            title = rest.rstrip().rstrip("#").strip() or rest.strip()[:1]
            path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, title)]
            current = Section(" > ".join(t for _, t in path)[:HEADING_CHARS], [])
        elif not line.strip():
            end_para()
        elif re.match(r"^\s*(?:[-*+•]|\d+[.)])\s", line):
            end_para()          # a list item is a paragraph of its own
            para.append(line.strip())
        else:
            para.append(line)
    end_para()
    if current.paragraphs:
        sections.append(current)
    return sections


def chunk_document(text: str, max_chars: int = 700, overlap: int = 1) -> list[tuple[str, str]]:
    """(heading, chunk text) pairs: by headings, then paragraphs packed to max_chars with sentence overlap."""
    out = []
    for section in markdown_sections(text):
        pieces: list[str] = []
        for paragraph in section.paragraphs:
            if len(paragraph) > max_chars:
                pieces += [s.text for s in sentences(paragraph)]
            else:
                pieces.append(paragraph)
        for chunk in pack(pieces, max_chars, overlap):
            out.append((section.heading, chunk))
    return out


# -- embeddings ---------------------------------------------------------------------------------

SHARED = "builtin"      # the cache scope of the services' own fixed texts (label prototypes), for every caller
_CACHE: dict[tuple[str, str, str], np.ndarray] = {}     # (scope, model, text) -> vector
_CACHE_MAX = 20_000     # vectors kept (about 30 MiB at 384 dimensions); past it the cache starts again


async def embed(kernel, texts: list[str], model: str = EMBED_MODEL, cache: str | None = None) -> np.ndarray:
    """Unit vectors for texts through the kernel's embed syscall, as a (len(texts), dim) float32 matrix.

    cache: a scope to keep the vectors in: SHARED for the services' own texts, a principal's name for
    its documents. One host serves every principal, so a caller's texts are cached under its own
    principal: a hit on another tenant's text would tell, by its speed, what that tenant asked about.
    """
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    todo = [t for t in dict.fromkeys(texts) if not (cache and (cache, model, t) in _CACHE)]
    found: dict[str, np.ndarray] = {}
    for i in range(0, len(todo), EMBED_BATCH):
        batch = todo[i:i + EMBED_BATCH]
        vectors = (await kernel.embed(batch, model=model))["vectors"]
        for text, vec in zip(batch, vectors):
            found[text] = np.asarray(vec, dtype=np.float32)
    if cache:
        if len(_CACHE) + len(found) > _CACHE_MAX:
            _CACHE.clear()
        for text, vec in found.items():
            _CACHE[(cache, model, text)] = vec
        found.update({t: _CACHE[(cache, model, t)] for t in texts if t not in found})
    return np.stack([found[t] for t in texts])


def centroid(matrix: np.ndarray) -> np.ndarray:
    c = matrix.mean(axis=0)
    n = np.linalg.norm(c)
    return c / n if n > 0 else c


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    z = (scores - scores.max()) / temperature
    e = np.exp(z)
    return e / e.sum()


def mmr(scores: np.ndarray, vectors: np.ndarray, n: int, diversity: float = 0.3) -> list[int]:
    """Maximal marginal relevance: the n best items, each also unlike those already chosen."""
    chosen: list[int] = []
    candidates = list(range(len(scores)))
    while candidates and len(chosen) < n:
        if chosen:
            redundancy = (vectors[candidates] @ vectors[chosen].T).max(axis=1)
        else:
            redundancy = np.zeros(len(candidates))
        value = (1 - diversity) * scores[candidates] - diversity * redundancy
        best = candidates[int(np.argmax(value))]
        chosen.append(best)
        candidates.remove(best)
    return chosen
