"""The audit log's format: bounded JSON lines, each carrying the hash of the line before it, and
checkpoints, signed with a key only the kernel holds, that pin down where the chain begins and ends.

The kernel appends (kernel/audit.py); `llmos audit --verify` re-checks with `verify_dir`.

- The chain: every line has `prev`, the SHA-256 of the line before it (GENESIS for the first), so a
  changed, removed or reordered line breaks it; rotation keeps it, since a new file's first line
  carries the hash of the old file's last.
- Bounds: a field whose JSON is over FIELD_MAX bytes is kept as {"cut": its first bytes, "len",
  "sha256"} (of a string's UTF-8, of anything else's JSON), and a line still over LINE_MAX keeps
  only ts and event, the rest folded into one cut field `fields`. One client cannot fill the disk.
- Checkpoints (event "checkpoint"): `count`, the lines written before it since the log was first
  anchored; `file_start`, that count at its file's first line; `kept_from`, that count at the first
  line of the oldest file the kernel still keeps; and `mac`, an HMAC-SHA256 under STATE_DIR/
  keys/audit.key over the line without `mac` (so over `prev` too). Every file opens with one; the
  kernel writes one at boot, every CHECKPOINT_EVERY lines and at a clean shutdown.
- The head file (audit.head): the count and the hash of the last line written, with its HMAC,
  rewritten after every line. A cut or an edit at the end shows against it.

The chain alone cannot show lines cut from either end; the checkpoints show a cut at the start of
a file (their counts no longer match their places) and a file removed from the oldest end (the
kernel's `kept_from` says where the log should begin); the head file shows a cut or a changed line
at the end. What none of it can show: anything done by someone holding the key (root, or the
kernel's uid, can read it), and a log cut back to an older state together with an old copy of the
head file saved for the purpose. Lines forwarded to syslog are the copy that survives that.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import NamedTuple

GENESIS = "0" * 64
FILE_NAME = "audit.log"
HEAD_FILE = "audit.head"
KEY_FILE = "keys/audit.key"
CHECKPOINT = "checkpoint"
FIELD_MAX = 256        # bytes of one field's JSON kept whole
PREVIEW = 128          # bytes of JSON a cut field keeps of its start
LINE_MAX = 4096        # bytes of one whole line
_CHECKPOINT_MAC = b"llmos audit checkpoint\n"
_HEAD_MAC = b"llmos audit head\n"


def line_hash(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _preview(text: str) -> str:
    """The start of text whose JSON is at most PREVIEW bytes (escapes counted)."""
    kept, size = [], 0
    for ch in text[:PREVIEW]:
        size += len(_json(ch)) - 2
        if size > PREVIEW:
            break
        kept.append(ch)
    return "".join(kept)


def cut(value):
    """value, or (its JSON over FIELD_MAX bytes) its preview, full length and sha256."""
    if isinstance(value, str):
        if len(value) * 12 + 2 <= FIELD_MAX or len(_json(value)) <= FIELD_MAX:   # 12: an escaped astral char
            return value
        text = value
    else:
        text = _json(value)
        if len(text) <= FIELD_MAX:      # ASCII: JSON escapes the rest
            return value
    data = text.encode("utf-8", "surrogatepass")
    return {"cut": _preview(text), "len": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def make_line(prev: str, record: dict) -> str:
    """One audit line: the bounded record with the previous line's hash, keys in a fixed order."""
    bounded = {key: cut(value) for key, value in record.items()}
    line = _json({**bounded, "prev": prev})
    if len(line.encode()) > LINE_MAX:
        rest = {k: v for k, v in record.items() if k not in ("ts", "event")}
        kept = {k: cut(record[k]) for k in ("ts", "event") if k in record}
        line = _json({**kept, "fields": cut(rest), "prev": prev})
    return line


def sign(key: bytes, prev: str, record: dict) -> str:
    """A checkpoint's mac: over its line as it would be without `mac`."""
    return hmac.new(key, _CHECKPOINT_MAC + make_line(prev, record).encode(), hashlib.sha256).hexdigest()


def head_text(key: bytes, count: int, last: str) -> str:
    """The head file's content: the lines written since the anchor and the last one's hash, signed."""
    body = {"count": count, "last": last}
    mac = hmac.new(key, _HEAD_MAC + _json(body).encode(), hashlib.sha256).hexdigest()
    return _json({**body, "mac": mac}) + "\n"


def read_head(path: Path, key: bytes | None) -> dict | None:
    """The head file's {count, last}; None if there is none; ValueError if it is not the kernel's."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise ValueError(f"{path.name} is not JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get("count"), int) or not isinstance(record.get("last"), str):
        raise ValueError(f"{path.name} is not a head record")
    signed = json.loads(head_text(key, record["count"], record["last"]))["mac"] if key is not None else ""
    if key is not None and not hmac.compare_digest(str(record.get("mac")), signed):
        raise ValueError(f"{path.name}: its HMAC does not match the kernel's audit key (forged or changed)")
    return {"count": record["count"], "last": record["last"]}


def files(state_dir: Path) -> list[Path]:
    """The log and its rotated predecessors, oldest first."""
    rotated = [p for p in state_dir.glob(FILE_NAME + ".*") if p.suffix[1:].isdigit()]
    rotated.sort(key=lambda p: int(p.suffix[1:]), reverse=True)
    current = state_dir / FILE_NAME
    return rotated + ([current] if current.exists() else [])


def parse_checkpoint(line: str) -> dict | None:
    """The checkpoint a line holds, or None (cheap for the lines that are not)."""
    if '"event":"checkpoint"' not in line:
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("event") == CHECKPOINT else None


class Verdict(NamedTuple):
    lines: int                 # lines read before the first problem
    problem: str | None        # the first problem, or None
    notes: list[str]           # what is not a problem but the reader should know


def verify(paths: list[Path], key: bytes | None = None, head: dict | None = None) -> tuple[int, str | None]:
    """(lines checked, the first problem or None) over files oldest first."""
    verdict = _Walk(key).run(paths, head, head_missing=False)
    return verdict.lines, verdict.problem


def verify_dir(state_dir: Path, tries: int = 5) -> Verdict:
    """verify over a state dir with its key and head file. A running kernel writes while we read:
    a head file that changed meanwhile means reading again."""
    key_path, head_path = state_dir / KEY_FILE, state_dir / HEAD_FILE
    key = key_path.read_bytes() if key_path.exists() else None
    verdict = Verdict(0, "the log kept changing while it was read; try again", [])
    for _ in range(tries):
        before = head_path.read_bytes() if head_path.exists() else None
        try:
            head = read_head(head_path, key)
        except ValueError as exc:
            return Verdict(0, str(exc), [])
        try:
            verdict = _Walk(key).run(files(state_dir), head, head_missing=key is not None and head is None)
        except FileNotFoundError:       # rotated away while we read: read again
            continue
        if (head_path.read_bytes() if head_path.exists() else None) == before:
            break
    if key is None:
        verdict.notes.append(f"no audit key at {key_path}: the chain is checked, but not who wrote its "
                             "checkpoints and head file (run this as the kernel's operator on its machine)")
    return verdict


def _lines(n: int) -> str:
    return f"{n} line" if n == 1 else f"{n} lines"


class _Walk:
    """One pass over the lines, oldest first: the chain, then each checkpoint's place and key."""

    def __init__(self, key: bytes | None):
        self.key = key
        self.prev: str | None = None      # the hash of the last line read
        self.seen = 0                     # lines read
        self.base: int | None = None      # the count of the first line read, once a checkpoint says it
        self.start = 0                    # the count at the oldest anchored file's first line
        self.unopened: str | None = None  # a file before any checkpoint that did not open with one
        self.last: dict = {}              # the last checkpoint
        self.where = ""
        self.notes: list[str] = []

    def run(self, paths: list[Path], head: dict | None, head_missing: bool) -> Verdict:
        for path in paths:
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                self.where = f"{path.name}:{n}"
                problem = self.line(n, line)
                if problem:
                    return Verdict(self.seen, f"{self.where}: {problem}", self.notes)
                self.prev = line_hash(line)
                self.seen += 1
        return Verdict(self.seen, self.end(head, head_missing), self.notes)

    def line(self, n: int, line: str) -> str | None:
        try:
            record = json.loads(line)
        except ValueError:
            return "not JSON"
        if not isinstance(record, dict):
            return "not a JSON object"
        if self.prev is not None and record.get("prev") != self.prev:
            return "the chain is broken here (a line before it was changed or removed)"
        if record.get("event") == CHECKPOINT:
            return self.checkpoint(n, record)
        if n == 1 and self.base is not None:
            return "the file does not open with a checkpoint: lines at its start were removed"
        if n == 1 and self.unopened is None:
            self.unopened = self.where
        return None

    def checkpoint(self, n: int, record: dict) -> str | None:
        count, file_start, kept_from = (record.get(k) for k in ("count", "file_start", "kept_from"))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (count, file_start, kept_from)):
            return "a malformed checkpoint"
        if self.key is not None:
            rest = dict(record)
            mac, prev = rest.pop("mac", ""), rest.pop("prev", None)
            if not isinstance(mac, str) or not hmac.compare_digest(sign(self.key, prev, rest), mac):
                return f"this checkpoint was changed or forged, or the key replaced (its HMAC does not match {KEY_FILE})"
        if count - file_start != n - 1:
            missing = count - file_start - (n - 1)
            return (f"{_lines(missing)} before it in this file were removed" if missing > 0 else
                    f"{_lines(-missing)} before it in this file were added") + " (its count does not match its place)"
        if self.base is None:
            if record.get("adopted") and n == 1 and count == 0:
                if self.seen:
                    self.notes.append(f"{_lines(self.seen)} before {self.where} predate the audit key: "
                                      "chained, but no checkpoint vouches for them")
            elif self.unopened:
                self.where = self.unopened
                return "the file does not open with a checkpoint: lines at its start were removed"
            self.base, self.start = count - self.seen, file_start
        elif count != self.base + self.seen:
            return f"the checkpoint counts {count} lines before it, the log holds {self.base + self.seen}"
        if record.get("anomaly"):
            return f"at boot the kernel found {record['anomaly']}"
        if record.get("unanchored"):
            self.notes.append(f"{self.where}: the line before was written after the head file was last "
                              "updated (a kernel that died between the two writes, or a line appended then)")
        self.last = record
        return None

    def end(self, head: dict | None, head_missing: bool) -> str | None:
        if self.base is None:
            if head is not None or head_missing:
                return "no checkpoint is left in the log, though the kernel anchored it: lines were removed"
            if self.seen:
                self.notes.append("no checkpoints: the log predates the audit key; only the chain is checked")
            return None
        if self.start > self.last["kept_from"]:
            return (f"the log begins at line {self.start}, but the kernel kept its files from line "
                    f"{self.last['kept_from']}: a file was removed")
        if self.start:
            self.notes.append(f"{_lines(self.start)} before the oldest file were rotated away by the kernel")
        if head_missing:
            return f"no {HEAD_FILE}: the log's end cannot be checked (the head file was removed)"
        if head is None:
            return None
        end = self.base + self.seen
        if end < head["count"]:
            return (f"the log ends {_lines(head['count'] - end)} short of what the kernel wrote ({HEAD_FILE}): "
                    f"the last {_lines(head['count'] - end)} were removed")
        if end > head["count"]:
            return (f"{_lines(end - head['count'])} after the last line the kernel anchored ({HEAD_FILE}): "
                    "appended by someone else, or by a kernel that died before anchoring them")
        if self.prev != head["last"]:
            return f"{self.where}: the last line was changed (its hash is not the one in {HEAD_FILE})"
        return None
