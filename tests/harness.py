"""pytest helpers for checking errors; the kernel harness itself is llmos.userland.testing."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import zmq

from llmos.userland import LLMOSError
from llmos.userland.testing import KernelProcess, wait_until

__all__ = ["KernelProcess", "dealer", "errno_of", "raised", "wait_until"]


@contextmanager
def dealer(socket: str):
    """A bare DEALER on the kernel's socket, for tests that write frames by hand; closed after."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
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
