"""The audit log: what was done with authority, who did it, and what was refused, tamper-evident.

Apart from the debug log (kernel.log), append-only JSON lines in STATE_DIR/audit.log (0600):
connections refused by the transport, hello (principal, program, caps granted), denials (EPERM,
EDQUOT, with the syscall), admin acts (kill, svc_reload, loads by path, user changes) and files
read by services. Each line carries the hash of the line before it (specs/auditlog.py), so a
changed or deleted line shows. Lines are flushed before the act's reply; the file rotates at
MAX_BYTES and keeps ROTATIONS old files, the chain running on across them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from llmos.specs.auditlog import FILE_NAME, GENESIS, line_hash, make_line
from llmos.specs.keys import private_umask

MAX_BYTES = 16 << 20
ROTATIONS = 8


class AuditLog:
    def __init__(self, state_dir: Path, max_bytes: int = MAX_BYTES):
        self.path = state_dir / FILE_NAME
        self.max_bytes = max_bytes
        self.prev = GENESIS
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            if lines:
                self.prev = line_hash(lines[-1])
        with private_umask():
            self._file = open(self.path, "a", encoding="utf-8")

    def record(self, event: str, **fields) -> None:
        line = make_line(self.prev, {"ts": round(time.time(), 6), "event": event, **fields})
        self._file.write(line + "\n")
        self._file.flush()
        self.prev = line_hash(line)
        if self._file.tell() >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._file.close()
        for n in range(ROTATIONS - 1, 0, -1):
            older = self.path.with_name(f"{FILE_NAME}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{FILE_NAME}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{FILE_NAME}.1"))
        self.path.with_name(f"{FILE_NAME}.{ROTATIONS + 1}").unlink(missing_ok=True)
        with private_umask():
            self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        self._file.close()
