"""pytest helpers for checking errors; the kernel harness itself is llmos.userland.testing."""

from __future__ import annotations

import pytest

from llmos.userland import LLMOSError
from llmos.userland.testing import KernelProcess, wait_until

__all__ = ["KernelProcess", "errno_of", "raised", "wait_until"]


def raised(fn, *args, **kwargs) -> LLMOSError:
    """The LLMOSError that fn(*args, **kwargs) must raise."""
    with pytest.raises(LLMOSError) as info:
        fn(*args, **kwargs)
    return info.value


def errno_of(fn, *args, **kwargs) -> str:
    """The errno of the LLMOSError that fn(*args, **kwargs) must raise."""
    return raised(fn, *args, **kwargs).errno
