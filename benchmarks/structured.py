"""Constrained decoding beside free generation: what a JSON schema costs the requests that use it,
and what it costs those that share their batch without one.

A real kernel on the default model; 16 clients (asyncio, each its own connection) send a chat
request at once, 64 new tokens at most, sampled. Three runs in one process, alternated --rounds
times so that the machine's drift falls on all alike: all 16 free; 8 with a JSON schema and 8
free; all 16 free again is the baseline of both halves. Each request's rate is its tokens after the
first over the time from its first token to its last (what a user watching the stream sees);
a half's figure is the median over its requests and rounds. Then the cost of a schema seen for the
first time (compiled by the driver) against the same schema again (cached): one 1-token request
each, beside one with no schema. Goals (issue 19): the constrained half >= 0.85x the all-free rate,
the free half >= 0.95x.

    python benchmarks/structured.py              # smollm2-135m-instruct on the CPU, ~3 min
    python benchmarks/structured.py --quick      # tiny random model, ~1 min
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import options
from bench_models import model_source
from kernel_clients import kernel
from report import fmt, log, machine_line, print_table

GOALS = {"constrained": 0.85, "free beside them": 0.95}
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "city", "age", "tags"],
          "properties": {"name": {"type": "string", "maxLength": 40}, "city": {"type": "string", "maxLength": 40},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4}}}
PEOPLE = ["Ada, 36, lives in London and likes maths and engines", "Linus, 54, from Helsinki, writes kernels",
          "Grace, 85, Arlington, compilers and the navy", "Ken, 81, of Berkeley, Unix and chess",
          "Barbara, 84, Boston, data abstraction", "Dennis, 70, Bronxville, C and Unix",
          "Margaret, 88, Paoli, flight software", "Edsger, 72, Nuenen, structured programming"]


def parser():
    p = options.parser(__doc__)
    p.add_argument("--clients", type=int, default=16, help="clients per run (default 16; half constrained)")
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens per request at most (default 64)")
    p.add_argument("--rounds", type=int, default=2, help="times each run is repeated, alternated (default 2)")
    return p


def messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Extract name, city, age and tags as JSON: {PEOPLE[i % len(PEOPLE)]}"}]


async def one(client, i: int, constrained: bool, max_tokens: int) -> tuple[bool, float | None, int]:
    """(constrained, tokens/s after the first token, tokens) of one streamed request."""
    args = {"constraint": {"json_schema": SCHEMA}} if constrained else {}
    stream = await client.stream(messages=messages(i), max_tokens=max_tokens, temperature=0.7, seed=i, **args)
    first = last = None
    async for delta in stream:
        now = time.perf_counter()
        first = first or now
        last = now
    tokens = stream.result["usage"]["completion_tokens"]
    rate = (tokens - 1) / (last - first) if first and last and last > first and tokens > 1 else None
    return constrained, rate, tokens


async def run_clients(clients, constrained: int, max_tokens: int) -> list[tuple[bool, float | None, int]]:
    return await asyncio.gather(*(one(c, i, i < constrained, max_tokens) for i, c in enumerate(clients)))


async def compile_costs(client) -> dict[str, float]:
    """Seconds to a 1-token answer: no schema, a schema never seen, the same schema again."""
    fresh = json.loads(json.dumps(SCHEMA))
    fresh["properties"]["nonce"] = {"enum": [f"n{time.time_ns()}"]}     # a schema the driver has not compiled

    async def timed(**args) -> float:
        started = time.perf_counter()
        await client.infer(messages=messages(0), max_tokens=1, temperature=0.0, **args)
        return time.perf_counter() - started
    plain = await timed()
    first = await timed(constraint={"json_schema": fresh})
    cached = await timed(constraint={"json_schema": fresh})
    return {"no schema": plain, "schema, first use": first, "schema, cached": cached}


async def measure(k, args) -> tuple[dict, dict]:
    from llmos.userland import AsyncClient

    clients = [await AsyncClient(socket=k.operator_socket, name=f"structured-{i}").connect()
               for i in range(args.clients)]
    try:
        await run_clients(clients, 0, 8)        # warm-up: the first constrained use imports xgrammar
        await run_clients(clients, args.clients // 2, 8)
        rates: dict[str, list[float]] = {"all free": [], "constrained": [], "free beside them": []}
        tokens = {name: 0 for name in rates}
        for r in range(args.rounds):
            log(f"round {r + 1}/{args.rounds}")
            for constrained in (0, args.clients // 2):
                for is_constrained, rate, n in await run_clients(clients, constrained, args.max_tokens):
                    name = "all free" if not constrained else ("constrained" if is_constrained else "free beside them")
                    tokens[name] += n
                    if rate is not None:
                        rates[name].append(rate)
        costs = await compile_costs(clients[0])
    finally:
        for c in clients:
            await c.close()
    return {name: (statistics.median(v) if v else float("nan"), tokens[name]) for name, v in rates.items()}, costs


def main() -> int:
    options.exit_cleanly_on_sigterm()
    args = parser().parse_args()
    with model_source(args) as (model, device), kernel(model, device, dtype=args.dtype) as k:
        rates, costs = asyncio.run(measure(k, args))
    base = rates["all free"][0]
    rows, ok = [], True
    for name, (rate, tokens) in rates.items():
        goal = GOALS.get(name)
        ratio = rate / base if base else float("nan")
        ok &= goal is None or ratio >= goal
        rows.append([name, fmt(rate, " tok/s"), tokens, f"{ratio:.2f}x", f">= {goal}x" if goal else "baseline"])
    print(machine_line())
    print_table(f"Streaming rate per request, {args.clients} clients, {model}",
                ["requests", "median tok/s", "tokens", "vs all free", "goal"], rows,
                ["each request's rate: tokens after its first / time from its first token to its last"])
    print_table("A schema's first use (compiled by the driver) and its cached use",
                ["request", "seconds to a 1-token answer"], [[n, fmt(s, " s", 3)] for n, s in costs.items()],
                [f"compile: {fmt(costs['schema, first use'] - costs['schema, cached'], ' s', 3)} once per schema "
                 "and model; the cache keeps 256"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
