"""Syscall failures as exceptions: one class per errno name, all of them LLMOSError.

Errors stay errno replies on the wire; they become exceptions here, at the client's boundary,
so a program catches `ERRORS["ENOMEM"]` for one errno or `LLMOSError` for all.
"""

from __future__ import annotations

from llmos.specs.protocol import ERRNOS, KEY_REVOKED


class LLMOSError(Exception):
    """A syscall failed; `errno` is the kernel's errno name (EINVAL, ENOMEM, ...)."""

    errno = "EIO"

    def __init__(self, errno: str, message: str, retry_after: float | None = None):
        super().__init__(f"{errno}: {message}")
        self.errno = errno
        self.message = message
        self.retry_after = retry_after     # seconds to wait before retrying, with some EAGAINs


class KernelUnavailable(LLMOSError, ConnectionError):
    """No kernel answers on the socket, or the connection to it was lost."""

    def __init__(self, message: str):
        super().__init__("EIO", message)


class KeyRefused(KernelUnavailable):
    """The kernel refuses this connection's key (errno EPERM): the user's key was rotated or the user
    removed. Nothing on this connection will work again; connect anew with the current key file."""

    def __init__(self, message: str):
        LLMOSError.__init__(self, "EPERM", message)


# ERRORS["ENOMEM"] is the class raised for ENOMEM; catch LLMOSError for all.
ERRORS: dict[str, type[LLMOSError]] = {
    name: type(name, (LLMOSError,), {"errno": name, "__doc__": why}) for name, why in ERRNOS.items()
}


def raise_error(error: dict) -> None:
    """Raise the exception for an error reply's {errno, message}."""
    errno = error.get("errno", "EIO")
    if is_key_revoked(error):
        raise KeyRefused(error["message"])
    raise ERRORS.get(errno, LLMOSError)(errno, error.get("message", ""), error.get("retry_after"))


def is_key_revoked(error: object) -> bool:
    """Is this error reply the kernel's refusal of a connection whose key was revoked?"""
    return isinstance(error, dict) and error.get("errno") == "EPERM" and \
        str(error.get("message", "")).startswith(KEY_REVOKED)
