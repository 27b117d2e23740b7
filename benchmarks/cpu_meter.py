"""Who used the cores during a run: the kernel, its drivers, the clients, this process, and everyone else.

On a small machine everything shares the same cores, so each row of a table says how much other
work ran beside it ("other load"); above DISTURBED cores its numbers are suspect.
"""

from __future__ import annotations

import os
import time

import psutil

DISTURBED = 0.25   # cores used by other processes during a run above which its numbers are suspect


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds of a process (all its threads); 0 if it is gone."""
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


def own_cpu_seconds() -> float:
    """CPU seconds this process has used (all its threads, not its children)."""
    return cpu_seconds(psutil.Process())


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used since boot (summed over cores)."""
    t = psutil.cpu_times()
    return sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))


class CpuMeter:
    """CPU seconds used during a run by the kernel, its drivers, this process and the whole machine."""

    def __init__(self, kernel_pid: int | None = None):
        self.kernel = psutil.Process(kernel_pid) if kernel_pid else None
        children = self.kernel.children() if self.kernel else []
        self.drivers = [p for p in children if "llmos.drivers.host" in _cmdline(p)]
        self.helpers = [p for p in children if p not in self.drivers]   # e.g. a services host

    def start(self) -> "CpuMeter":
        self._start = self._read()
        self._t = time.monotonic()
        return self

    def stop(self) -> None:
        end = self._read()
        self.wall = time.monotonic() - self._t
        self.used = {k: end[k] - self._start[k] for k in end}

    def _read(self) -> dict:
        out = {"machine": machine_busy_seconds(), "this process": own_cpu_seconds()}
        if self.kernel:
            out["kernel"] = cpu_seconds(self.kernel)
            out["driver"] = sum(map(cpu_seconds, self.drivers))
            out["kernel children"] = sum(map(cpu_seconds, self.helpers))
        return out

    def others(self, clients: float = 0.0) -> float:
        """Cores used meanwhile by processes that are not part of the measurement."""
        ours = sum(v for k, v in self.used.items() if k != "machine") + clients
        return max(0.0, self.used["machine"] - ours) / self.wall if self.wall > 0 else 0.0

    def line(self, clients: float | None = None) -> str:
        """Where the cores went, in cores (CPU seconds / wall seconds)."""
        used = dict(self.used)
        parts = []
        if "driver" in used:
            parts += [f"driver {used['driver'] / self.wall:.2f}", f"kernel {used['kernel'] / self.wall:.2f}"]
            if self.helpers:
                parts.append(f"kernel's other child processes {used['kernel children'] / self.wall:.2f}")
        if clients is not None:
            parts.append(f"client processes {clients / self.wall:.2f}")
            used["clients"] = clients
        parts.append(f"this process {used['this process'] / self.wall:.2f}")
        ours = sum(v for k, v in used.items() if k != "machine")
        parts.append(f"everything else on the machine {max(0.0, used['machine'] - ours) / self.wall:.2f}")
        return f"cores used over {self.wall:.1f}s ({os.cpu_count()} on the machine): " + ", ".join(parts)


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def metered(fn, *args, **kwargs):
    """Run a baseline that returns a Summary, recording how much other processes used the machine meanwhile."""
    meter = CpuMeter().start()
    summary = fn(*args, **kwargs)
    meter.stop()
    summary.others = meter.others()
    return summary
