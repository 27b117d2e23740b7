"""Userland: the client library and the `llmos` command. Talks to the kernel only through syscalls."""

from .client import ERRORS, AsyncClient, Client, KernelUnavailable, LLMOSError, Stream

__all__ = ["AsyncClient", "Client", "ERRORS", "KernelUnavailable", "LLMOSError", "Stream"]
