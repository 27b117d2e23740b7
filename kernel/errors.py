"""Kernel errors. Raised anywhere inside the kernel; turned into errno replies only at the transport."""

from __future__ import annotations

from llmos.specs.protocol import ERRNOS


class SyscallError(Exception):
    """A failure the caller should see, as an errno name and a message that says how to fix it."""

    def __init__(self, errno: str, message: str, retry_after: float | None = None):
        assert errno in ERRNOS, errno
        super().__init__(message)
        self.errno = errno
        self.message = message
        self.retry_after = retry_after   # seconds, for a rate limit's EAGAIN

    def __repr__(self) -> str:
        return f"SyscallError({self.errno}, {self.message!r})"


class DoubleRelease(RuntimeError):
    """Something let go of what it did not hold (a model copy, a scheduler slot): the kernel's own
    bookkeeping is wrong. Raised where it happens, never absorbed by a count kept from going negative."""


def einval(message: str) -> SyscallError:
    return SyscallError("EINVAL", message)


def enoent(message: str) -> SyscallError:
    return SyscallError("ENOENT", message)


def enomem(message: str) -> SyscallError:
    return SyscallError("ENOMEM", message)


def ebusy(message: str) -> SyscallError:
    return SyscallError("EBUSY", message)


def eio(message: str) -> SyscallError:
    return SyscallError("EIO", message)


def ecanceled(message: str) -> SyscallError:
    return SyscallError("ECANCELED", message)


def eagain(message: str) -> SyscallError:
    return SyscallError("EAGAIN", message)


def eperm(message: str) -> SyscallError:
    return SyscallError("EPERM", message)


def edquot(message: str) -> SyscallError:
    return SyscallError("EDQUOT", message)
