"""Locks a kernel holds for its life: on its socket and on its state dir (flock, so no stale lock
outlives a killed kernel, and no race between two booting at once)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class Held(RuntimeError):
    """Someone else holds the lock; `holder` is what they wrote in it."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


def hold(path: Path, holder: str) -> int:
    """flock `path` until the returned fd is closed, writing `holder` in it; Held if it is taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        taken_by = os.read(fd, 512).decode(errors="replace").strip() or "another kernel"
        os.close(fd)
        raise Held(taken_by) from None
    os.ftruncate(fd, 0)
    os.write(fd, holder.encode())
    return fd


def release(fd: int) -> None:
    """Close, never unlink: unlinking would let two kernels lock two different files of one name."""
    os.close(fd)
