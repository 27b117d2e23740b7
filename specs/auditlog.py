"""The audit log's format: JSON lines, each carrying the hash of the line before it.

The kernel appends (kernel/audit.py); `llmos audit --verify` and anyone else re-checks the
chain with `verify`. Changing, removing or reordering a line breaks the chain at that line;
rotation keeps it, since a new file's first line carries the hash of the old file's last.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

GENESIS = "0" * 64
FILE_NAME = "audit.log"


def line_hash(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


def make_line(prev: str, record: dict) -> str:
    """One audit line: the record with the previous line's hash, keys in a fixed order."""
    return json.dumps({**record, "prev": prev}, sort_keys=True, separators=(",", ":"), default=str)


def verify(paths: list[Path]) -> tuple[int, str | None]:
    """(lines checked, the first problem or None) over files oldest first."""
    prev, count = None, 0
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            try:
                record = json.loads(line)
            except ValueError:
                return count, f"{path.name}:{n}: not JSON"
            if prev is not None and record.get("prev") != prev:
                return count, f"{path.name}:{n}: the chain is broken here (a line before it was changed or removed)"
            prev = line_hash(line)
            count += 1
    return count, None


def files(state_dir: Path) -> list[Path]:
    """The log and its rotated predecessors, oldest first."""
    rotated = sorted(state_dir.glob(FILE_NAME + ".*"), key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0,
                     reverse=True)
    current = state_dir / FILE_NAME
    return [p for p in rotated if p.suffix[1:].isdigit()] + ([current] if current.exists() else [])
