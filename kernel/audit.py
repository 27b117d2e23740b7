"""The audit log: what was done with authority, who did it, and what was refused, tamper-evident.

Apart from the debug log (kernel.log), append-only JSON lines in STATE_DIR/audit.log (0600):
connections refused by the transport, hello (principal, program, caps granted), denials (EPERM,
EDQUOT, with the syscall), admin acts (kill, svc_reload, loads by path, user changes) and files
read by services. The format is specs/auditlog.py: each line carries the hash of the one before,
every field and line is bounded there (so no call site can forget), and keyed checkpoints with the
head file (STATE_DIR/audit.head) pin the chain's ends. Denials are rate-limited (auditrate.py).
Lines are flushed before the act's reply; the file rotates at MAX_BYTES and keeps ROTATIONS old
files, the chain running on across them; each line may also go to syslog (auditsink.py).

At boot the log is resumed from its newest checkpoint, and the boot checkpoint says what did not
match the head file (an `anomaly`: lines cut or changed while no kernel ran), so such a cut stays
visible to `llmos audit --verify` after the kernel has written past it.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from llmos.specs.auditlog import (CHECKPOINT, FILE_NAME, GENESIS, HEAD_FILE, KEY_FILE, files, head_text,
                                  line_hash, make_line, parse_checkpoint, read_head, sign)
from llmos.specs.keys import private_dir, private_umask

from .auditrate import DenialLimiter
from .auditsink import DEFAULT_FACILITY, SyslogSink

MAX_BYTES = 16 << 20
ROTATIONS = 8
CHECKPOINT_EVERY = 256
DENIALS = frozenset({"denied", "auth_failed"})      # rate-limited; record(denial=True) marks others
KEY_BYTES = 32


def load_key(path: Path) -> tuple[bytes, bool]:
    """The kernel's audit HMAC key (made 0600 in a 0700 folder on first use), and whether it is new."""
    private_dir(path.parent)
    made = False
    if not path.exists():
        with private_umask():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
        made = True
    return path.read_bytes(), made


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline(1 << 16)


class AuditLog:
    def __init__(self, state_dir: Path, max_bytes: int = MAX_BYTES, syslog: str | None = None,
                 facility: str = DEFAULT_FACILITY, clock=time.monotonic):
        self.dir = state_dir
        self.path = state_dir / FILE_NAME
        self.max_bytes = max_bytes
        self.limiter = DenialLimiter(clock)
        self.sink = SyslogSink(syslog, facility) if syslog else None
        self.key, new_key = load_key(state_dir / KEY_FILE)
        self.prev = GENESIS
        self.count = 0            # lines written since the log was anchored
        self.file_start = 0       # the count at the current file's first line
        self.kept_from = 0        # the count at the first line of the oldest file kept
        self.since = 0            # lines since the last checkpoint
        found = self._resume(new_key)
        with private_umask():
            self._file = open(self.path, "a", encoding="utf-8")
        if self._file.tell() == 0:
            self.file_start, self.since = self.count, 0
        elif _last_byte(self.path) != b"\n":
            self._file.write("\n")      # a line torn by a crash stays its own (broken) line
        self._checkpoint("boot", **found)

    # -- writing ---------------------------------------------------------------------------------

    def record(self, event: str, *, denial: bool = False, **fields) -> None:
        """One line (a denial past its rate is counted instead, and summarised when its window ends)."""
        if event == CHECKPOINT:
            raise ValueError("checkpoints are the audit log's own lines")
        self.tick()
        if (denial or event in DENIALS) and not self.limiter.admit(event, fields):
            return
        self._write({"ts": round(time.time(), 6), "event": event, **fields})

    def tick(self) -> None:
        """Write the summaries of a window of denials that has ended (the kernel calls it now and then)."""
        for summary in self.limiter.summaries():
            self._write({"ts": round(time.time(), 6), "event": "denied_summary", **summary})

    def close(self) -> None:
        if self._file.closed:
            return
        for summary in self.limiter.summaries(force=True):
            self._write({"ts": round(time.time(), 6), "event": "denied_summary", **summary})
        self._checkpoint("shutdown")
        self._file.close()
        if self.sink:
            self.sink.close()

    def _write(self, record: dict) -> None:
        self._append(make_line(self.prev, record))
        if self._file.tell() >= self.max_bytes:
            self._rotate()
        elif self.since >= CHECKPOINT_EVERY:
            self._checkpoint("every")

    def _checkpoint(self, why: str, **found) -> None:
        record = {"ts": round(time.time(), 6), "event": CHECKPOINT, "why": why, "count": self.count,
                  "file_start": self.file_start, "kept_from": self.kept_from, **found}
        self._append(make_line(self.prev, {**record, "mac": sign(self.key, self.prev, record)}))
        self.since = 0

    def _append(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()
        self.prev = line_hash(line)
        self.count += 1
        self.since += 1
        tmp = self.dir / (HEAD_FILE + ".tmp")
        with private_umask():
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(head_text(self.key, self.count, self.prev))
        os.replace(tmp, self.dir / HEAD_FILE)
        if self.sink:
            self.sink.send(line)

    # -- rotation --------------------------------------------------------------------------------

    def _rotate(self) -> None:
        self._file.close()
        self._shift_files()
        with private_umask():
            self._file = open(self.path, "a", encoding="utf-8")
        self.file_start = self.count
        self._checkpoint("rotate")

    def _shift_files(self) -> None:
        """audit.log becomes audit.log.1, and so on; the oldest past ROTATIONS is deleted, and then the
        log is kept from the new oldest file's first line (only the kernel's own deletions move it)."""
        oldest = self.path.with_name(f"{FILE_NAME}.{ROTATIONS}")
        dropping = oldest.exists()
        oldest.unlink(missing_ok=True)
        self.path.with_name(f"{FILE_NAME}.{ROTATIONS + 1}").unlink(missing_ok=True)     # left by a larger ROTATIONS
        for n in range(ROTATIONS - 1, 0, -1):
            older = self.path.with_name(f"{FILE_NAME}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{FILE_NAME}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{FILE_NAME}.1"))
        if dropping and oldest.exists():
            opening = parse_checkpoint(_first_line(oldest))
            if opening:
                self.kept_from = max(self.kept_from, opening["file_start"])

    # -- boot ------------------------------------------------------------------------------------

    def _resume(self, new_key: bool) -> dict:
        """Carry on from the newest checkpoint; what the boot checkpoint should say about what it found."""
        newest, lines = None, []
        for path in reversed(files(self.dir)):
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            if lines:
                newest = path
                break
        try:
            head, said = read_head(self.dir / HEAD_FILE, self.key), ""
        except ValueError as exc:
            head, said = None, str(exc)
        if not lines:
            return {"anomaly": f"no log, though {HEAD_FILE} is there: the log was removed"} if head or said else {}
        self.prev = line_hash(lines[-1])
        at = next((i for i in range(len(lines) - 1, -1, -1) if parse_checkpoint(lines[i])), None)
        if new_key or at is None:      # a log from before the anchors, or one cut to no checkpoint
            if newest == self.path:
                self._shift_files()    # the anchored log opens a file of its own
            if not new_key:
                return {"adopted": True, "anomaly": "a newest file without any checkpoint: its start was cut"}
            if at is not None:
                return {"adopted": True, "anomaly": "no audit key, though the log has checkpoints: it was removed"}
            return {"adopted": True}
        last = parse_checkpoint(lines[at])
        self.count = last["count"] + len(lines) - at
        self.file_start, self.kept_from = last["file_start"], last["kept_from"]
        self.since = len(lines) - at - 1
        if head == {"count": self.count, "last": self.prev}:
            return {}
        if head and head["count"] == self.count - 1 and len(lines) > 1 and head["last"] == line_hash(lines[-2]):
            return {"unanchored": 1}
        if head is not None:
            said = f"it ends at line {head['count']} ({head['last'][:16]})"
        return {"anomaly": f"the log ends at line {self.count} ({self.prev[:16]}), but {HEAD_FILE}: "
                           f"{said or 'none (it was removed)'}; lines were cut or changed while no kernel ran"}
