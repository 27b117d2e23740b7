"""The CPU driver runs its torch threads on the cores other processes leave (drivers/cpu_threads.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import psutil
import pytest
import torch

from llmos.drivers.cpu_threads import ThreadPolicy, YieldingWork, threads_for
from llmos.drivers.torch_driver import TorchDriver


@pytest.mark.parametrize("cores, others, threads", [
    (2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.9, 1), (2, 8.0, 1),
    (8, 0.0, 8), (8, 2.7, 5), (8, 12.0, 1), (1, 0.0, 1), (1, 3.0, 1)])
def test_threads_are_the_cores_others_leave_never_fewer_than_one(cores, others, threads):
    assert threads_for(cores, others) == threads


@contextlib.contextmanager
def busy_processes(n: int, nice: int = 0, own_session: bool = False):
    """n busy loops at `nice` (0: work that competes with the driver on equal terms), in this session
    or each in one of its own (another login's, to the scheduler)."""
    procs = [subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c", "while True: pass"],
                              start_new_session=own_session) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_policy_starts_with_every_core(torch_threads):
    policy = ThreadPolicy(torch, cores=2)
    assert policy.threads == torch.get_num_threads() == 2
    assert policy.tick() == 2       # within its first period nothing is re-decided


def looking(tick, seconds: float) -> list[int]:
    """The thread counts a policy's ticks return, a tick every 50 ms for `seconds`, as a driver's loop turns."""
    counts, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        counts.append(tick())
        time.sleep(0.05)
    return counts


def test_the_cpu_driver_gives_up_a_thread_when_other_processes_take_the_cores(torch_threads):
    driver = TorchDriver("cpu")
    driver.threads = ThreadPolicy(torch, cores=2, period_s=0.3, give_up_s=0.9)
    with busy_processes(2):
        looking(lambda: driver.tune_threads() or driver.threads.threads, 1.6)
    assert driver.threads.threads == torch.get_num_threads() == 1


def test_niced_work_of_another_session_takes_a_thread_away_too(torch_threads):
    """Across sessions nice means nothing to the scheduler (autogroup): beside nice-19 loops there, two
    compute threads stalled (cpu_threads.py says what was measured)."""
    policy = ThreadPolicy(torch, cores=2, period_s=0.3, give_up_s=0.9)
    with busy_processes(2, nice=19, own_session=True):
        assert looking(policy.tick, 1.6)[-1] == torch.get_num_threads() == 1


def test_a_thread_goes_only_when_every_look_of_the_give_up_window_asks_and_comes_back_at_the_first_free_look(
        torch_threads):
    policy = ThreadPolicy(torch, cores=2, period_s=0.5, give_up_s=2.0)      # four looks to give a thread up
    assert [policy.decide(1.2, 0.5) for _ in range(3)] == [2, 2, 2]          # a load, three looks long: kept
    assert policy.decide(1.2, 0.5) == torch.get_num_threads() == 1           # the fourth: given up
    assert policy.decide(1.2, 0.5) == 1
    assert policy.decide(0.1, 0.5) == torch.get_num_threads() == 2           # the first free look: back


def test_a_burst_shorter_than_the_give_up_window_never_takes_a_thread(torch_threads):
    """A burst (clients starting, each importing its libraries) is over by the time a look sees it."""
    policy = ThreadPolicy(torch, cores=8, period_s=0.5, give_up_s=2.0)
    looks = [0.0, 6.0, 7.5, 3.0, 0.2, 0.0, 5.0, 0.0]
    assert [policy.decide(others, 0.5) for others in looks] == [8] * len(looks)


def test_a_lasting_load_takes_what_every_look_of_the_window_left(torch_threads):
    """Of eight cores: others at 2.7, 2.0, 3.9 and 2.6 cores leave 5, 6, 4 and 5: six is what all four left."""
    policy = ThreadPolicy(torch, cores=8, period_s=0.5, give_up_s=2.0)
    assert [policy.decide(others, 0.5) for others in (2.7, 2.0, 3.9, 2.6)] == [8, 8, 8, 6]


@pytest.mark.parametrize("own_session", [False, True])
def test_work_niced_above_the_driver_yields_to_it_only_in_its_session(own_session):
    """What yields is counted, as the loop's own CPU time says (not the thread count, which another
    test's load beside this one moves; nor a fixed amount, which it starves at nice 5). Other niced work
    of this session (CI builds its containers at nice 15 beside the tests) counts too, so the loop's share
    is read from what the count saw of it."""
    yielding = YieldingWork()
    with busy_processes(1, nice=5, own_session=own_session) as procs:
        loop = psutil.Process(procs[0].pid)
        time.sleep(0.3)
        yielding.seconds()
        first, at = yielding.seen.get(loop.pid), sum(loop.cpu_times()[:2])     # its CPU counts from here
        time.sleep(1.0)
        spent = yielding.seconds()
        last, used = yielding.seen.get(loop.pid), sum(loop.cpu_times()[:2]) - at
    assert used > 0
    if own_session:
        assert first is None and last is None
    else:
        assert last - first == pytest.approx(used, abs=0.05)
        assert spent >= last - first
    session = os.getsid(0)
    for pid in yielding.seen:       # it holds only what it saw last, all of this session
        with contextlib.suppress(ProcessLookupError):
            assert os.getsid(pid) == session


def test_llmos_cpu_threads_pins_the_count_whatever_the_machine_does(torch_threads, monkeypatch):
    monkeypatch.setenv("LLMOS_CPU_THREADS", "2")
    policy = ThreadPolicy.from_env(torch)
    policy.period_s, policy.give_up_s = 0.3, 0.6
    with busy_processes(2):
        assert set(looking(policy.tick, 1.2)) == {2} and torch.get_num_threads() == 2


def test_unset_the_driver_keeps_every_core_and_auto_follows_the_machine(torch_threads, monkeypatch):
    """Adaptive threads are opt-in: in bf16 they can change a greedy answer, and the ABI promises the
    same text for the same seed."""
    monkeypatch.delenv("LLMOS_CPU_THREADS", raising=False)
    fixed = ThreadPolicy.from_env(torch)
    monkeypatch.setenv("LLMOS_CPU_THREADS", "auto")
    follows = ThreadPolicy.from_env(torch)
    fixed.period_s = follows.period_s = 0.3
    fixed.give_up_s = follows.give_up_s = 0.6
    with busy_processes(2):
        assert set(looking(fixed.tick, 1.2)) == {fixed.cores}
        assert looking(follows.tick, 1.2)[-1] == 1


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_llmos_cpu_threads_is_refused_with_what_to_give(torch_threads, monkeypatch, value):
    monkeypatch.setenv("LLMOS_CPU_THREADS", value)
    with pytest.raises(ValueError, match="whole number of threads"):
        ThreadPolicy.from_env(torch)
