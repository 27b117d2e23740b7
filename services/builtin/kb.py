"""kb: a knowledge base in a memory region: ingest documents, answer questions from them with citations.

Ingest splits each document by headings, then packs paragraphs into chunks of ~700 characters
with one sentence of overlap, and stores each chunk with memwrite(embed=true): the kernel
embeds it and keeps the vector next to the entry, so retrieval is one memsearch syscall.

Answers are extracted, not generated: the passages memsearch returns are cut into sentences,
each sentence is scored by its embedding similarity to the question plus its passage's score
and its overlap with the question's words (answers.py), and the best sentence is the answer,
quoted with its chunk id and source file. A 135M model asked to answer from passages restates them with
wrong numbers often enough that quoting is the safer default; `rephrase=true` lets the model
turn the quote into a sentence, and its output is kept only if it keeps the quote's numbers.
When the best passage scores under `min_score` the answer is "I don't know".
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import re
from pathlib import Path

import numpy as np

from llmos.services import ServiceError, Task, hookimpl
from llmos.services import nlp
from llmos.userland.client import LLMOSError

from .answers import candidate_sentences, rerank, score_sentences

MIN_SCORE = 0.27           # memsearch cosine under which nothing in the kb is about the question (calibrated on tests/data)
# Passages whose sentences compete for the answer: the best few, within this much of the best one's
# rank. Retrieval ranks a passage by its gist, so the passage that holds the answer is often second.
POOL_SIZE = 4
POOL_GAP = 0.2
TEXT_SUFFIXES = {".md", ".markdown", ".txt", ".text", ".rst"}
MAX_FILE_BYTES = 2 << 20
MAX_FILES = 10_000
INGEST_CONCURRENCY = 8      # memwrites in flight per ingest: the host runs 4 calls of a caller at once, so 32
INGEST_LIMIT_S = 600        # 16 MiB of text is ~24,000 chunks to embed: minutes on a CPU
_KB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
DONT_KNOW = "I don't know: nothing in the knowledge base answers that."


def region_for(ctx, kb: str) -> str:
    """The kb's region, in the calling principal's namespace (ctx.kernel's memory calls run there), so any
    program of alice's sees alice's kb "help", none of bob's does, and its chunks count against alice's
    memory quota. Spelled out rather than ctx.region: support reads kbs from a ctx of its own service."""
    if not _KB_NAME.match(kb):
        raise ServiceError("EINVAL", f"kb name '{kb[:80]}' must be 1-64 letters, digits, '.', '_' or '-'")
    return f"svc/kb/{kb}"


def split_key(key: str) -> tuple[str, int]:
    source, _, idx = key.rpartition("#")
    return source, int(idx) if idx.isdigit() else 0


def read_documents(folder: str) -> list[dict]:
    """The text documents under a folder as kb.ingest_texts takes them ({name, text}), read with the
    rights of whoever calls this: for a client (the CLI) that sends text instead of a path."""
    root = Path(os.path.expanduser(folder))
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    docs = []
    for f in files[:MAX_FILES]:
        if f.suffix.lower() in TEXT_SUFFIXES and f.stat().st_size <= MAX_FILE_BYTES:
            try:
                docs.append({"name": f.name if root.is_file() else f.relative_to(root).as_posix(),
                             "text": f.read_text(encoding="utf-8")})
            except UnicodeDecodeError:
                continue
    return docs


async def ingest(ctx, kb: str, text: str | None = None, path: str | None = None, source: str | None = None,
                 chunk_chars: int = 700, overlap: int = 1) -> dict:
    region = region_for(ctx, kb)
    if (text is None) == (path is None):
        raise ServiceError("EINVAL", "kb.ingest: give exactly one of 'text' and 'path'")
    if text is not None:
        docs = [(source or f"text-{hashlib.sha1(text.encode()).hexdigest()[:8]}", text)]
        skipped = []
    else:      # only under the operator's [services] read_dirs (services/files.py)
        found, skipped = await ctx.cpu(ctx.files.collect, path, TEXT_SUFFIXES, "kb.ingest")
        docs = [(d.source, d.text) for d in found]
    return await _store(ctx, kb, region, docs, skipped, chunk_chars, overlap)


async def ingest_texts(ctx, kb: str, docs: list, chunk_chars: int = 700, overlap: int = 1) -> dict:
    region = region_for(ctx, kb)
    well_formed = all(isinstance(d, dict) and isinstance(d.get("name"), str) and isinstance(d.get("text"), str)
                      and 0 < len(d["name"]) <= 512 for d in docs)
    if len(docs) > MAX_FILES or not well_formed:
        raise ServiceError("EINVAL", f"kb.ingest_texts: 'docs' must be a list of at most {MAX_FILES} "
                                      f"{{name: 1-512 chars, text: str}}")
    return await _store(ctx, kb, region, [(d["name"], d["text"]) for d in docs], [], chunk_chars, overlap)


async def _store(ctx, kb: str, region: str, docs: list[tuple[str, str]], skipped: list[dict],
                 chunk_chars: int, overlap: int) -> dict:
    k = ctx.kernel
    existing: dict[str, list[str]] = {}         # source -> its keys stored before
    try:
        for key in (await k.memread(region))["keys"]:
            existing.setdefault(split_key(key)[0], []).append(key)
    except LLMOSError as exc:
        if exc.errno != "ENOENT":
            raise

    async def write(pairs) -> None:
        for key, value in pairs:
            await k.memwrite(region, key, value, embed=True, model=nlp.EMBED_MODEL)

    report, total = [], 0
    for src, body in docs:
        entries, stale = await ctx.cpu(_entries, src, body, chunk_chars, overlap, existing.get(src, ()))
        if entries:    # the first alone: it loads the embedding model if need be, then the rest in parallel
            await write(entries[:1])
            rest = itertools.islice(entries, 1, None)     # INGEST_CONCURRENCY writers share it: no task per chunk
            await asyncio.gather(*(write(rest) for _ in range(INGEST_CONCURRENCY)))
        for key in stale:
            await k.memdel(region, key)      # the document got shorter since it was last ingested
        report.append({"source": src, "chunks": len(entries)})
        total += len(entries)
    return {"kb": kb, "documents": report, "chunks": total, "skipped": skipped}


def _entries(src: str, body: str, chunk_chars: int, overlap: int, before: list[str]) -> tuple[list, list[str]]:
    """A document's (key, value) entries, its chunks with their headings; and its keys from before that it
    no longer has. On a worker thread: 16 MiB of text is ~170,000 chunks."""
    chunks = nlp.chunk_document(body, chunk_chars, overlap)
    entries = [(f"{src}#{i:04d}", f"{heading}\n{chunk}" if heading else chunk)
               for i, (heading, chunk) in enumerate(chunks)]
    fresh = {key for key, _ in entries}
    return entries, sorted(key for key in before if key not in fresh)


async def _search(ctx, kb: str, query: str, k: int) -> list[dict]:
    try:
        found = await ctx.kernel.memsearch(region_for(ctx, kb), query, k=k, model=nlp.EMBED_MODEL)
    except LLMOSError as exc:
        if exc.errno == "ENOENT" and "region" in exc.message:
            raise ServiceError("ENOENT", f"no knowledge base '{kb}': ingest documents into it first") from None
        raise
    out = []
    for r in found["results"]:
        source, idx = split_key(r["key"])
        out.append({"key": r["key"], "source": source, "chunk": idx, "score": r["score"], "text": r["value"]})
    return out


async def search(ctx, kb: str, query: str, k: int = 5) -> dict:
    return {"kb": kb, "passages": await _search(ctx, kb, query, k)}


async def answer_question(ctx, kb: str, question: str, k: int = 3, min_score: float = MIN_SCORE,
                          rephrase: bool = False, focus: str | None = None) -> dict:
    passages = await _search(ctx, kb, question, max(k, 8))
    if not passages or passages[0]["score"] < min_score:
        return {"answer": DONT_KNOW, "found": False, "quote": None, "citations": [],
                "passages": passages[:k], "best_score": passages[0]["score"] if passages else None}
    top_score = passages[0]["score"]
    passages = await ctx.cpu(rerank, question, passages)
    best_rank = passages[0]["rank_score"]
    pool = [p for p in passages[:POOL_SIZE] if p["rank_score"] >= best_rank - POOL_GAP]
    candidates = await ctx.cpu(candidate_sentences, pool)
    if not candidates:
        best_passage, quote = pool[0], pool[0]["text"]
    else:
        scores = await score_sentences(ctx.kernel, ctx.caller.get("principal", "?"), question, pool, candidates, focus,
                                       ctx.cpu)
        best = int(np.argmax(scores))
        best_passage, quote = pool[candidates[best].passage], candidates[best].quote
    answer = quote
    if rephrase:
        answer = await _rephrase(ctx, question, quote)
    cited = [best_passage] + [p for p in passages[:k] if p is not best_passage]
    return {"answer": answer, "found": True, "quote": quote,
            "citations": [{"key": p["key"], "source": p["source"], "chunk": p["chunk"], "score": p["score"]}
                          for p in cited[:k]],
            "passages": passages[:k], "best_score": top_score}


async def _rephrase(ctx, question: str, quote: str) -> str:
    """The model's one-sentence answer from the quote, if it keeps the quote's numbers; else the quote."""
    prompt = (f"Answer the question in one sentence using only this fact.\n\nFact: {quote}\n\n"
              f"Question: {question}")
    out = await ctx.kernel.infer(messages=[{"role": "user", "content": prompt}], max_tokens=60, temperature=0.0,
                                 stop=["\n"])
    text = out["text"].strip()
    numbers = set(re.findall(r"\d+(?:[.,]\d+)?", quote))
    if not text or not numbers <= set(re.findall(r"\d+(?:[.,]\d+)?", text)) or \
            len(nlp.content_words(text) & nlp.content_words(quote)) < 2:
        return quote
    return text


async def ask(ctx, kb: str, question: str, k: int = 3, min_score: float = MIN_SCORE, rephrase: bool = False) -> dict:
    result = await answer_question(ctx, kb, question, k, min_score, rephrase)
    if result["found"]:
        sources = ", ".join(dict.fromkeys(c["key"] for c in result["citations"][:1]))
        ctx.emit(f"{result['answer']} [{sources}]")
    else:
        ctx.emit(result["answer"])
    result["text"] = "".join(ctx.emitted) if ctx.emitted else result["answer"]
    return result


async def list_sources(ctx, kb: str) -> dict:
    try:
        keys = (await ctx.kernel.memread(region_for(ctx, kb)))["keys"]
    except LLMOSError as exc:
        if exc.errno == "ENOENT":
            raise ServiceError("ENOENT", f"no knowledge base '{kb}'") from None
        raise
    counts: dict[str, int] = {}
    for key in keys:
        source = split_key(key)[0]
        counts[source] = counts.get(source, 0) + 1
    return {"kb": kb, "documents": [{"source": s, "chunks": n} for s, n in sorted(counts.items())],
            "chunks": len(keys)}


async def drop(ctx, kb: str, source: str | None = None) -> dict:
    region = region_for(ctx, kb)
    try:
        if source is None:
            return {"kb": kb, "deleted": (await ctx.kernel.memdel(region))["deleted"]}
        keys = [key for key in (await ctx.kernel.memread(region))["keys"] if split_key(key)[0] == source]
    except LLMOSError as exc:
        if exc.errno == "ENOENT":
            raise ServiceError("ENOENT", f"no knowledge base '{kb}'") from None
        raise
    if not keys:
        raise ServiceError("ENOENT", f"knowledge base '{kb}' has no source '{source}'")
    for key in keys:
        await ctx.kernel.memdel(region, key)
    return {"kb": kb, "deleted": len(keys)}


_KB = {"type": "str", "max_len": 64, "doc": "the knowledge base's name (private to the calling principal: "
                                              "every program of one user sees it, no other user does)"}


@hookimpl
def register_services(register):
    register("kb", {
        "ingest": Task(ingest, "Add documents: text, or a file or folder path on the service host's machine "
                               "(.md .txt .rst) under a folder the operator allows ([services] read_dirs; "
                               "default: none, EACCES). Chunked by headings and paragraphs with overlap, embedded, stored. "
                               "Ingesting a source again replaces it.",
                       args={"kb": _KB, "text": {"type": "str|null", "nullable": True, "max_len": 16 << 20},
                             "path": {"type": "str|null", "nullable": True, "max_len": 4096},
                             "source": {"type": "str|null", "nullable": True, "max_len": 512,
                                        "doc": "name for a text document (default: a hash of it)"},
                             "chunk_chars": {"type": "int", "default": 700, "min": 100, "max": 4000},
                             "overlap": {"type": "int", "default": 1, "min": 0, "max": 5,
                                         "doc": "sentences or paragraphs repeated at the start of the next chunk"}},
                       cost_limit_s=INGEST_LIMIT_S),
        "ingest_texts": Task(ingest_texts, "Add documents the caller read itself: [{name, text}], chunked and "
                                           "stored as ingest does (how `llmos support --kb DIR` sends a folder).",
                             args={"kb": _KB, "docs": {"type": "list", "max_items": MAX_FILES,
                                                       "doc": f"documents: [{{name, text}}, ...], at most {MAX_FILES}"},
                                   "chunk_chars": {"type": "int", "default": 700, "min": 100, "max": 4000},
                                   "overlap": {"type": "int", "default": 1, "min": 0, "max": 5}},
                             cost_limit_s=INGEST_LIMIT_S),
        "ask": Task(ask, "Answer a question from the knowledge base by quoting the most relevant sentence, with "
                         "citations (chunk ids and source files); says it does not know when nothing matches.",
                    args={"kb": _KB, "question": {"type": "str", "max_len": 4096},
                          "k": {"type": "int", "default": 3, "min": 1, "max": 20, "doc": "citations returned"},
                          "min_score": {"type": "float", "default": MIN_SCORE, "min": -1.0, "max": 1.0,
                                        "doc": "similarity under which the answer is 'I don't know'"},
                          "rephrase": {"type": "bool", "default": False,
                                       "doc": "let the model phrase the answer "
                                              "(kept only if it keeps the quote's numbers)"}},
                    stream=True),
        "search": Task(search, "The passages closest in meaning to a query, with scores.",
                       args={"kb": _KB, "query": {"type": "str", "max_len": 4096},
                             "k": {"type": "int", "default": 5, "min": 1, "max": 100}}),
        "list": Task(list_sources, "The documents in the knowledge base and their chunk counts.", args={"kb": _KB}),
        "drop": Task(drop, "Delete a knowledge base, or one source document from it.",
                     args={"kb": _KB, "source": {"type": "str|null", "nullable": True, "max_len": 512}}),
    }, description="A knowledge base over memory regions: ingest documents, ask questions, get cited answers.")
