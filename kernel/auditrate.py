"""Denials in the audit log, rate-limited: one user asking for what it may not have, over and over,
must not push everyone else's lines out of the log (it rotates at a fixed size).

In a window of WINDOW_S seconds, opened by the first denial, the first KEEP_PER_KEY denials of each
principal (or, for a refused connection, each public key) are written, and no more than
KEEP_PER_WINDOW in all; the rest are counted, per key and per call, and summarised when the window
ends: one `denied_summary` line each for the SUMMARY_LINES keys denied most, one more for the
rest. The table is bounded too: past MAX_KEYS keys in a window, new keys share the OTHERS bucket
(anyone can knock with a fresh key each time). So a window costs at most KEEP_PER_WINDOW +
SUMMARY_LINES + 1 lines, however it is flooded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

WINDOW_S = 60.0
KEEP_PER_KEY = 5
KEEP_PER_WINDOW = 50
MAX_KEYS = 256
MAX_CALLS = 8             # distinct calls counted per key; the rest as "(other)"
SUMMARY_LINES = 8
OTHERS = "(others)"
NAME_CHARS = 128          # of a principal or a key, as the table holds it


@dataclass
class Tally:
    kind: str                 # "principal" or "public_key"
    written: int = 0
    suppressed: int = 0
    calls: dict[str, int] = field(default_factory=dict)

    def count(self, call: str, n: int = 1) -> None:
        if call not in self.calls and len(self.calls) >= MAX_CALLS:
            call = "(other)"
        self.calls[call] = self.calls.get(call, 0) + n


def who_denied(event: str, fields: dict) -> tuple[str, str]:
    """(kind, name): whose denial this is: the key a refused connection showed, else the principal."""
    if event == "auth_failed":
        return "public_key", str(fields.get("public_key"))[:NAME_CHARS]
    return "principal", str(fields.get("principal") or fields.get("by"))[:NAME_CHARS]


class DenialLimiter:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.opened: float | None = None      # when the window opened (clock), None: no window
        self.opened_ts = 0.0                  # the same, wall time, for the summary lines
        self.keys: dict[str, Tally] = {}
        self.written = 0

    def admit(self, event: str, fields: dict) -> bool:
        """True: write this denial; False: it is counted for the window's summary."""
        if self.opened is None:
            self.opened, self.opened_ts = self.clock(), time.time()
        kind, who = who_denied(event, fields)
        if who not in self.keys and len(self.keys) >= MAX_KEYS:
            kind, who = "mixed", OTHERS
        tally = self.keys.setdefault(who, Tally(kind))
        if tally.written < KEEP_PER_KEY and self.written < KEEP_PER_WINDOW:
            tally.written += 1
            self.written += 1
            return True
        tally.suppressed += 1
        tally.count(str(fields.get("call") or fields.get("socket") or event)[:64])
        return False

    def summaries(self, force: bool = False) -> list[dict]:
        """The summary lines of a window that has ended (or, with force, of the one open), which closes."""
        if self.opened is None or (not force and self.clock() - self.opened < WINDOW_S):
            return []
        span = round(self.clock() - self.opened, 1)
        held = sorted(((who, t) for who, t in self.keys.items() if t.suppressed and who != OTHERS),
                      key=lambda item: -item[1].suppressed)
        out = [self._line(who, t, span) for who, t in held[:SUMMARY_LINES]]
        rest = held[SUMMARY_LINES:] + ([(OTHERS, self.keys[OTHERS])] if self.keys.get(OTHERS) else [])
        if rest:
            merged = Tally("mixed")
            for _, t in rest:
                merged.suppressed += t.suppressed
                for call, n in t.calls.items():
                    merged.count(call, n)
            if merged.suppressed:
                out.append({**self._line(OTHERS, merged, span), "keys": len(rest)})
        self.opened, self.keys, self.written = None, {}, 0
        return out

    def _line(self, who: str, t: Tally, span: float) -> dict:
        return {"who": who, "kind": t.kind, "count": t.suppressed, "calls": t.calls, "window_s": span,
                "since": round(self.opened_ts, 3)}
