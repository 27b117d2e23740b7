"""Measure the built-in services on the labeled sets in tests/data, against naive baselines.

    python examples/eval_services.py                 # boots a private kernel on the real models
    python examples/eval_services.py --socket URL    # or uses a running kernel
    python examples/eval_services.py --only redact   # one part; redact needs no kernel

Reports, as a table:
- sentiment accuracy on tests/data/sentiment.jsonl (60 support messages, 20 per class): the
  naive baseline (ask SmolLM2 for one word, greedy) against classify.sentiment (MiniLM
  prototypes, with and without the lexicon);
- retrieval hit@1 / hit@3 on tests/data/kb_questions.jsonl over the documents in tests/data/kb:
  whole documents embedded as one entry each (baseline) against the kb service's chunks;
- answer correctness (the expected fact string is in the answer): the model answering freely
  from the best chunk (baseline) against kb.ask's extracted quote, and kb.ask with rephrase;
- "I don't know" on the unanswerable questions;
- redact precision and recall on tests/data/redact.jsonl (79 support messages: 78 labeled spans,
  and lures such as order numbers, dates and bad checksums): a finding counts when its type and
  span are exactly the label's. It runs the service's code in this process: redact uses no
  model, so it needs no kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmos.services.builtin.kb import read_documents
from llmos.services.builtin.redact import TYPES, find_pii
from llmos.services.nlp import EMBED_MODEL
from llmos.userland import Client, KernelUnavailable

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
LABELS = ("positive", "negative", "neutral")
PARTS = ("sentiment", "kb", "redact")


def boot(tmp: str) -> tuple[subprocess.Popen, str]:
    socket = f"ipc://{tmp}/kernel.sock"
    proc = subprocess.Popen([sys.executable, "-m", "llmos.kernel", "--socket", socket, "--state-dir", f"{tmp}/state",
                             "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/kernel.log", "wb"))
    deadline = time.monotonic() + 300
    while True:
        try:
            with Client(socket=socket, name="eval-wait", timeout=10) as c:
                if any(m["state"] == "ready" for m in c.models()["loaded"]) and c.svc_list()["host"]["state"] == "up":
                    return proc, socket
        except KernelUnavailable:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"the kernel did not come up; see {tmp}/kernel.log")
        time.sleep(0.5)


def greedy_word(c: Client, text: str) -> str | None:
    prompt = ("What is the sentiment of this customer message? Answer with one word: positive, negative or neutral."
              f"\n\nMessage: {text}")
    out = c.infer(messages=[{"role": "user", "content": prompt}], max_tokens=5, temperature=0.0)["text"].lower()
    found = [(out.find(label), label) for label in LABELS if label in out]
    return min(found)[1] if found else None


def eval_sentiment(c: Client) -> list[tuple[str, str]]:
    data = [json.loads(line) for line in (DATA / "sentiment.jsonl").read_text().splitlines() if line.strip()]
    correct = {"greedy": 0, "prototypes": 0, "prototypes+lexicon": 0}
    unparsed = 0
    for d in data:
        word = greedy_word(c, d["text"])
        unparsed += word is None
        correct["greedy"] += word == d["label"]
        correct["prototypes"] += c.svc_call("classify", "sentiment", {"text": d["text"], "lexicon": False})["label"] == d["label"]
        with_lexicon = c.svc_call("classify", "sentiment", {"text": d["text"], "lexicon": True})
        correct["prototypes+lexicon"] += with_lexicon["label"] == d["label"]
    n = len(data)
    return [(f"sentiment accuracy, greedy one word from SmolLM2 (baseline; {unparsed} unparseable)",
             f"{correct['greedy'] / n:.1%} ({correct['greedy']}/{n})"),
            ("sentiment accuracy, MiniLM prototypes (classify.sentiment)",
             f"{correct['prototypes'] / n:.1%} ({correct['prototypes']}/{n})"),
            ("sentiment accuracy, MiniLM prototypes + lexicon (lexicon=true)",
             f"{correct['prototypes+lexicon'] / n:.1%} ({correct['prototypes+lexicon']}/{n})")]


def distinct(sources: list[str]) -> list[str]:
    return list(dict.fromkeys(sources))


def eval_kb(c: Client) -> list[tuple[str, str]]:
    questions = [json.loads(line) for line in (DATA / "kb_questions.jsonl").read_text().splitlines() if line.strip()]
    answerable = [q for q in questions if q["doc"]]
    unanswerable = [q for q in questions if not q["doc"]]
    docs = sorted(p for p in (DATA / "kb").iterdir() if p.is_file())
    for p in docs:                                       # baseline: one vector per whole document
        c.memwrite("eval-whole-docs", p.name, p.read_text(), embed=True)
    c.svc_call("kb", "ingest_texts", {"kb": "eval", "docs": read_documents(str(DATA / "kb"))})
    hits = {"doc1": 0, "doc3": 0, "chunk1": 0, "chunk3": 0, "chunkfact1": 0, "chunkfact3": 0}
    answers = {"free": 0, "quote": 0, "rephrase": 0}
    false_dont_know = 0
    for q in answerable:
        whole = [r["key"] for r in c.memsearch("eval-whole-docs", q["question"], k=3)["results"]]
        hits["doc1"] += whole[0] == q["doc"]
        hits["doc3"] += q["doc"] in whole[:3]
        passages = c.svc_call("kb", "search", {"kb": "eval", "query": q["question"], "k": 10})["passages"]
        ranked = distinct([p["source"] for p in passages])
        hits["chunk1"] += ranked[0] == q["doc"]
        hits["chunk3"] += q["doc"] in ranked[:3]
        hits["chunkfact1"] += q["fact"] in " ".join(passages[0]["text"].split())
        hits["chunkfact3"] += any(q["fact"] in " ".join(p["text"].split()) for p in passages[:3])
        prompt = (f"Answer the question using the passage.\n\nPassage: {passages[0]['text']}\n\n"
                  f"Question: {q['question']}")
        free = c.infer(messages=[{"role": "user", "content": prompt}], max_tokens=60, temperature=0.0)["text"]
        answers["free"] += q["fact"] in free
        quoted = c.svc_call("kb", "ask", {"kb": "eval", "question": q["question"]})
        answers["quote"] += quoted["found"] and q["fact"] in " ".join(quoted["answer"].split())
        false_dont_know += not quoted["found"]
        rephrased = c.svc_call("kb", "ask", {"kb": "eval", "question": q["question"], "rephrase": True})
        answers["rephrase"] += rephrased["found"] and q["fact"] in " ".join(rephrased["answer"].split())
    dont_know = sum(not c.svc_call("kb", "ask", {"kb": "eval", "question": q["question"]})["found"]
                    for q in unanswerable)
    c.svc_call("kb", "drop", {"kb": "eval"})
    c.memdel("eval-whole-docs")
    n = len(answerable)
    pct = lambda k, d: f"{d[k] / n:.1%} ({d[k]}/{n})"
    return [("retrieval hit@1, whole documents (baseline)", pct("doc1", hits)),
            ("retrieval hit@3, whole documents (baseline)", pct("doc3", hits)),
            ("retrieval hit@1, kb chunks (document of the best chunk)", pct("chunk1", hits)),
            ("retrieval hit@3, kb chunks (distinct documents)", pct("chunk3", hits)),
            ("chunk hit@1 (the fact is in the best chunk)", pct("chunkfact1", hits)),
            ("chunk hit@3 (the fact is in one of the best 3 chunks)", pct("chunkfact3", hits)),
            ("answer correct, SmolLM2 answering from the best chunk (baseline)", pct("free", answers)),
            ("answer correct, kb.ask (extracted quote)", pct("quote", answers)),
            ("answer correct, kb.ask rephrase=true (model, checked)", pct("rephrase", answers)),
            ("'I don't know' on unanswerable questions", f"{dont_know}/{len(unanswerable)}"),
            ("'I don't know' on answerable questions (false)", f"{false_dont_know}/{n}")]


def eval_redact() -> list[tuple[str, str]]:
    cases = [json.loads(line) for line in (DATA / "redact.jsonl").read_text().splitlines() if line.strip()]
    right, found, labeled = dict.fromkeys(TYPES, 0), dict.fromkeys(TYPES, 0), dict.fromkeys(TYPES, 0)
    for case in cases:
        text = case["text"]
        gold = {(kind, m.start(), m.end()) for kind, value in case["pii"]        # every whole occurrence
                for m in re.finditer(rf"(?<!\w){re.escape(value)}(?!\w)", text)}
        predicted = {(f.type, f.start, f.end) for f in find_pii(text)}
        for kind, _, _ in gold:
            labeled[kind] += 1
        for kind, _, _ in predicted:
            found[kind] += 1
        for kind, _, _ in gold & predicted:
            right[kind] += 1

    def row(name: str, r: int, f: int, g: int) -> tuple[str, str]:
        return (f"redact {name}: precision, recall",
                f"{r / f if f else 1:.1%} ({r}/{f}), {r / g if g else 1:.1%} ({r}/{g})")

    rows = [row("all types", sum(right.values()), sum(found.values()), sum(labeled.values()))]
    return rows + [row(kind, right[kind], found[kind], labeled[kind]) for kind in TYPES]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", help="use this running kernel instead of booting one")
    p.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable)")
    args = p.parse_args()
    parts = args.only or PARTS
    tmp = None
    kernel = None
    socket = args.socket
    if socket is None and {"sentiment", "kb"} & set(parts):
        tmp = tempfile.TemporaryDirectory(prefix="llmos-eval-")
        print("booting a kernel on the real models...", file=sys.stderr)
        kernel, socket = boot(tmp.name)
    try:
        started = time.monotonic()
        rows, model = [], None
        if socket is not None:
            with Client(socket=socket, name=f"eval-services-{os.getpid()}", timeout=None) as c:
                model = c.info.get("default_model")
                rows += eval_sentiment(c) if "sentiment" in parts else []
                rows += eval_kb(c) if "kb" in parts else []
        rows += eval_redact() if "redact" in parts else []
        elapsed = time.monotonic() - started
        width = max(len(r[0]) for r in rows)
        print(f"\n{'measure'.ljust(width)}  value")
        print(f"{'-' * width}  -----")
        for name, value in rows:
            print(f"{name.ljust(width)}  {value}")
        print(f"\n({elapsed:.0f}s; model {model}, embeddings {EMBED_MODEL})")
    finally:
        if kernel is not None:
            kernel.terminate()
            kernel.wait(60)
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
