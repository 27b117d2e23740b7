"""How many torch threads a CPU driver runs: as many as the cores nobody else is using.

A decode step on a CPU is a few hundred small parallel regions (one per matmul, norm, attention),
each ending at a barrier where every intra-op thread waits for the slowest. When another process
takes one of the cores, the thread there is descheduled for a whole time slice and its siblings
wait at the next barrier: on a 2-core machine shared with other work, SmolLM2-135M's decode fell
from 2.0 tokens/s on one thread to 0.3 on two (benchmarks/README.md, "CPU: llmos against
llama.cpp"). So the driver watches the cores that processes other than itself keep busy, and runs
on the rest.

Niced work counts too, unless it runs in the driver's own session. Linux schedules each session as
one group (autogroup, on by default; systemd gives each service a cgroup alike): across groups nice
means nothing, so a nice-19 job started from another login takes its group's equal share, and two
compute threads beside it stalled (a lone stream through the kernel fell from ~100 to 4 tokens/s,
benchmarks/README.md). Within the driver's session (the kernel keeps its drivers in its own, in a
process group of their own: supervisor.OWN_PROCESS_GROUP) the scheduler gives way to the driver over
anything niced above it: beside a nice-19 loop on each core there, a lone stream on two threads made
73.8 tokens/s against 87.6 quiet. So the CPU time of processes in the driver's session at a higher
nice than its own is not counted as others' (`YieldingWork`).

Slow to give a thread up, quick to take it back. A burst (sixteen client processes starting, each
importing its libraries, took 1-1.7 cores for a second or two) is over by the time a look sees it:
when one look over 2 s decided for the next 2 s, such a burst held the driver on one thread for a
period after it had ended, and 16 streams' throughput varied from 98 to 164 tokens/s between turns
of the same load (benchmarks/README.md, "a burst does not take a thread"). So the driver looks every
PERIOD_S, takes a freed core at the first look that sees it free, and gives one up only when every
look of the last GIVE_UP_S asked for it: a lasting load is still answered within GIVE_UP_S, as before.

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

PERIOD_S = 0.5            # how often the driver looks at the machine
GIVE_UP_S = 2.0           # how long others must keep the cores busy, look after look, before a thread goes
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


class YieldingWork:
    """CPU seconds of processes the scheduler gives way to this one over: in its session, at a higher
    nice (see the module's docstring), counted from when it first saw each. Holds only the processes
    it saw last time."""

    def __init__(self):
        self.session = os.getsid(0)
        self.seen: dict[int, float] = {}
        self.total = 0.0

    def seconds(self) -> float:
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        now = {}
        for pid in psutil.pids():       # by system calls first, so a machine of many processes costs ~1 us each
            try:
                if os.getsid(pid) != self.session or os.getpriority(os.PRIO_PROCESS, pid) <= nice:
                    continue
                times = psutil.Process(pid).cpu_times()
                now[pid] = times.user + times.system
            except (psutil.Error, OSError):     # gone meanwhile, or not ours to read
                continue
        self.total += sum(max(0.0, cpu - self.seen[pid]) for pid, cpu in now.items() if pid in self.seen)
        self.seen = now
        return self.total


def competing_busy_seconds() -> float:
    """CPU seconds the machine has spent on work, niced or not, all cores together."""
    t = psutil.cpu_times()
    return sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))


class ThreadPolicy:
    """Sets torch's intra-op threads from what the rest of the machine leaves; `tick` once a loop turn."""

    def __init__(self, torch, cores: int | None = None, period_s: float = PERIOD_S, pinned: int | None = None,
                 give_up_s: float = GIVE_UP_S):
        self.torch = torch
        self.cores = cores or available_cores()
        self.period_s = period_s
        self.give_up_s = give_up_s
        self.wants: list[int] = []      # the threads each recent look asked for, the last GIVE_UP_S of them
        self.pinned = pinned
        self.proc = psutil.Process()
        self.yielding = YieldingWork()
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
        """(now, the machine's busy CPU seconds, those of this process and of work that yields to it)."""
        own = self.proc.cpu_times()
        return time.monotonic(), competing_busy_seconds(), own.user + own.system + self.yielding.seconds()

    def tick(self) -> int:
        """Look at the machine at most once a period; the thread count in force."""
        now = time.monotonic()
        if self.pinned or now - self._mark[0] < self.period_s:
            return self.threads
        mark = self._read()
        wall = mark[0] - self._mark[0]
        others = max(0.0, (mark[1] - self._mark[1]) - (mark[2] - self._mark[2])) / wall
        self._mark = mark
        return self.decide(others, wall)

    def decide(self, others: float, wall: float) -> int:
        """After a look that saw other processes keep `others` cores busy over `wall` seconds: more threads
        at once, fewer only as many fewer as every look of the last give_up_s asked for."""
        looks = max(1, round(self.give_up_s / self.period_s))
        self.wants = [*self.wants, threads_for(self.cores, others)][-looks:]
        want = self.wants[-1]
        if want < self.threads:
            want = max(self.wants) if len(self.wants) == looks else self.threads
        if want != self.threads:
            print(f"driver: cpu threads {self.threads} -> {want}: other processes kept {others:.2f} cores busy "
                  f"over the last {wall:.1f}s", file=sys.stderr)
            self.torch.set_num_threads(want)
            self.threads = want
        return self.threads
