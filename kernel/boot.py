"""`llmos boot`: take the socket's lock, start the kernel, run until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from . import registry
from llmos.specs.protocol import runtime_dir

from . import locks, logs, statedir
from .auth import AuthError
from .config import Settings
from .httpserve import MetricsUnavailable
from .kernel import Kernel
from .syscalls import HANDLERS
from .transport import ipc_path


class AlreadyRunning(RuntimeError):
    """Another kernel holds this socket."""


def lock_path(socket: str) -> Path:
    path = ipc_path(socket)
    if path is not None:
        return path.with_name(path.name + ".lock")
    safe = "".join(c if c.isalnum() else "_" for c in socket)
    return Path(runtime_dir()) / f"{safe}.lock"


def take_lock(socket: str) -> int:
    """Hold an flock for the kernel's life: a second boot on the same socket fails at once, with no race."""
    path = lock_path(socket)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        return locks.hold(path, f"kernel pid {os.getpid()}")
    except locks.Held as exc:
        raise AlreadyRunning(f"a kernel ({exc.holder}) is already serving {socket}; stop it first, "
                             f"or boot this one with --socket on another address") from None


release_lock = locks.release


async def run_kernel(settings: Settings) -> str | None:
    """Serve until told to stop; why boot failed, if it did."""
    kernel = Kernel(settings, HANDLERS)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, kernel.stopping.set)
    await kernel.start()
    try:
        await kernel.stopping.wait()
    finally:
        await kernel.shutdown(kernel.boot_failure or kernel.stop_reason)
    return kernel.boot_failure


def unknown_boot_models(settings: Settings) -> str | None:
    """Refuse a boot model the registry cannot find before anything starts (it lists the known names)."""
    for name in settings.models_to_load():
        try:
            registry.resolve(name, settings.models)
        except registry.ModelNotFound as exc:
            return str(exc)
    return None


def boot(settings: Settings) -> int:
    os.umask(0o077)      # every file the kernel (and its children) makes is its owner's alone
    repaired = statedir.prepare(settings.state_dir)
    logs.configure(settings.state_dir, settings.log_level)
    log = logs.get("llmos.boot")
    for line in repaired:
        log.warning("state_dir.repaired", what=line)
    unknown = unknown_boot_models(settings)
    if unknown:
        log.error("boot.refused", reason=unknown)
        return 1
    held: list[int] = []
    try:
        for socket in dict.fromkeys([settings.socket, settings.operator_socket]):
            held.append(take_lock(socket))
        held.append(statedir.take_lock(settings.state_dir, settings.socket))
    except (AlreadyRunning, statedir.StateDirBusy) as exc:
        for fd in held:
            release_lock(fd)
        log.error("boot.refused", reason=str(exc))
        return 1
    try:
        failure = asyncio.run(run_kernel(settings))
    except (AuthError, MetricsUnavailable) as exc:
        log.error("boot.refused", reason=str(exc))
        return 1
    finally:
        for fd in held:
            release_lock(fd)
    return 1 if failure else 0
