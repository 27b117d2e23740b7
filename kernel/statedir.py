"""The state dir: private to the operator, and used by one kernel at a time.

It holds the memory store, the principals and their keys, the audit log and the debug log, so
it is 0700 and its files 0600. The kernel process runs under umask 077 (set at boot, before any
file exists), and at boot it repairs what someone loosened, with a warning for each. An flock
on STATE_DIR/kernel.lock keeps a second kernel, on any socket, from writing the same store.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from llmos.specs.keys import private_dir

from . import locks

LOCK_FILE = "kernel.lock"
PUBLIC_FILES = {"kernel.key"}       # the kernel's public key may be readable (the folder still is not)


class StateDirBusy(RuntimeError):
    """Another kernel uses this state dir."""


def prepare(state_dir: Path) -> list[str]:
    """Make the state dir private; returns what had to be repaired, one line each."""
    repaired = []
    private_dir(state_dir)
    for path in [state_dir, *state_dir.rglob("*")]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        want = 0o700 if path.is_dir() else (mode & 0o644 if path.name in PUBLIC_FILES else mode & 0o600)
        if path.name not in PUBLIC_FILES and mode & 0o077:
            os.chmod(path, want)
            repaired.append(f"{path} was {oct(mode)}, now {oct(want)}")
    return repaired


def take_lock(state_dir: Path, socket: str) -> int:
    """Hold the state dir for this kernel's life; StateDirBusy names the kernel that holds it."""
    try:
        return locks.hold(state_dir / LOCK_FILE, f"kernel pid {os.getpid()} on {socket}")
    except locks.Held as exc:
        raise StateDirBusy(f"the state dir {state_dir} is in use by {exc.holder}; stop that kernel, or boot this "
                           f"one with --state-dir on another folder") from None
