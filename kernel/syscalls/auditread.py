"""The audit syscall: the audit log's newest lines and its verification, for an admin on any connection.

`llmos audit` reads the files in the state dir, which works only on the kernel's machine as its
operator; a remote admin (the web console, a user with the admin capability) asks the kernel.
Reading the tail and verifying the chain touch files of up to MAX_BYTES each, so both run in a
thread, never on the kernel's loop; a verify reads every file, so only one runs at a time.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from llmos.specs import auditlog

from ..errors import ebusy, eio

if TYPE_CHECKING:
    from ..process import CallContext
    from ..kernel import Kernel

_verifying: set[int] = set()       # id() of the kernels with a verify running (one kernel per process, in practice)


def newest_lines(state_dir: Path, count: int) -> list[dict]:
    """The newest `count` records, oldest first, reading back through rotated files only as far as needed."""
    found: list[list[dict]] = []         # newest file first
    need = count
    for path in reversed(auditlog.files(state_dir)):
        if need <= 0:
            break
        records: deque[dict] = deque(maxlen=need)
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue            # a line being written, or damage: verify is what reports it
                if isinstance(record, dict):
                    records.append(record)
        found.append(list(records))
        need -= len(records)
    return [record for records in reversed(found) for record in records][-count:]


async def sys_audit(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    state_dir = Path(k.settings.state_dir)
    verdict = None
    if args["verify"]:
        if id(k) in _verifying:
            raise ebusy("audit: a verify is already running; ask again when it has answered")
        _verifying.add(id(k))
        try:
            k.audit.record("audit_verify", principal=ctx.proc.principal, pid=ctx.proc.pid)
            found = await asyncio.to_thread(auditlog.verify_dir, state_dir)
        except OSError as exc:
            raise eio(f"audit: the log could not be read: {exc}") from None
        finally:
            _verifying.discard(id(k))
        verdict = {"lines": found.lines, "problem": found.problem, "notes": list(found.notes)}
    try:
        lines = await asyncio.to_thread(newest_lines, state_dir, args["lines"]) if args["lines"] else []
    except OSError as exc:
        raise eio(f"audit: the log could not be read: {exc}") from None
    return {"lines": lines, "verdict": verdict}


HANDLERS = {"audit": sys_audit}
