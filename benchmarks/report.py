"""What a benchmark prints: log lines and progress on stderr, plain-text tables on stdout."""

from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm

from cpu_meter import DISTURBED
from timings import Summary, percentile


def log(msg: str) -> None:
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr)


def machine_line() -> str:
    import torch
    load = os.getloadavg()
    return (f"python {sys.version.split()[0]}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def fmt(x, unit: str = "", digits: int = 1) -> str:
    if x is None:
        return "-"
    if unit == "ms":
        return f"{x * 1000:.{digits}f}"
    return f"{x:.{digits}f}"


def print_table(title: str, headers: list[str], rows: list[list], notes: list[str] = ()) -> None:
    """A plain-text table with right-aligned columns (the first left-aligned), then its notes."""
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    print(f"\n{title}")
    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        print(line(r))
    for n in notes:
        print(f"  {n}")
    sys.stdout.flush()


def throughput_table(title: str, rows: list[Summary], reference: Summary, notes: list[str] = ()) -> None:
    """One row per method: tokens, rate and its ratio to the reference, TTFT and ITL percentiles, other load."""
    headers = ["method", "requests", "out tokens", "wall s", "out tok/s", f"vs {reference.method}",
               "TTFT p50 ms", "TTFT p95 ms", "ITL p50 ms", "ITL p95 ms", "errors", "other load"]
    body = []
    for s in rows:
        ratio = s.tok_s / reference.tok_s if reference.tok_s else None
        body.append([s.method + (f" [{s.note}]" if s.note else ""), s.requests, s.tokens, fmt(s.wall_s),
                     fmt(s.tok_s), fmt(ratio, digits=2) + "x" if ratio is not None else "-",
                     fmt(percentile(s.ttft, 50), "ms", 0), fmt(percentile(s.ttft, 95), "ms", 0),
                     fmt(percentile(s.itl, 50), "ms", 1), fmt(percentile(s.itl, 95), "ms", 1), s.errors,
                     "-" if s.others is None else f"{s.others:.2f}" + (" !" if s.others > DISTURBED else "")])
    notes = list(notes) + [f"other load: cores used meanwhile by processes outside the benchmark (machine-wide "
                           f"CPU time, from psutil); '!' marks more than {DISTURBED} cores: that row was slowed by "
                           f"other work on the machine"]
    print_table(title, headers, body, notes)
