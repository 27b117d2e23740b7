"""Noisy neighbours: does one tenant's heaviest legal work end, stall or starve another tenant's chat?

Two users on a CurveZMQ tcp kernel (loopback), added through the operator's console. The victim
streams chat answers the whole time, one after another. The attacker sends, one kind after
another and then all at once, the heaviest request each syscall and each built-in service task
accepts (sizes read from the syscall table and the tasks' own declarations; texts cut to what a
frame can carry, or to --text-cap). Each phase is measured against a quiet phase of the same run:

    python benchmarks/neighbours.py --quick      # tiny random models, ~3 minutes: checks the script
    python benchmarks/neighbours.py              # the default model (SmolLM2-135M) as the victim's

The table: for each attack, how it ended for the attacker, the victim's completed and failed
answers, its time to first token and between tokens (p50, p99) against the quiet phase, and the
driver and service-host restarts it caused. Goals (issue 25): the victim completes everything,
0 restarts, p99 between tokens at most 3x quiet.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from corpus import PARAGRAPHS
from llmos.specs import SYSCALLS
from llmos.userland import AsyncClient, Client, LLMOSError
from llmos.userland.testing import KernelProcess, make_tiny_bert, make_tiny_llama
from report import fmt, log, machine_line, print_table
from timings import Timing, percentile

QUESTION = [{"role": "user", "content": "Explain in a few sentences why the sky is blue."}]
FRAME_TEXT = 30 << 20          # a request's texts together: under the kernel's 32 MiB frame


def prose(chars: int) -> str:
    """English text of exactly `chars` characters (the corpus, repeated)."""
    base = " ".join(PARAGRAPHS)
    return (base * (chars // len(base) + 1))[:chars]


def table_max(call: str, arg: str, what: str = "max_len") -> int:
    return int(getattr(SYSCALLS[call].args[arg], what))


class Victim:
    """Streams chat answers back to back on a thread of its own; each phase reads what it saw."""

    def __init__(self, client: Client, max_tokens: int):
        self.client, self.max_tokens = client, max_tokens
        self.timings: list[Timing] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            t = Timing(len(self.timings), time.monotonic(), 0.0)
            try:
                stream = self.client.stream(messages=QUESTION, max_tokens=self.max_tokens, temperature=0.0, seed=1)
                for _ in stream:
                    now = time.monotonic()
                    t.first = t.first or now
                    t.pieces.append(now)
                t.completion_tokens = stream.result["usage"]["completion_tokens"]
            except LLMOSError as exc:
                t.error = exc.errno
            t.end = time.monotonic()
            self.timings.append(t)

    def take(self) -> list[Timing]:
        """The answers finished since the last take."""
        done, self.timings = self.timings, []
        return done


def phase_row(name: str, outcome: str, timings: list[Timing], quiet: dict | None, restarts: int) -> tuple[list, dict]:
    ttfts = [t.ttft for t in timings if t.error is None and t.ttft is not None]
    itls = [b - a for t in timings if t.error is None for a, b in zip(t.pieces, t.pieces[1:])]
    figures = {"ttft50": percentile(ttfts, 50), "ttft99": percentile(ttfts, 99),
               "itl50": percentile(itls, 50), "itl99": percentile(itls, 99)}
    ratio = figures["itl99"] / quiet["itl99"] if quiet and figures["itl99"] and quiet["itl99"] else None
    failed = [t.error for t in timings if t.error]
    row = [name, outcome, len(timings) - len(failed), ",".join(sorted(set(failed))) or "0",
           fmt(figures["ttft50"], "ms"), fmt(figures["ttft99"], "ms"), fmt(figures["itl50"], "ms"),
           fmt(figures["itl99"], "ms"), "-" if ratio is None else f"{ratio:.2f}x", restarts]
    return row, figures


# -- the attacker's heaviest legal calls -----------------------------------------------------------------

def attacks(cap: int, deadline: float, socket: str, key: str) -> list[tuple[str, callable]]:
    """(name, fn(client) -> None): each the heaviest of its kind the table allows, cut to `cap` characters of text."""
    def text(n: int) -> str:
        return prose(min(n, cap))

    embed_items = table_max("embed", "input", "max_items")
    score_items = table_max("score", "texts", "max_items")
    score_chars = min(table_max("score", "texts"), cap)
    kb_docs = [{"name": f"doc{i}.md", "text": text(4000)} for i in range(min(200, cap // 4000 + 1))]

    def svc(service: str, task: str, **args):
        return lambda c: c.svc_call(service, task, args, deadline=deadline)

    return [
        ("infer: longest prompt, most tokens", lambda c: largest_accepted(table_max("infer", "prompt"), lambda n: c.infer(
            prompt=text(n), max_tokens=table_max("infer", "max_tokens", "max"),
            top_k=table_max("infer", "top_k", "max"), temperature=5.0, deadline=deadline))),
        ("infer: 64 at once (the process's cap)", lambda c: at_once(
            socket, key, 64, lambda a: a.infer(messages=QUESTION, max_tokens=256, deadline=deadline))),
        ("embed: every item, frame-full", lambda c: c.embed(
            [text(min(table_max("embed", "input"), FRAME_TEXT // embed_items))] * embed_items)),
        ("score: every text, the most characters", lambda c: largest_accepted(
            score_chars // score_items, lambda n: c.score([text(n)] * score_items))),
        ("memwrite embed + memsearch k=100", lambda c: (
            c.memwrite("big", "k", text(table_max("memsearch", "query")), embed=True),
            c.memsearch("big", text(table_max("memsearch", "query")), k=table_max("memsearch", "k", "max")))),
        ("svc summarize: longest text", svc("summarize", "text", text=text(16 << 20), style="bullets")),
        ("svc classify: 64 labels, long text", svc("classify", "labels", text=text(1 << 20),
                                                   labels=[f"label number {i}" for i in range(64)])),
        ("svc sentiment: longest text", svc("classify", "sentiment", text=text(1 << 20))),
        ("svc redact: longest text", svc("redact", "text", text=text(4 << 20))),
        ("svc moderate: longest text", svc("moderate", "text", text=text(1 << 20))),
        ("svc translate detect: longest text", svc("translate", "detect", text=text(1 << 20))),
        ("svc kb ingest_texts + ask", lambda c: (
            c.svc_call("kb", "ingest_texts", {"kb": "heavy", "docs": kb_docs}, deadline=deadline),
            c.svc_call("kb", "ask", {"kb": "heavy", "question": text(4096), "k": 20}, deadline=deadline))),
        ("svc 64 calls at once", lambda c: at_once(
            socket, key, 64, lambda a: a.svc_call("classify", "sentiment", {"text": text(2000)}, deadline=deadline))),
    ]


def largest_accepted(chars: int, call) -> None:
    """call(n) with the most characters the model takes: the table's bound is the kernel's, but a text
    longer than the model's context is EINVAL at once, so halve until it is taken (the heavy one runs)."""
    while True:
        try:
            return call(chars)
        except LLMOSError as exc:
            if exc.errno != "EINVAL" or chars < 64:
                raise
            chars //= 2


def at_once(socket: str, key: str, n: int, call) -> None:
    """n calls in flight together on one connection of the attacker's."""
    async def run():
        async with AsyncClient(socket, name="heavy-burst", key=key, timeout=None) as a:
            results = await asyncio.gather(*(call(a) for _ in range(n)), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
    asyncio.run(run())


def all_together(kernel: KernelProcess, key: str, plan: list) -> None:
    """Every attack of the plan at once, each on a connection of its own."""
    def one(fn):
        with Client(socket=kernel.socket, name="heavy-all", key=key, timeout=None) as c:
            return run_attack(fn, c)
    with concurrent.futures.ThreadPoolExecutor(len(plan)) as pool:
        outcomes = list(pool.map(one, [fn for _, fn in plan]))
    failed = sorted({o for o in outcomes if o != "ok"})
    if failed:
        raise LLMOSError(",".join(failed), "some attacks ended with an error")


def run_attack(fn, client: Client) -> str:
    try:
        fn(client)
        return "ok"
    except LLMOSError as exc:
        return exc.errno
    except Exception as exc:          # the attacker's own trouble (a socket, a thread) is reported, not hidden
        return type(exc).__name__


def restarts_of(op: Client) -> int:
    stats = op.stats()
    return sum(d.get("restarts", 0) for d in stats["devices"]) + stats["services"].get("restarts", 0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny random models and smaller texts: checks the script")
    p.add_argument("--model", default=None, help="the victim's model (default: smollm2-135m-instruct; tiny with --quick)")
    p.add_argument("--text-cap", type=int, default=None, help="characters of text per attack at most")
    p.add_argument("--quiet-s", type=float, default=20.0, help="seconds of the quiet phase")
    p.add_argument("--deadline", type=float, default=120.0, help="each attack call's deadline, seconds")
    args = p.parse_args()
    cap = args.text_cap or ((256 << 10) if args.quick else FRAME_TEXT)
    work = Path(tempfile.mkdtemp(prefix="llmos-neighbours-"))
    kernel = None
    try:
        model = args.model or (make_tiny_llama(work / "llama") if args.quick else "smollm2-135m-instruct")
        env = {"LLMOS_SERVICES_EMBED_MODEL": make_tiny_bert(work / "bert")} if args.quick else {}
        log(f"booting a tcp kernel on {model}")
        kernel = KernelProcess(work / "kernel", model=model, tcp=True, env=env).start(timeout=400)
        op = kernel.client("neighbours-console", caps=["admin", "ps", "svc", "devices"])
        keys = {name: op.user_add(name)["key_file"] for name in ("victim", "attacker")}
        victim = Victim(Client(socket=kernel.socket, name="chat", key=keys["victim"], timeout=None),
                        max_tokens=64 if args.quick else 128)
        attacker = Client(socket=kernel.socket, name="heavy", key=keys["attacker"], timeout=None)
        attacker.svc_list()           # the service host is up before the clock starts
        victim.thread.start()
        time.sleep(args.quiet_s)
        quiet_row, quiet = phase_row("quiet (no attack)", "-", victim.take(), None, 0)
        rows, total_restarts = [quiet_row], 0
        plan = attacks(cap, args.deadline, kernel.socket, keys["attacker"])
        for name, fn in plan + [("all of the above at once", lambda c: all_together(kernel, keys["attacker"], plan))]:
            log(f"attack: {name}")
            before, started = restarts_of(op), time.monotonic()
            outcome = run_attack(fn, attacker)
            while time.monotonic() - started < 5.0:     # the victim gets at least a few answers in each phase
                time.sleep(0.2)
            restarts = restarts_of(op) - before
            total_restarts += restarts
            rows.append(phase_row(name, outcome, victim.take(), quiet, restarts)[0])
        victim.stop.set()
        victim.thread.join(timeout=120)
        print_table("A victim's chat stream while another tenant sends its heaviest legal work",
                    ["phase", "attack ended", "victim done", "victim failed", "TTFT p50 ms", "TTFT p99 ms",
                     "ITL p50 ms", "ITL p99 ms", "ITL p99 vs quiet", "restarts"], rows,
                    [machine_line(), f"model {model}; texts cut to {cap} characters; attack deadline {args.deadline:g} s",
                     "goals: victim failed 0 everywhere, restarts 0, ITL p99 <= 3x quiet"])
        failed = any(r[3] != "0" for r in rows)
        return 1 if failed or total_restarts else 0
    finally:
        if kernel is not None:
            kernel.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
