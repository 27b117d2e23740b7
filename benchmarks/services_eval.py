"""How right are the built-in services on text they were tuned on, and on text they never saw?

    python benchmarks/services_eval.py                          # the working tree's services
    python benchmarks/services_eval.py --services-from HEAD~1   # the services of a git revision
    python benchmarks/services_eval.py --before benchmarks/results/services-eval-before.txt

Two labeled sets (see tests/data/heldout/README.md): TUNING, the shop the services were tuned on
(tests/data/), and HELD-OUT, a different shop in a different voice (tests/data/heldout/); plus
the issue's own examples. Every service runs through a real kernel (the default model and
MiniLM embeddings, booted with llmos.userland.testing.KernelProcess). The table gives, per
service and set, n, the share right and its 95% Wilson interval; `--before FILE` adds the
figures of an earlier run's table beside them.

`--services-from REV` measures another revision's services without touching the working tree:
its services/ folder is extracted from git into a temp dir and put first on the kernel's
PYTHONPATH (the editable install's finder comes after it), the rest of llmos from this tree.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TUNING = ROOT / "tests" / "data"
HELDOUT = TUNING / "heldout"
SERVICES = ("kb", "support", "sentiment", "redact")
APOLOGY = re.compile(r"\b(?:sorry|apologi[sz]e)", re.I)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _docs(folder: Path) -> list[dict]:
    return [{"name": p.name, "text": p.read_text()} for p in sorted(folder.iterdir()) if p.is_file()]


def tuning_set() -> dict:
    """tests/data as cases. Its support cases are derived: each kb question as a customer message
    (the fact in the reply, or a hand-off when the kb has none), each negative sentiment message
    as a complaint that must get an apology."""
    questions = [{"question": q["question"], "expect": re.escape(q["fact"]) if q["doc"] else None}
                 for q in _jsonl(TUNING / "kb_questions.jsonl")]
    sentiment = _jsonl(TUNING / "sentiment.jsonl")
    support = [{"message": q["question"], "kind": "answer" if q["expect"] else "offtopic", "expect": q["expect"]}
               for q in questions]
    support += [{"message": s["text"], "kind": "complaint", "expect": None} for s in sentiment
                if s["label"] == "negative"]
    return {"docs": _docs(TUNING / "kb"), "kb": questions, "support": support, "sentiment": sentiment,
            "redact": _jsonl(TUNING / "redact.jsonl")}


def heldout_set() -> dict:
    return {"docs": _docs(HELDOUT / "kb"), "kb": _jsonl(HELDOUT / "kb_questions.jsonl"),
            "support": _jsonl(HELDOUT / "support.jsonl"), "sentiment": _jsonl(HELDOUT / "sentiment.jsonl"),
            "redact": _jsonl(HELDOUT / "redact.jsonl")}


def issue_set() -> dict:
    """Issue 9 item 14's examples; the kb ones are asked of the tuning documents, as in the issue."""
    cases = _jsonl(HELDOUT / "issue_examples.jsonl")
    by = lambda name: [c for c in cases if c["service"] == name]
    return {"docs": _docs(TUNING / "kb"), "kb": by("kb"), "support": by("support"), "sentiment": by("sentiment"),
            "redact": []}


SETS = {"tuning": tuning_set, "held-out": heldout_set, "issue": issue_set}


# -- scoring: one (right, what happened) per case -----------------------------------------------------

def _has(pattern: str | None, text: str) -> bool:
    return pattern is None or re.search(pattern, " ".join(text.split())) is not None


def run_kb(c, kb: str, cases: list[dict]) -> list[tuple[bool, str]]:
    out = []
    for case in cases:
        r = c.svc_call("kb", "ask", {"kb": kb, "question": case["question"]})
        right = (r["found"] and _has(case["expect"], r["answer"])) if case["expect"] else not r["found"]
        out.append((right, f"{case['question']} -> {r['answer']}"))
    return out


def support_reply_is_right(case: dict, r: dict) -> bool:
    reply = r["reply"]
    if case["kind"] == "answer":
        return _has(case["expect"], reply) and not r["handoff"]
    if case["kind"] == "complaint":
        return (APOLOGY.search(reply) is not None and _has(case.get("expect"), reply)
                and (case.get("handoff") is None or r["handoff"] == case["handoff"]))
    return r["handoff"] and not r["citations"]          # offtopic


def run_support(c, kb: str, cases: list[dict], tag: str) -> list[tuple[bool, str]]:
    out = []
    for i, case in enumerate(cases):
        conversation = f"eval-{tag}-{i}"
        r = c.svc_call("support", "chat", {"conversation": conversation, "message": case["message"], "kb": kb})
        c.svc_call("support", "end", {"conversation": conversation})
        out.append((support_reply_is_right(case, r), f"[{case['kind']}] {case['message']} -> {r['reply']}"
                                                      f"{' [handoff]' if r['handoff'] else ''}"))
    return out


def run_sentiment(c, cases: list[dict]) -> list[tuple[bool, str]]:
    out = []
    for case in cases:
        r = c.svc_call("classify", "sentiment", {"text": case["text"]})
        out.append((r["label"] == case["label"], f"{case['text']} -> {r['label']} (want {case['label']})"))
    return out


def run_redact(c, cases: list[dict]) -> list[tuple[bool, str]]:
    """A case is right when the findings are exactly the labeled values, every occurrence, by type."""
    out = []
    for case in cases:
        text = case["text"]
        gold = {(kind, m.start(), m.end()) for kind, value in case["pii"]
                for m in re.finditer(rf"(?<!\w){re.escape(value)}(?!\w)", text)}
        found = c.svc_call("redact", "text", {"text": text})["findings"]
        predicted = {(f["type"], f["start"], f["end"]) for f in found}
        out.append((gold == predicted, f"{text!r} -> {sorted(predicted)} (want {sorted(gold)})"))
    return out


def evaluate(c, name: str, data: dict) -> dict[str, list[tuple[bool, str]]]:
    """Every service on one set: {service: [(right, detail), ...]}."""
    kb = f"eval-{name}"
    c.svc_call("kb", "ingest_texts", {"kb": kb, "docs": data["docs"]})
    try:
        return {"kb": run_kb(c, kb, data["kb"]), "support": run_support(c, kb, data["support"], name),
                "sentiment": run_sentiment(c, data["sentiment"]), "redact": run_redact(c, data["redact"])}
    finally:
        c.svc_call("kb", "drop", {"kb": kb})


# -- the table ---------------------------------------------------------------------------------------

def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion k/n (sound at small n and near 0 or 1)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def cell(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{k:>3}/{n:<3} {k / n:6.1%}  [{lo:5.1%}, {hi:5.1%}]"


_ROW = re.compile(r"^(\w+)\s+([\w-]+)\s+\d+\s+(\d+)/(\d+)\s")


def read_table(path: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """(service, set) -> (right, n) from a table this script printed."""
    rows = {}
    for line in path.read_text().splitlines():
        m = _ROW.match(line)
        if m:
            rows[(m.group(1), m.group(2))] = (int(m.group(3)), int(m.group(4)))
    return rows


def print_table(results: dict[str, dict[str, list]], before: dict | None) -> None:
    header = f"{'service':<10} {'set':<9} {'n':>3}  {'right':<7} {'accuracy':>7}  {'95% CI':<16}"
    print(header + ("  before (same columns)" if before else ""))
    print("-" * (len(header) + (40 if before else 0)))
    for service in SERVICES:
        for set_name, per_service in results.items():
            cases = per_service.get(service, [])
            if not cases:
                continue
            k, n = sum(right for right, _ in cases), len(cases)
            line = f"{service:<10} {set_name:<9} {n:>3}  {cell(k, n)}"
            if before and (service, set_name) in before:
                line += "  " + cell(*before[(service, set_name)])
            print(line)


def services_snapshot(rev: str, into: Path) -> str:
    """A PYTHONPATH entry whose llmos.services is `rev`'s and everything else this tree's."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "services"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    pkg = into / "pkg" / "llmos"
    pkg.mkdir(parents=True)
    for part in ("kernel", "drivers", "userland", "specs"):
        (pkg / part).symlink_to(ROOT / part)
    (pkg / "services").symlink_to(into / "services")
    return str(into / "pkg")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services-from", metavar="REV", help="measure this git revision's services/")
    p.add_argument("--before", type=Path, help="an earlier run's output: print its figures beside these")
    p.add_argument("--set", choices=list(SETS), action="append", help="only this set (repeatable)")
    p.add_argument("--misses", choices=list(SETS), action="append", default=[],
                   help="list the wrong cases of this set on stderr (repeatable)")
    args = p.parse_args()
    from llmos.specs.modelspec import DEFAULT_EMBED_MODEL
    from llmos.userland.testing import KernelProcess

    with tempfile.TemporaryDirectory(prefix="llmos-services-eval-") as tmp:
        env = {}
        if args.services_from:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [services_snapshot(args.services_from, Path(tmp)),
                                                              os.environ.get("PYTHONPATH")]))
        print("booting a kernel on the real models...", file=sys.stderr)
        kernel = KernelProcess(Path(tmp) / "kernel", model="smollm2-135m-instruct", env=env).start(timeout=400)
        started = time.monotonic()
        try:
            with kernel.client("services-eval", timeout=None) as c:
                results = {}
                for name in args.set or SETS:
                    results[name] = evaluate(c, name, SETS[name]())
                    print(f"{name}: done", file=sys.stderr)
                model = c.info.get("default_model")
        finally:
            kernel.stop()
    print(f"services: {'git ' + args.services_from if args.services_from else 'working tree'}; "
          f"model {model}; embeddings {DEFAULT_EMBED_MODEL}; {time.monotonic() - started:.0f} s\n")
    print_table(results, read_table(args.before) if args.before else None)
    if args.misses:
        for set_name in args.misses:
            for service, cases in results.get(set_name, {}).items():
                for right, detail in cases:
                    if not right:
                        print(f"MISS {service}/{set_name}: {detail}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
