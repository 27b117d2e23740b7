"""What the benchmarks share: models, prompts, runners (through the kernel, in-process, transformers),
statistics and tables.

Every runner returns one `Timing` per request, measured the same way, so methods compare row by
row: TTFT from the moment the method was handed the request to its first text, inter-token
latency (ITL) as the gaps between successive pieces of text, throughput as completion tokens
(as each method counts them: EOS included, nothing past a request's own max_tokens) over wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))   # harness.KernelProcess, tiny.make_tiny_llama

from tqdm import tqdm  # noqa: E402

from corpus import PARAGRAPHS  # noqa: E402

DEFAULT_MODEL = "smollm2-135m-instruct"
SHAPES = {  # SmolLM2's dimensions, for random-weight models on a GPU
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536),
    "smollm2-1.7b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                         intermediate_size=8192),
}
VOCAB = 49152


# --- requests and prompts --------------------------------------------------------------------------


@dataclass
class BenchRequest:
    idx: int
    prompt: str              # sent as a plain prompt (no chat template), so its ids are tokenizer(prompt)
    prompt_ids: list[int]
    max_tokens: int


def make_requests(tokenizer, n: int, prompt_range: tuple[int, int], max_tokens_range: tuple[int, int],
                  seed: int, context_length: int | None = None) -> list[BenchRequest]:
    """n requests with prompt lengths (in tokens) and max_tokens drawn uniformly from the ranges."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(*prompt_range)
        text, ids = prompt_of_length(tokenizer, rng, length)
        max_tokens = rng.randint(*max_tokens_range)
        if context_length:
            max_tokens = max(1, min(max_tokens, context_length - len(ids)))
        out.append(BenchRequest(i, text, ids, max_tokens))
    return out


def prompt_of_length(tokenizer, rng: random.Random, n_tokens: int) -> tuple[str, list[int]]:
    """Text from the corpus, starting at a random paragraph, that encodes to (nearly) n_tokens tokens."""
    order = PARAGRAPHS[:]
    rng.shuffle(order)
    text, ids = "", []
    for para in itertools.cycle(order):
        text = f"{text} {para}" if text else para
        ids = tokenizer(text).input_ids
        if len(ids) > n_tokens + 8:
            break
    # Decoding a cut and encoding it again can merge tokens across the cut: step back until it fits.
    best = None
    for cut in range(n_tokens, max(0, n_tokens - 8), -1):
        piece = tokenizer.decode(ids[:cut], skip_special_tokens=True, clean_up_tokenization_spaces=False).rstrip()
        again = tokenizer(piece).input_ids
        if best is None or abs(len(again) - n_tokens) < abs(len(best[1]) - n_tokens):
            best = (piece, again)
        if len(again) == n_tokens:
            break
    return best


# --- timings and statistics ------------------------------------------------------------------------


@dataclass
class Timing:
    """One request as one method served it; times on one monotonic clock (seconds)."""

    idx: int
    submitted: float
    end: float
    first: float | None = None                        # first text, or the end if no text came
    pieces: list[float] = field(default_factory=list)  # arrival time of each piece of text
    completion_tokens: int = 0
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.submitted

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.pieces, self.pieces[1:])]


def percentile(values, p: float) -> float | None:
    """The p-th percentile (0-100) with linear interpolation; None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@dataclass
class Summary:
    method: str
    requests: int
    tokens: int
    wall_s: float
    ttft: list[float]
    itl: list[float]
    errors: int
    note: str = ""
    cpu_line: str = ""
    others: float | None = None   # cores used by other processes on the machine meanwhile (interference)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0


def summarize(method: str, timings: list[Timing], wall_s: float | None = None, note: str = "") -> Summary:
    ok = [t for t in timings if t.error is None]
    if wall_s is None:
        wall_s = max((t.end for t in timings), default=0) - min((t.submitted for t in timings), default=0)
    return Summary(method, len(timings), sum(t.completion_tokens for t in ok), wall_s,
                   [t.ttft for t in ok if t.ttft is not None],
                   [g for t in ok for g in t.gaps()], len(timings) - len(ok), note)


def error_notes(label: str, timings: list[Timing]) -> list[str]:
    """One line per distinct error: how many requests got it, and which (by index)."""
    by_error: dict[str, list[int]] = {}
    for t in timings:
        if t.error:
            by_error.setdefault(t.error, []).append(t.idx)
    return [f"{label}: {len(ids)} request(s) failed ({', '.join(map(str, sorted(ids)[:8]))}"
            f"{', ...' if len(ids) > 8 else ''}): {err[:300]}" for err, ids in by_error.items()]


def fmt(x, unit: str = "", digits: int = 1) -> str:
    if x is None:
        return "-"
    if unit == "ms":
        return f"{x * 1000:.{digits}f}"
    return f"{x:.{digits}f}"


def print_table(title: str, headers: list[str], rows: list[list[str]], notes: list[str] = ()) -> None:
    """A plain-text table with right-aligned columns (the first left-aligned), then its notes."""
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    print(f"\n{title}")
    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        print(line(r))
    for n in notes:
        print(f"  {n}")
    sys.stdout.flush()


def throughput_table(title: str, rows: list[Summary], reference: Summary, notes: list[str] = ()) -> None:
    headers = ["method", "requests", "out tokens", "wall s", "out tok/s", f"vs {reference.method}",
               "TTFT p50 ms", "TTFT p95 ms", "ITL p50 ms", "ITL p95 ms", "errors", "other load"]
    body = []
    for s in rows:
        ratio = s.tok_s / reference.tok_s if reference.tok_s else None
        body.append([s.method + (f" [{s.note}]" if s.note else ""), s.requests, s.tokens, fmt(s.wall_s),
                     fmt(s.tok_s), fmt(ratio, digits=2) + "x" if ratio is not None else "-",
                     fmt(percentile(s.ttft, 50), "ms", 0), fmt(percentile(s.ttft, 95), "ms", 0),
                     fmt(percentile(s.itl, 50), "ms", 1), fmt(percentile(s.itl, 95), "ms", 1), s.errors,
                     "-" if s.others is None else f"{s.others:.2f}" + (" !" if s.others > DISTURBED else "")])
    notes = list(notes) + [f"other load: cores used meanwhile by processes outside the benchmark (from /proc); "
                           f"'!' marks more than {DISTURBED} cores: that row was slowed by other work on the machine"]
    print_table(title, headers, body, notes)


def machine_line() -> str:
    import torch
    load = os.getloadavg()
    return (f"python {sys.version.split()[0]}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so kernels are stopped and temp dirs removed."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)


def log(msg: str) -> None:
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr)


# --- models ----------------------------------------------------------------------------------------


def parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's argument parser: its docstring's first paragraph as the description and the
    rest as the epilog, the options every benchmark shares (model, device, dtype, ...) and --quick."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help=f"registry name or path of a transformers folder / .gguf file; 'tiny' builds a 2-layer "
                        f"random model (tests/tiny.py) in a temp dir (default: {DEFAULT_MODEL}, or 'tiny' with --quick)")
    p.add_argument("--device", default=None, help="cpu or cuda:N (default: cpu, or cuda:0 with --gpu)")
    p.add_argument("--gpu", action="store_true",
                   help="run on cuda:0 with a random-weight model of --shape (built in a temp dir, loaded by path)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m", help="model shape for --gpu")
    p.add_argument("--kv-cache", default=None, help="KV-cache budget, e.g. 512MiB (default: the kernel's default "
                                                    "for the device); given to the kernel and the in-process engine")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="model dtype for the kernel and every in-process method alike (default auto: what the "
                        "driver picks, bf16 on CUDA and on CPUs with native bf16, else fp32)")
    p.add_argument("--seed", type=int, default=0, help="seed for the prompts and lengths")
    p.add_argument("--quick", action="store_true", help="a small run on the tiny model (unless --model is given)")
    return p


@contextlib.contextmanager
def model_source(args):
    """The model to benchmark as (name the kernel loads, device); temp folders are removed after.

    Also settles args.dtype ("auto" becomes what the driver would pick), so that the kernel and
    the in-process methods run the same dtype.
    """
    tmp = Path(tempfile.mkdtemp(prefix="llmos-bench-model-"))
    try:
        device = args.device or ("cuda:0" if args.gpu else "cpu")
        if getattr(args, "dtype", "auto") == "auto":
            from llmos.drivers.loader import auto_dtype
            args.dtype = auto_dtype(device)
        if args.gpu:
            name = make_shaped_llama(tmp / args.shape, args.shape)
        elif (args.model or ("tiny" if getattr(args, "quick", False) else DEFAULT_MODEL)) == "tiny":
            from tiny import make_tiny_llama
            name = make_tiny_llama(tmp / "tiny-llama")
        else:
            name = args.model or DEFAULT_MODEL
        yield name, device
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(name: str, device: str, dtype: str):
    """The model loaded the way the driver loads it (drivers/loader.py)."""
    from llmos.specs import registry
    from llmos.drivers.loader import load
    return load(registry.resolve(name), device, dtype)


def load_tokenizer(name: str):
    """Just the tokenizer of a model, read as drivers/loader.py reads it (faster than loading the weights)."""
    from transformers import AutoTokenizer

    from llmos.specs import registry
    spec = registry.resolve(name)
    files = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    return AutoTokenizer.from_pretrained(spec.path, local_files_only=True, **files)


def make_shaped_llama(path: Path, shape: str) -> str:
    """A random-weight LlamaForCausalLM with SmolLM2's dimensions and a 49152-token tokenizer, saved as a folder.

    The tokenizer has no merges: text encodes to one token per byte, and every id decodes to a short
    ASCII word, so random models stream visible text every step.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(specials + sorted(alphabet))}
    letters = "abcdefghijklmnopqrstuvwxyz"
    for n in itertools.count(2):
        for word in map("".join, itertools.product(letters, repeat=n)):
            for token in ("\u0120" + word, word):   # \u0120 is the byte-level space
                if len(vocab) < VOCAB:
                    vocab[token] = len(vocab)
        if len(vocab) >= VOCAB:
            break
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|endoftext|>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=8192, tie_word_embeddings=True,
                         rope_theta=100000.0, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         **SHAPES[shape])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# --- CPU accounting: who used the cores during a run ---------------------------------------------


def _own_cpu_seconds() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used since boot (summed over cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def child_pids(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class CpuMeter:
    """CPU seconds used during a run by the kernel, its drivers, this process and the whole machine."""

    def __init__(self, kernel_pid: int | None = None):
        self.kernel_pid = kernel_pid
        children = child_pids(kernel_pid) if kernel_pid else []
        self.driver_pids = [p for p in children if b"drivers.host" in _cmdline(p)]
        self.helper_pids = [p for p in children if p not in self.driver_pids]   # e.g. a services host

    def start(self) -> "CpuMeter":
        self._start = self._read()
        self._t = time.monotonic()
        return self

    def stop(self) -> None:
        end = self._read()
        self.wall = time.monotonic() - self._t
        self.used = {k: end[k] - self._start[k] for k in end}

    def _read(self) -> dict:
        out = {"machine": machine_busy_seconds(), "this process": _own_cpu_seconds()}
        if self.kernel_pid:
            out["kernel"] = proc_cpu_seconds(self.kernel_pid)
            out["driver"] = sum(proc_cpu_seconds(p) for p in self.driver_pids)
            out["kernel children"] = sum(proc_cpu_seconds(p) for p in self.helper_pids)
        return out

    def others(self, clients: float = 0.0) -> float:
        """Cores used meanwhile by processes that are not part of the measurement."""
        ours = sum(v for k, v in self.used.items() if k != "machine") + clients
        return max(0.0, self.used["machine"] - ours) / self.wall if self.wall > 0 else 0.0

    def line(self, clients: float | None = None) -> str:
        """Where the cores went, in cores (CPU seconds / wall seconds)."""
        used = dict(self.used)
        parts = []
        if "driver" in used:
            parts += [f"driver {used['driver'] / self.wall:.2f}", f"kernel {used['kernel'] / self.wall:.2f}"]
            if self.helper_pids:
                parts.append(f"kernel's other child processes {used['kernel children'] / self.wall:.2f}")
        if clients is not None:
            parts.append(f"client processes {clients / self.wall:.2f}")
            used["clients"] = clients
        parts.append(f"this process {used['this process'] / self.wall:.2f}")
        ours = sum(v for k, v in used.items() if k != "machine")
        parts.append(f"everything else on the machine {max(0.0, used['machine'] - ours) / self.wall:.2f}")
        return f"cores used over {self.wall:.1f}s ({os.cpu_count()} on the machine): " + ", ".join(parts)


DISTURBED = 0.25   # cores used by other processes during a run above which its numbers are suspect


def metered(fn, *args, **kwargs) -> Summary:
    """Run a baseline that returns a Summary, recording how much other processes used the machine meanwhile."""
    meter = CpuMeter().start()
    summary = fn(*args, **kwargs)
    meter.stop()
    summary.others = meter.others()
    return summary


# --- through the kernel ----------------------------------------------------------------------------


@contextlib.contextmanager
def kernel(model: str, device: str, kv_cache: str | None = None, dtype: str | None = None, timeout: float = 300.0):
    """A real kernel (tests/harness.py's KernelProcess) in a temp dir, with the model loaded; stopped after."""
    from harness import KernelProcess

    workdir = Path(tempfile.mkdtemp(prefix="llmos-bench-kernel-"))
    extra = (["--device", device] + (["--kv-cache", kv_cache] if kv_cache else [])
             + (["--dtype", dtype] if dtype else []))
    k = KernelProcess(workdir, model=model, extra=extra)
    try:
        started = time.monotonic()
        log(f"booting kernel on {device} with {model}")
        try:
            k.start(wait_model=False, timeout=timeout)
            _wait_model(k, model, device, time.monotonic() + timeout)
        except BaseException:
            log(f"the kernel did not become ready; the end of its log:\n{_tail(k.log)}")
            raise
        log(f"kernel ready in {time.monotonic() - started:.1f}s")
        yield k
    finally:
        k.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_model(k, model: str, device: str, deadline: float) -> None:
    """Wait for the model the kernel preloads; ask for it with load_model if the preload gave up.

    (load_model waits for a load in progress, and starts one if there is none.)
    """
    from llmos.userland import LLMOSError
    with k.client("bench-loader", deadline=deadline) as c:
        while True:
            loaded = {m["name"]: m for m in c.models()["loaded"]}
            if loaded.get(model, {}).get("state") == "ready":
                return
            if model not in loaded:
                try:
                    c.load_model(model, device)
                except LLMOSError as exc:
                    if time.monotonic() > deadline:
                        raise
                    log(f"load_model: {exc}; retrying")
            if time.monotonic() > deadline:
                raise TimeoutError(f"model {model} not ready on {device}")
            time.sleep(0.2)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Job:
    """A request for a client process: what to send and when (seconds after the start signal)."""

    idx: int
    prompt: str
    max_tokens: int
    at: float = 0.0
    timeout: float | None = None   # give up (and cancel) if the request has not ended this long after it was sent


def client_process(socket: str, name: str, model: str, jobs: list[Job], ready, go, results) -> None:
    """A client program (spawned): one connection, its jobs streamed concurrently, one Timing each."""
    asyncio.run(_client_main(socket, name, model, jobs, ready, go, results))


async def _client_main(socket, name, model, jobs, ready, go, results) -> None:
    from llmos.userland import AsyncClient

    async with AsyncClient(socket=socket, name=name) as client:
        ready.put(name)
        await asyncio.to_thread(go.wait)
        start, cpu_at_start = time.monotonic(), _own_cpu_seconds()
        await asyncio.gather(*(_stream_one(client, model, job, start, results) for job in jobs))
    results.put(("done", _own_cpu_seconds() - cpu_at_start))   # this process is done, and its CPU


async def _stream_one(client, model: str, job: Job, start: float, results) -> None:
    delay = start + job.at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    t = Timing(job.idx, time.monotonic(), 0.0)
    stream = None
    try:
        stream = await client.stream(prompt=job.prompt, model=model, max_tokens=job.max_tokens, temperature=0.0,
                                     stop=None)
        await asyncio.wait_for(_consume(stream, t), job.timeout)
        t.end = time.monotonic()
        t.first = t.first or t.end
        t.completion_tokens = stream.result["usage"]["completion_tokens"]
    except asyncio.TimeoutError:
        t.end = time.monotonic()
        t.error = f"no answer within {job.timeout:g}s ({len(t.pieces)} pieces of text had come)"
        with contextlib.suppress(Exception):
            await stream.cancel()
    except Exception as exc:   # reported in the table's errors column
        t.end = time.monotonic()
        t.error = f"{exc.__class__.__name__}: {exc}"
    results.put(t)


async def _consume(stream, t: Timing) -> None:
    async for delta in stream:
        now = time.monotonic()
        if delta:
            t.pieces.append(now)
            if t.first is None:
                t.first = now


def run_clients(socket: str, model: str, groups: list[list[Job]], desc: str, names: list[str] | None = None,
                on_start=None, on_done=None) -> tuple[list[list[Timing]], float]:
    """Spawn one process per group of jobs, start them together; their Timings per group and the start time.

    Processes connect (and say hello) before the start signal, so connecting is not measured.
    """
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    owner = {job.idx: g for g, jobs in enumerate(groups) for job in jobs}
    procs = [ctx.Process(target=client_process, daemon=True,
                         args=(socket, (names[g] if names else f"bench-{g}"), model, jobs, ready, go, results))
             for g, jobs in enumerate(groups)]
    out: list[list[Timing]] = [[] for _ in groups]
    try:
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=120)
        start = time.monotonic()
        go.set()
        if on_start:
            on_start()
        done, client_cpu = 0, 0.0
        with tqdm(total=sum(map(len, groups)), desc=desc, unit="req", file=sys.stderr, leave=False) as bar:
            while done < len(procs):
                item = results.get(timeout=1800)
                if isinstance(item, tuple):   # ("done", CPU seconds the client used)
                    done += 1
                    client_cpu += item[1]
                    continue
                out[owner[item.idx]].append(item)
                bar.update(1)
        if on_done:
            on_done()
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    run_clients.last_client_cpu = client_cpu
    return out, start


def split_jobs(requests: list[BenchRequest], n_groups: int) -> list[list[Job]]:
    """Requests dealt round-robin to n_groups clients, all to be sent at once."""
    groups: list[list[Job]] = [[] for _ in range(min(n_groups, len(requests)))]
    for r in requests:
        groups[r.idx % len(groups)].append(Job(r.idx, r.prompt, r.max_tokens))
    return groups


def run_through_kernel(k, model: str, requests: list[BenchRequest], n_clients: int) -> Summary:
    """The requests from n_clients client processes; the Summary's cpu_line says where the cores went."""
    meter = CpuMeter(k.proc.pid)
    groups, _ = run_clients(k.socket, model, split_jobs(requests, n_clients), "kernel", on_start=meter.start,
                            on_done=meter.stop)
    timings = [t for g in groups for t in g]
    for line in error_notes("llmos kernel", timings):
        log(line)
    summary = summarize("llmos kernel", timings, note=f"{len(groups)} client processes")
    summary.cpu_line = "through the kernel: " + meter.line(run_clients.last_client_cpu)
    summary.others = meter.others(run_clients.last_client_cpu)
    return summary


# --- in-process: the same Engine, no kernel, no sockets ---------------------------------------------


def default_kv_bytes(device: str, kv_cache: str | None) -> int:
    """The budget the kernel would give the driver's engine (kernel.DEFAULT_KV_BYTES unless --kv-cache)."""
    from llmos.kernel.config import parse_bytes
    from llmos.kernel.kernel import DEFAULT_KV_BYTES
    if kv_cache:
        return parse_bytes(kv_cache, "--kv-cache")
    return DEFAULT_KV_BYTES["cpu" if device == "cpu" else "cuda"]


@dataclass
class EngineProfile:
    steps: int = 0
    forward_s: float = 0.0
    step_s: float = 0.0
    preemptions: int = 0
    max_running: int = 0


def run_engine(lm, requests: list[BenchRequest], kv_bytes: int) -> tuple[Summary, EngineProfile]:
    """The driver's Engine, built as drivers/host.py builds it, stepped in this process on all requests at once."""
    from llmos.drivers.engine import Engine, GenRequest
    from llmos.drivers.host import ENGINE_SIZES

    engine = Engine(lm, kv_budget_bytes=kv_bytes, **ENGINE_SIZES[lm.device.type])
    prof = EngineProfile()
    forward_slices = engine.runner.forward_slices

    def timed_forward(chunks):   # where the step's time goes: the model, or everything around it
        t = time.perf_counter()
        try:
            return (yield from forward_slices(chunks))
        finally:
            prof.forward_s += time.perf_counter() - t

    engine.runner.forward_slices = timed_forward
    timings = {r.idx: Timing(r.idx, 0.0, 0.0) for r in requests}
    total = sum(r.max_tokens for r in requests)
    start = time.monotonic()
    for r in requests:
        timings[r.idx].submitted = start
        engine.add(GenRequest(rid=r.idx, prompt_ids=list(r.prompt_ids), max_tokens=r.max_tokens, temperature=0.0,
                              top_p=1.0, top_k=0, stop=[], seed=None))
    meter = CpuMeter().start()
    with tqdm(total=total, desc="engine in-process", unit="tok", file=sys.stderr, leave=False) as bar:
        while engine.has_work():
            t = time.perf_counter()
            events = engine.step()
            prof.step_s += time.perf_counter() - t
            prof.steps += 1
            prof.max_running = max(prof.max_running, len(engine.running))
            now = time.monotonic()
            for ev in events:
                tm = timings[ev.rid]
                tm.completion_tokens += ev.tokens
                bar.update(ev.tokens)
                if ev.delta:
                    tm.pieces.append(now)
                    tm.first = tm.first or now
                if ev.finish:
                    tm.end = now
                    tm.first = tm.first or now
                    if ev.finish == "error":
                        tm.error = ev.delta
    meter.stop()
    prof.preemptions = engine.num_preemptions
    summary = summarize("engine in-process", list(timings.values()), note="same Engine, no kernel")
    summary.cpu_line = "in-process engine: " + meter.line()
    summary.others = meter.others()
    return summary, prof


# --- transformers baselines -----------------------------------------------------------------------


def _step_timer():
    """A generate() streamer that records when each new token (batch row or not) is produced."""
    from transformers.generation.streamers import BaseStreamer

    class StepTimes(BaseStreamer):
        def __init__(self):
            self.times: list[float] = []
            self._prompt_seen = False

        def put(self, value):
            if not self._prompt_seen:     # the first put is the prompt
                self._prompt_seen = True
                return
            self.times.append(time.monotonic())

        def end(self):
            pass

    return StepTimes()


def _greedy_kwargs(lm) -> dict:
    from transformers import GenerationConfig
    pad = lm.tokenizer.pad_token_id
    pad = pad if pad is not None else lm.eos_token_ids[0]
    return dict(generation_config=GenerationConfig(do_sample=False, eos_token_id=lm.eos_token_ids, pad_token_id=pad),
                pad_token_id=pad)


def _useful_tokens(row: list[int], max_tokens: int, eos: set[int]) -> int:
    """Tokens a request wanted from a generated row: up to and including EOS, at most max_tokens."""
    for i, tok in enumerate(row[:max_tokens]):
        if tok in eos:
            return i + 1
    return min(len(row), max_tokens)


def run_hf_sequential(lm, requests: list[BenchRequest]) -> Summary:
    """transformers generate(), one request at a time, greedy, each with its own max_new_tokens."""
    import torch
    kw = _greedy_kwargs(lm)
    eos = set(lm.eos_token_ids)
    timings = []
    start = time.monotonic()
    for r in tqdm(requests, desc="hf generate", unit="req", file=sys.stderr, leave=False):
        ids = torch.tensor([r.prompt_ids], device=lm.device)
        streamer = _step_timer()
        t = Timing(r.idx, time.monotonic(), 0.0)
        with torch.inference_mode():
            out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=r.max_tokens,
                                    streamer=streamer, **kw)
        t.end = time.monotonic()
        t.completion_tokens = _useful_tokens(out[0, ids.shape[1]:].tolist(), r.max_tokens, eos)
        t.pieces = streamer.times[:t.completion_tokens]
        t.first = t.pieces[0] if t.pieces else t.end
        timings.append(t)
    return summarize("hf generate, 1 at a time", timings, time.monotonic() - start)


def run_hf_static(lm, requests: list[BenchRequest], batch_size: int) -> Summary:
    """transformers generate() on fixed batches, left-padded, each batch run to its longest max_tokens."""
    import torch
    kw = _greedy_kwargs(lm)
    pad, eos = kw["pad_token_id"], set(lm.eos_token_ids)
    timings = []
    start = time.monotonic()
    batches = [requests[i:i + batch_size] for i in range(0, len(requests), batch_size)]
    for batch in tqdm(batches, desc="hf static batches", unit="batch", file=sys.stderr, leave=False):
        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in batch], device=lm.device)
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in batch],
                            device=lm.device)
        streamer = _step_timer()
        submitted = time.monotonic()
        with torch.inference_mode():
            out = lm.model.generate(ids, attention_mask=mask, max_new_tokens=max(r.max_tokens for r in batch),
                                    streamer=streamer, **kw)
        end = time.monotonic()
        for row, r in zip(out[:, width:].tolist(), batch):
            n = _useful_tokens(row, r.max_tokens, eos)
            pieces = streamer.times[:n]
            timings.append(Timing(r.idx, submitted, pieces[-1] if pieces else end, pieces[0] if pieces else end,
                                  pieces, n))
    return summarize(f"hf generate, static batches of {batch_size}", timings, time.monotonic() - start)


def run_hf_continuous(lm, requests: list[BenchRequest]) -> Summary:
    """transformers' continuous batching, set up exactly as generate_batch() sets it up, but with each
    request's own max_new_tokens (generate_batch takes one for all; its manager takes one per request).

    It runs a background thread and must not run under inference_mode.
    """
    from transformers import GenerationConfig

    kw = _greedy_kwargs(lm)
    gen = GenerationConfig(do_sample=False, eos_token_id=lm.eos_token_ids, pad_token_id=kw["pad_token_id"],
                           max_new_tokens=max(r.max_tokens for r in requests))
    hints = {}
    try:
        from transformers.generation.continuous_batching.utils import WorkloadHints
        hints["workload_hints"] = WorkloadHints(max_prompt_length=max(len(r.prompt_ids) for r in requests),
                                                max_generated_length=gen.max_new_tokens, num_requests=len(requests))
    except ImportError:   # older transformers size the cache without hints
        pass
    eos = set(lm.eos_token_ids)
    timings: dict[str, Timing] = {}
    by_id = {f"req-{r.idx}": r for r in requests}
    with lm.model.continuous_batching_context_manager(generation_config=gen, block=True, timeout=30, **hints) as manager:
        start = time.monotonic()
        for rid, r in by_id.items():   # timestamps below are perf_counter(); so is `submitted`
            timings[rid] = Timing(r.idx, time.perf_counter(), 0.0)
            manager.add_request(list(r.prompt_ids), request_id=rid, max_new_tokens=r.max_tokens,
                                record_timestamps=True)
        with tqdm(total=len(requests), desc="hf continuous batching", unit="req", file=sys.stderr, leave=False) as bar:
            while bar.n < len(requests):
                result = manager.get_result(timeout=1)
                if result is None:
                    if not manager.is_running():
                        raise RuntimeError("transformers' continuous batching thread stopped")
                    continue
                if not result.is_finished() or result.request_id not in timings:
                    continue
                t, r = timings[result.request_id], by_id[result.request_id]
                stamps = list(result.timestamps or [])
                t.completion_tokens = _useful_tokens(list(result.generated_tokens), r.max_tokens, eos)
                t.pieces = stamps[:t.completion_tokens]
                t.end = stamps[-1] if stamps else time.perf_counter()
                t.first = t.pieces[0] if t.pieces else t.end
                t.error = result.error
                bar.update(1)
        wall = time.monotonic() - start
    return summarize("hf continuous batching", list(timings.values()), wall)
