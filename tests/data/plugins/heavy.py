"""A test plugin whose tasks are heavy in each way a task can be: they compute on the event loop, block
it, compute on a worker thread, run past their cost limit, or make many syscalls for their caller."""

import time

from llmos.services import Task, hookimpl, nlp


async def spin(ctx, seconds: float = 30.0):
    """Pure-Python work between awaits, on the host's event loop (what ctx.cpu is for)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return {"n": n}


async def block(ctx, seconds: float = 30.0):
    """A blocking call from an async task."""
    time.sleep(seconds)
    return {}


def grind(ctx, seconds: float = 5.0):
    """Pure-Python work in a plain task (on a worker thread)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return {"n": n}


async def offload(ctx, seconds: float = 5.0):
    """An async task that hands its work to a worker thread."""
    return await ctx.cpu(grind, ctx, seconds)


async def embeds(ctx, n: int = 10):
    """n embed syscalls, one after another, made for the caller."""
    for i in range(n):
        await ctx.kernel.embed([f"text {i}"], model=nlp.EMBED_MODEL)
    return {"n": n}


async def nap(ctx, seconds: float = 10.0):
    import asyncio
    await asyncio.sleep(seconds)
    return {}


SECONDS = {"type": "float", "default": 5.0, "min": 0.0, "max": 120.0}


def _nap_task() -> Task:
    try:
        return Task(nap, "Sleep, past a cost limit of 1 s.", args={"seconds": SECONDS}, cost_limit_s=1.0)
    except TypeError:           # a host from before cost limits (the tests that show what they fix run on one)
        return Task(nap, "Sleep.", args={"seconds": SECONDS})


@hookimpl
def register_services(register):
    register("heavy", {
        "spin": Task(spin, "Compute on the event loop.", args={"seconds": SECONDS}),
        "block": Task(block, "time.sleep in an async task.", args={"seconds": SECONDS}),
        "grind": Task(grind, "Compute in a plain task.", args={"seconds": SECONDS}),
        "offload": Task(offload, "Compute through ctx.cpu.", args={"seconds": SECONDS}),
        "embeds": Task(embeds, "Embed n times for the caller.", args={"n": {"type": "int", "default": 10, "min": 0,
                                                                              "max": 10000}}),
        "nap": _nap_task(),
    }, description="Heavy tasks, for the tests of the host's loop, budgets and fairness.")
