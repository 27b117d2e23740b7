"""The llmos ABI: the syscall table, the frame codec, the errno names. Kernel and userland both read it."""

from .abi import SYSCALLS, ArgError, Syscall
from .protocol import ABI_VERSION, ERRNOS, KERNEL_VERSION

__all__ = ["SYSCALLS", "ArgError", "Syscall", "ABI_VERSION", "ERRNOS", "KERNEL_VERSION"]
