"""A test plugin whose tasks fail in each way a plugin can: raise, hang, crash the host, stream."""

import asyncio
import os
import time
from pathlib import Path

from llmos.services import ServiceError, Task, hookimpl


async def boom(ctx, message: str = "the plugin broke"):
    raise RuntimeError(message)


async def refuse(ctx, why: str):
    raise ServiceError("EINVAL", why)


async def hang(ctx, marker: str | None = None):
    ctx.emit("waiting")                 # a streaming caller knows the task is running
    try:
        await asyncio.sleep(3600)
    finally:
        if marker:
            Path(marker).touch()        # the test sees that the host ended the task


def hang_sync(ctx):
    time.sleep(3600)


def crash(ctx):
    os._exit(3)


async def slow(ctx, seconds: float = 1.0):
    await asyncio.sleep(seconds)
    return {"slept": seconds}


async def count(ctx, n: int = 3):
    for i in range(n):
        ctx.emit(f"{i} ")
        await asyncio.sleep(0.01)
    return {"n": n}


def add(ctx, a: int, b: int = 0, mode: str = "plain"):
    return {"sum": a + b, "caller": ctx.caller["name"]}


async def remember(ctx, key: str, value: str):
    region = ctx.region("notes")
    await ctx.kernel.memwrite(region, key, value)
    return {"region": region, "value": (await ctx.kernel.memread(region, key))["value"]}


async def generate(ctx, tokens: int = 4):
    out = await ctx.kernel.infer(prompt="hello", max_tokens=tokens, temperature=0.0)
    return {"usage": out["usage"]}


@hookimpl
def register_services(register):
    register("misbehave", {
        "boom": Task(boom, "Raise an exception.", args={"message": {"type": "str", "default": "the plugin broke"}}),
        "refuse": Task(refuse, "Raise ServiceError(EINVAL).", args={"why": {"type": "str"}}),
        "hang": Task(hang, "Never return (async); touch the file `marker` when ended.",
                     args={"marker": {"type": "str|null", "nullable": True}}, stream=True),
        "hang_sync": Task(hang_sync, "Never return (blocking, on a thread)."),
        "crash": Task(crash, "Kill the service host with os._exit."),
        "slow": Task(slow, "Sleep, then answer.", args={"seconds": {"type": "float", "default": 1.0, "min": 0}}),
        "count": Task(count, "Stream n numbers.", args={"n": {"type": "int", "default": 3, "min": 0, "max": 100}},
                      stream=True),
        "add": Task(add, "Add two integers (a plain function).",
                    args={"a": {"type": "int"}, "b": {"type": "int", "default": 0},
                          "mode": {"type": "str", "default": "plain", "choices": ["plain", "fancy"]}}),
        "remember": Task(remember, "Write and read back a value in the caller's region.",
                         args={"key": {"type": "str"}, "value": {"type": "str"}}),
        "generate": Task(generate, "Generate a few tokens through the kernel.",
                         args={"tokens": {"type": "int", "default": 4, "min": 1, "max": 64}}),
    }, description="Tasks that fail on purpose, for the service host's tests.")
