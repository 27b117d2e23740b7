"""The llmos contracts, and the checkers that hold each side to them.

What lives here is what two layers agree on and neither may own, since the kernel, the drivers and
userland import only downwards and meet only here: the syscall table and its argument checks
(abi.py, syscalls.toml), the client frame (protocol.py), the kernel's private channels to its driver
and service-host processes (channel.py: a catalog of typed messages, the channel's specification),
what the kernel tells a driver about a model (modelspec.py), and the formats files carry between
processes and people (keys.py, auditlog.py, trainset.py, units.py). Run-time machinery (finding a
model's files, sockets, tables, state) lives in the layer that runs it: kernel/registry.py resolves
model names; specs/ only says what the answer looks like.
"""

from .abi import SYSCALLS, ArgError, Syscall
from .protocol import ABI_VERSION, ERRNOS, KERNEL_VERSION

__all__ = ["SYSCALLS", "ArgError", "Syscall", "ABI_VERSION", "ERRNOS", "KERNEL_VERSION"]
