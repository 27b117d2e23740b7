"""What does the OpenAI-compatible gateway (`llmos serve`) cost? Concurrent streams through it with the
official `openai` client, against the same requests through the native client, same kernel, same run.

Both methods send the same raw prompts at temperature 0, so they generate the same tokens: the
native way is `AsyncClient.stream` on one connection; the gateway way is `AsyncOpenAI`
`completions.create(stream=True)` over HTTP to a real `llmos serve` subprocess, which makes the
same syscall on its own connection. Rounds alternate (native, gateway, native, ...) after one
unmeasured warm-up of each, so drift on the machine hits both. TTFT is the time from sending a
request to its first piece of text, taken in this process; throughput is completion tokens over
the wall time of each round, summed over the rounds. The TTFT the gateway adds is measured apart,
on requests sent alone, one at a time (a burst's TTFT mostly measures its queueing). The goal the issue sets: the gateway's
throughput at least 0.9x native, and its TTFT p50 at most 5 ms over native.

Run: python benchmarks/gateway.py [--quick] [--model tiny|NAME] [--concurrency 16] [--rounds 3]
"""

from __future__ import annotations

import asyncio
import sys
import time

from kernel_clients import kernel
from options import exit_cleanly_on_sigterm, parser
from report import fmt, log, machine_line, print_table
from timings import Summary, Timing, error_notes, percentile, summarize

PROMPTS = ["The history of the printing press begins", "A recipe for bread needs flour, water,",
           "The three largest planets of the solar system are", "In the morning the harbour was",
           "Operating systems share one machine among", "The rules of chess say that a pawn",
           "Rain fell on the city for the third day, and", "A good benchmark measures one thing:"]


async def timed_streams(n: int, stream_into) -> list[Timing]:
    """n streams at once, each timed: stream_into(t, i) reads stream i, noting its pieces and tokens in t."""
    async def one(i: int) -> Timing:
        t = Timing(i, time.monotonic(), 0.0)
        try:
            await stream_into(t, i)
        except Exception as exc:
            t.error = f"{type(exc).__name__}: {exc}"
        t.end = time.monotonic()
        t.first = t.pieces[0] if t.pieces else t.end
        return t

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def native_round(client, model: str, n: int, max_tokens: int) -> list[Timing]:
    """n streams at once on one AsyncClient connection."""
    async def stream_into(t: Timing, i: int) -> None:
        stream = await client.stream(prompt=PROMPTS[i % len(PROMPTS)], model=model, max_tokens=max_tokens,
                                     temperature=0.0)
        async for delta in stream:
            if delta:
                t.pieces.append(time.monotonic())
        t.completion_tokens = stream.result["usage"]["completion_tokens"]

    return await timed_streams(n, stream_into)


async def gateway_round(client, model: str, n: int, max_tokens: int) -> list[Timing]:
    """n streams at once through the gateway, on one AsyncOpenAI client (its HTTP connections pooled)."""
    async def stream_into(t: Timing, i: int) -> None:
        stream = await client.completions.create(model=model, prompt=PROMPTS[i % len(PROMPTS)], max_tokens=max_tokens,
                                                 temperature=0.0, stream=True, stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                t.pieces.append(time.monotonic())
            if chunk.usage:
                t.completion_tokens = chunk.usage.completion_tokens

    return await timed_streams(n, stream_into)


async def alone(native_client, http_client, model: str, n: int) -> tuple[list[float], list[float]]:
    """TTFT of one request at a time (4 tokens), alternating methods: the latency the gateway adds, without
    the arrival pattern of a burst (16 at once over one socket vs 16 HTTP requests) in the figure."""
    native, through = [], []
    for i in range(n):
        native += [t.ttft for t in await native_round(native_client, model, 1, 4) if t.error is None]
        through += [t.ttft for t in await gateway_round(http_client, model, 1, 4) if t.error is None]
    return native, through


async def measure(socket: str, url: str, model: str, n: int, max_tokens: int, rounds: int, singles: int):
    """One warm-up round of each method, then `rounds` of each, alternating, then `singles` requests alone
    of each; clients made once."""
    import openai
    from llmos.userland import AsyncClient

    async with AsyncClient(socket=socket, name="bench-native") as native_client, \
            openai.AsyncOpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=600) as http_client:
        await native_round(native_client, model, n, max_tokens)
        await gateway_round(http_client, model, n, max_tokens)
        native, through = [], []
        for r in range(rounds):
            native.append(await native_round(native_client, model, n, max_tokens))
            through.append(await gateway_round(http_client, model, n, max_tokens))
            log(f"round {r + 1}/{rounds} done")
        single = await alone(native_client, http_client, model, singles)
    return native, through, single


def merged(method: str, rounds: list[list[Timing]]) -> tuple[Summary, list[Timing]]:
    parts = [summarize(method, r) for r in rounds]
    every = [t for r in rounds for t in r]
    return Summary(method, sum(p.requests for p in parts), sum(p.tokens for p in parts),
                   sum(p.wall_s for p in parts), [x for p in parts for x in p.ttft],
                   [x for p in parts for x in p.itl], sum(p.errors for p in parts)), every


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--concurrency", type=int, default=16, help="streams at once in each round (default 16)")
    p.add_argument("--rounds", type=int, default=None, help="measured rounds of each method (default 3, 1 with --quick)")
    p.add_argument("--singles", type=int, default=20, help="requests sent alone, one at a time, per method, for "
                                                           "the TTFT the gateway adds (default 20)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per request (default 64, 16 with --quick)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()
    from bench_models import model_source
    from llmos.userland.gateway.testing import GatewayProcess

    rounds = args.rounds or (1 if args.quick else 3)
    max_tokens = args.max_tokens or (16 if args.quick else 64)
    with model_source(args) as (model, device), kernel(model, device, args.kv_cache, args.dtype) as k, \
            GatewayProcess(k.cli_env()) as gw:
        log(f"gateway at {gw.url}; warming up")
        native, through, (native_alone, gateway_alone) = asyncio.run(
            measure(k.operator_socket, gw.url, model, args.concurrency, max_tokens, rounds, args.singles))
        model_name = args.model or ("tiny" if args.quick else model)
    base, base_all = merged("native AsyncClient", native)
    gate, gate_all = merged("openai client via llmos serve", through)
    ratio = gate.tok_s / base.tok_s if base.tok_s else None
    added = percentile(gateway_alone, 50) - percentile(native_alone, 50) if native_alone and gateway_alone else None
    rows = [[s.method, s.requests, s.tokens, fmt(s.wall_s, digits=2), fmt(s.tok_s),
             fmt(s.tok_s / base.tok_s if base.tok_s else None, digits=3) + "x",
             fmt(percentile(s.ttft, 50), "ms", 1), fmt(percentile(s.ttft, 95), "ms", 1),
             fmt(percentile(s.itl, 50), "ms", 1), s.errors] for s in (base, gate)]
    print(f"# {machine_line()}")
    print(f"# model {model_name} on {device} ({args.dtype}); {args.concurrency} "
          f"concurrent streams x {max_tokens} tokens, temperature 0, {rounds} measured round(s) of each, alternating")
    print_table("Streaming through the gateway vs the native client (same kernel, same run)",
                ["method", "requests", "out tokens", "wall s", "out tok/s", "vs native", "TTFT p50 ms",
                 "TTFT p95 ms", "ITL p50 ms", "errors"], rows,
                error_notes("native", base_all) + error_notes("gateway", gate_all) + [
                    "TTFT here includes the burst's queueing: 16 requests at once on one socket reach the "
                    "scheduler together, 16 HTTP requests one after another"])
    print_table("One request at a time (4 tokens): the TTFT the gateway adds",
                ["method", "requests", "TTFT p50 ms", "TTFT p95 ms"],
                [[name, len(v), fmt(percentile(v, 50), "ms", 1), fmt(percentile(v, 95), "ms", 1)]
                 for name, v in (("native AsyncClient", native_alone), ("openai client via llmos serve", gateway_alone))],
                [f"gateway throughput {fmt(ratio, digits=3)}x native (goal >= 0.9x); added TTFT p50 "
                 f"{fmt(added, 'ms', 1)} ms (goal <= 5 ms)"])
    return 0 if not (base.errors or gate.errors) else 1


if __name__ == "__main__":
    sys.exit(main())
