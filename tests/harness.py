"""pytest helpers for checking errors; the kernel harness itself is llmos.userland.testing."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import zmq

from llmos.userland import LLMOSError
from llmos.userland.testing import KernelProcess, wait_until

__all__ = ["KernelProcess", "dealer", "errno_of", "raised", "wait_until"]

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
