"""How many torch threads a CPU driver runs: as many as the cores nobody else is using.

A decode step on a CPU is a few hundred small parallel regions (one per matmul, norm, attention),
each ending at a barrier where every intra-op thread waits for the slowest. When another process
takes one of the cores, the thread there is descheduled for a whole time slice and its siblings
wait at the next barrier: on a 2-core machine shared with other work, SmolLM2-135M's decode fell
from 2.0 tokens/s on one thread to 0.3 on two (benchmarks/README.md, "CPU: llmos against
llama.cpp"). So the driver watches the cores that processes other than itself keep busy, and runs
on the rest. Niced work counts too: one might expect the scheduler to give way to a driver at nice 0
over a nice-19 job, but on Linux 6.18 (EEVDF) a two-thread llama.cpp step through the kernel fell
from ~75 to 4-9 tokens/s beside a nice-19 loop on each core, with stalls of up to 3 s, while one
thread kept 38-43 (benchmarks/README.md).

The policy is the operator's choice, LLMOS_CPU_THREADS=auto in the kernel's environment (its drivers
inherit it), not the default: in bf16 a different thread count can change a greedy answer, and the
ABI promises the same text for the same seed and arguments. Unset, the driver runs on every core it
may use, as before; LLMOS_CPU_THREADS=N pins N.
"""

from __future__ import annotations

import os
import sys
import time

import psutil

PERIOD_S = 2.0            # how often the driver looks at the machine
RELEASE_CORES = 0.5       # others' load (in cores) that takes a thread away; below half a core it stays


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:     # not on Linux
        return os.cpu_count() or 1


def threads_for(cores: int, others: float) -> int:
    """Threads to run when other processes keep `others` cores busy."""
    return max(1, min(cores, int(cores - others + RELEASE_CORES)))


def competing_busy_seconds() -> float:
    """CPU seconds the machine has spent on work, niced or not, all cores together."""
    t = psutil.cpu_times()
    return sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))


class ThreadPolicy:
    """Sets torch's intra-op threads from what the rest of the machine leaves; `tick` once a loop turn."""

    def __init__(self, torch, cores: int | None = None, period_s: float = PERIOD_S, pinned: int | None = None):
        self.torch = torch
        self.cores = cores or available_cores()
        self.period_s = period_s
        self.pinned = pinned
        self.proc = psutil.Process()
        self.threads = pinned or self.cores
        torch.set_num_threads(self.threads)
        self._mark = self._read()

    @classmethod
    def from_env(cls, torch) -> "ThreadPolicy":
        """The driver's policy: LLMOS_CPU_THREADS=auto follows the machine, N pins N, unset pins every core."""
        given = os.environ.get("LLMOS_CPU_THREADS", "").strip()
        if given == "auto":
            return cls(torch)
        if given and not (given.isdigit() and int(given) > 0):
            raise ValueError(f"LLMOS_CPU_THREADS={given!r}: give auto, or a whole number of threads, 1 or more")
        return cls(torch, pinned=int(given) if given else available_cores())

    def _read(self) -> tuple[float, float, float]:
        own = self.proc.cpu_times()
        return time.monotonic(), competing_busy_seconds(), own.user + own.system

    def tick(self) -> int:
        """Re-decide at most once a period; the thread count in force."""
        now = time.monotonic()
        if self.pinned or now - self._mark[0] < self.period_s:
            return self.threads
        mark = self._read()
        wall = mark[0] - self._mark[0]
        others = max(0.0, (mark[1] - self._mark[1]) - (mark[2] - self._mark[2])) / wall
        self._mark = mark
        want = threads_for(self.cores, others)
        if want != self.threads:
            print(f"driver: cpu threads {self.threads} -> {want}: other processes kept {others:.2f} cores busy "
                  f"over {wall:.1f}s", file=sys.stderr)
            self.torch.set_num_threads(want)
            self.threads = want
        return self.threads
