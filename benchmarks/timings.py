"""How every method's requests are measured and summed up, the same way, so rows compare.

A runner returns one `Timing` per request: TTFT from the moment the method was handed the
request to its first text, inter-token latency (ITL) as the gaps between successive pieces of
text, throughput as completion tokens (as each method counts them: EOS included, nothing past a
request's own max_tokens) over wall time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Timing:
    """One request as one method served it; times on one monotonic clock (seconds)."""

    idx: int
    submitted: float
    end: float
    first: float | None = None                        # first text, or the end if no text came
    pieces: list[float] = field(default_factory=list)  # arrival time of each piece of text
    completion_tokens: int = 0
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.submitted

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.pieces, self.pieces[1:])]


def percentile(values, p: float) -> float | None:
    """The p-th percentile (0-100), interpolated linearly between the closest values; None for no values."""
    values = list(values)
    return float(np.percentile(values, p)) if values else None


@dataclass
class Summary:
    method: str
    requests: int
    tokens: int
    wall_s: float
    ttft: list[float]
    itl: list[float]
    errors: int
    note: str = ""
    cpu_line: str = ""
    others: float | None = None   # cores used by other processes on the machine meanwhile (interference)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0


def summarize(method: str, timings: list[Timing], wall_s: float | None = None, note: str = "") -> Summary:
    """The requests' totals and latencies; wall time from the first submission to the last end unless given."""
    ok = [t for t in timings if t.error is None]
    if wall_s is None:
        wall_s = max((t.end for t in timings), default=0) - min((t.submitted for t in timings), default=0)
    return Summary(method, len(timings), sum(t.completion_tokens for t in ok), wall_s,
                   [t.ttft for t in ok if t.ttft is not None],
                   [g for t in ok for g in t.gaps()], len(timings) - len(ok), note)


def error_notes(label: str, timings: list[Timing]) -> list[str]:
    """One line per distinct error: how many requests got it, and which (by index)."""
    by_error: dict[str, list[int]] = {}
    for t in timings:
        if t.error:
            by_error.setdefault(t.error, []).append(t.idx)
    return [f"{label}: {len(ids)} request(s) failed ({', '.join(map(str, sorted(ids)[:8]))}"
            f"{', ...' if len(ids) > 8 else ''}): {err[:300]}" for err, ids in by_error.items()]
