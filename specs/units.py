"""Sizes and durations as people write and read them: "4 GiB", "512MiB", "30s", "5m".

One module for every place that reads or shows one (the kernel's config, `llmos user --quota`,
`llmos ps`, `llmos top`, the kernel's ENOMEM messages), so "8G" means the same everywhere. It
lives in specs/ because both the kernel and userland use it, and they meet only here.
Binary units (KiB, MiB, ...) are powers of 1024; decimal ones (kB, MB, ...) powers of 1000; a
bare K, M, G or T is binary, as memory is counted.
"""

from __future__ import annotations

import re

SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6, "mib": 1 << 20,
              "g": 1 << 30, "gb": 10**9, "gib": 1 << 30, "t": 1 << 40, "tb": 10**12, "tib": 1 << 40}
BINARY_UNITS = (("B", 1), ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40))
DURATION_UNITS = {"": 1.0, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_AMOUNT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*")


def parse_size(value: int | str) -> int:
    """'8GiB', '512 MB', '1.5G', 1048576 -> bytes; ValueError saying how to write one."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    m = _AMOUNT.fullmatch(value) if isinstance(value, str) else None
    if not m or m.group(2).lower() not in SIZE_UNITS:
        raise ValueError(f"cannot read {str(value)[:40]!r} as a size (write e.g. 512MiB or 8GiB)")
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2).lower()])


def parse_duration(value: int | float | str) -> float:
    """'30s', '5m', '1.5h', '250ms', 600 (seconds) -> seconds; ValueError saying how to write one."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    m = _AMOUNT.fullmatch(value) if isinstance(value, str) else None
    if not m or m.group(2).lower() not in DURATION_UNITS:
        raise ValueError(f"cannot read {str(value)[:40]!r} as a duration (write e.g. 30s, 5m or a number of seconds)")
    return float(m.group(1)) * DURATION_UNITS[m.group(2).lower()]


def size_unit(n: float) -> tuple[str, int]:
    """The binary unit that shows n with one to four digits before the point: ('GiB', 1 << 30)."""
    return next((u, scale) for u, scale in BINARY_UNITS if abs(n) < scale * 1024 or u == "TiB")


def format_size(n: float, digits: int = 1) -> str:
    """Bytes for people: '512 B', '1.5 KiB', '3.20 GiB' (digits=2)."""
    unit, scale = size_unit(n)
    return f"{n:.0f} B" if unit == "B" else f"{n / scale:.{digits}f} {unit}"


def exact_size(n: int) -> str:
    """A size as one would write it in a config: '1GiB' where a unit divides it, else the bytes."""
    for unit, scale in reversed(BINARY_UNITS[1:]):
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def format_duration(s: float) -> str:
    """An uptime or age for people: 42s, 3m05s, 2h07m, 3d04h."""
    s = int(s)
    days, hours, minutes, secs = s // 86400, s // 3600 % 24, s // 60 % 60, s % 60
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_latency(s: float | None) -> str:
    """A latency: 850us, 12ms, 1.25s; '-' when nothing was measured."""
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f}us"
    return f"{s * 1e3:.0f}ms" if s < 1 else f"{s:.2f}s"
