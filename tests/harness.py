"""pytest helpers for checking errors; the kernel harness itself is llmos.userland.testing."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import zmq

from llmos.userland import LLMOSError
from llmos.userland.testing import KernelProcess, wait_until

__all__ = ["KernelProcess", "dealer", "errno_of", "leave_before_the_answer", "raised", "served_requests",
           "wait_until"]

RECV_TIMEOUT_MS = 30_000      # a bare recv() on dealer() waits at most this


@contextmanager
def dealer(socket: str):
    """A bare DEALER on the kernel's socket, for tests that write frames by hand; closed after.
    A recv() that waits past RECV_TIMEOUT_MS raises zmq.Again: a kernel that never answers fails
    the test instead of hanging it."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
    sock.connect(socket)
    try:
        yield sock
    finally:
        sock.close(0)
        ctx.term()


def raised(fn, *args, **kwargs) -> LLMOSError:
    """The LLMOSError that fn(*args, **kwargs) must raise."""
    with pytest.raises(LLMOSError) as info:
        fn(*args, **kwargs)
    return info.value


def errno_of(fn, *args, **kwargs) -> str:
    """The errno of the LLMOSError that fn(*args, **kwargs) must raise."""
    return raised(fn, *args, **kwargs).errno


def services_kernel(workdir, embed_model: str, model: str | None = None, env: dict | None = None) -> KernelProcess:
    """A tcp kernel (CurveZMQ on loopback) whose service host is up, its services embedding with
    `embed_model`; the caller stops it."""
    k = KernelProcess(workdir, tcp=True, model=model,
                      env={"LLMOS_SERVICES_EMBED_MODEL": embed_model, **(env or {})}).start()
    try:
        with k.client("svc-waiter") as c:
            assert wait_until(lambda: c.svc_list()["host"]["state"] == "up", timeout=60), "the service host is not up"
    except BaseException:
        k.stop()
        raise
    return k


# --- the gateway: what the kernel holds for it --------------------------------------------------


def served_requests(operator) -> int:
    """Requests the kernel holds in flight for the gateway's process (`llmos-serve`)."""
    return sum(p["requests"] for p in operator.ps() if p["name"] == "llmos-serve")


def leave_before_the_answer(url: str, body: dict, operator) -> None:
    """POST body to url, and once the kernel holds the request (at most ~30 s), hang up before any
    answer: the gateway must cancel the kernel's request (it is gone within a second)."""
    import asyncio

    import httpx

    async def leave_early():
        async with httpx.AsyncClient(timeout=60) as http:
            asking = asyncio.ensure_future(http.post(url, json=body))
            for _ in range(1500):
                if served_requests(operator):
                    break
                await asyncio.sleep(0.02)
            assert served_requests(operator) == 1
            asking.cancel()
            await asyncio.gather(asking, return_exceptions=True)

    asyncio.run(leave_early())
    assert wait_until(lambda: served_requests(operator) == 0, timeout=1.0, interval=0.02)


def run_to_idle(engine, requests, max_steps: int = 10_000) -> dict[int, dict]:
    """Add the requests to an engine and step it until it has no work; per rid: text, ids, logprobs,
    finish, errno, message and tool_calls of what it wrote."""
    for request in requests:
        engine.add(request)
    out: dict[int, dict] = {}
    for _ in range(max_steps):
        if not engine.has_work():
            return out
        for e in engine.step():
            r = out.setdefault(e.rid, {"text": "", "ids": [], "logprobs": [], "finish": None})
            r["text"] += e.delta
            r["ids"] += e.token_ids
            r["logprobs"] += e.logprobs or []
            r.update(finish=e.finish, errno=e.errno, message=e.message, tool_calls=e.tool_calls)
    raise AssertionError("the engine did not finish")
