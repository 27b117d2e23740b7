"""The fair scheduler's policy: shares by tokens served, idling earns no credit, caps, priorities."""

from dataclasses import dataclass

import pytest

from llmos.kernel.errors import DoubleRelease
from llmos.kernel.fair_share import FairScheduler


@dataclass(eq=False)
class Req:
    pid: int
    priority: int = 0
    deadline: float | None = None
    seq: int = 0

    @property
    def share(self) -> int:
        return self.pid


def run_to_completion(sched, req, tokens):
    sched.charge(req.pid, tokens)
    sched.finished(req)


def test_a_flooding_process_does_not_starve_a_light_one():
    sched = FairScheduler(max_running_per_process=64)
    for i in range(64):
        sched.enqueue(Req(pid=1, seq=i))
    first = sched.pop_next()
    run_to_completion(sched, first, 100)           # the heavy process has been served
    sched.enqueue(Req(pid=2, seq=100))
    assert sched.pop_next().pid == 2               # the light one goes next, ahead of 62 queued


def test_only_the_least_served_running_process_may_cut_in():
    sched = FairScheduler(max_running_per_process=64)
    for i in range(8):
        sched.enqueue(Req(pid=1, seq=i))
    heavy = [sched.pop_next() for _ in range(4)]
    assert not sched.may_cut_in(1)                 # alone on the device: nobody to cut in ahead of
    sched.charge(1, 500)
    sched.enqueue(Req(pid=2, seq=100))
    assert sched.pop_next().pid == 2
    assert sched.may_cut_in(2) and not sched.may_cut_in(1)
    sched.charge(2, 600)                           # now the light one has had more
    assert sched.may_cut_in(1) and not sched.may_cut_in(2)
    for r in heavy:
        sched.finished(r)
    assert not sched.may_cut_in(2)                 # the heavy one left the device


def test_service_alternates_by_tokens_served_not_by_requests():
    sched = FairScheduler(max_running_per_process=100)
    for i in range(10):
        sched.enqueue(Req(pid=1, seq=i))
        sched.enqueue(Req(pid=2, seq=100 + i))
    served = {1: 0, 2: 0}
    for _ in range(10):
        req = sched.pop_next()
        tokens = 100 if req.pid == 1 else 10       # pid 1 asks for long generations
        served[req.pid] += tokens
        run_to_completion(sched, req, tokens)
    assert served[2] > 0 and abs(served[1] - served[2]) <= 100


def test_finished_requests_give_their_running_slot_back():
    sched = FairScheduler(max_running_per_process=2)
    reqs = [Req(pid=1, seq=i) for i in range(5)]
    for r in reqs:
        sched.enqueue(r)
    a, b = sched.pop_next(), sched.pop_next()
    assert sched.pop_next() is None                # capped at 2 running
    sched.finished(a)
    assert sched.pop_next() is reqs[2]
    sched.finished(b)
    assert sched.pop_next() is reqs[3]


def test_within_a_process_priority_then_deadline_then_arrival():
    sched = FairScheduler()
    low, urgent, high, early = Req(1, 0, None, 0), Req(1, 0, 5.0, 1), Req(1, 5, None, 2), Req(1, 0, 1.0, 3)
    for r in (low, urgent, high, early):
        sched.enqueue(r)
    assert [sched.pop_next() for _ in range(4)] == [high, early, urgent, low]


def admission_order(sched, pops: int, tokens: int = 100) -> list[int]:
    """The pids of the next `pops` requests admitted, each served `tokens` and finished."""
    order = []
    for _ in range(pops):
        req = sched.pop_next()
        order.append(req.pid)
        run_to_completion(sched, req, tokens)
    return order


def test_an_idle_process_earns_no_credit_while_others_run():
    sched = FairScheduler()
    sched.enqueue(Req(pid=2, seq=0))
    busy = sched.pop_next()
    sched.charge(2, 5000)                          # pid 2 is served alone while pid 1 idles
    for i in range(3):
        sched.enqueue(Req(pid=1, seq=10 + i))      # pid 1 rejoins at pid 2's virtual time...
        sched.enqueue(Req(pid=2, seq=20 + i))
    assert admission_order(sched, 4) == [1, 2, 1, 2]   # ...so it shares, not catches up 5000 tokens
    sched.finished(busy)


def test_when_the_device_falls_idle_past_service_is_forgotten():
    sched = FairScheduler()
    sched.enqueue(Req(pid=1, seq=0))
    run_to_completion(sched, sched.pop_next(), 5000)   # then nobody runs or waits
    for i in range(3):
        sched.enqueue(Req(pid=2, seq=10 + i))
        sched.enqueue(Req(pid=1, seq=20 + i))
    assert sorted(admission_order(sched, 4)) == [1, 1, 2, 2]   # pid 1's 5000 tokens count no more


def test_a_reaped_process_is_forgotten_with_its_queue():
    sched = FairScheduler()
    reqs = [Req(pid=7, seq=i) for i in range(3)]
    for r in reqs:
        sched.enqueue(r)
    assert sched.forget(7) == reqs and len(sched) == 0 and sched.pop_next() is None


def test_len_counts_the_queued_requests_of_every_process_not_the_admitted_ones():
    sched = FairScheduler()
    assert len(sched) == 0 and sched.pop_next() is None
    for i in range(3):
        sched.enqueue(Req(pid=1 + i % 2, seq=i))
    assert len(sched) == 3
    admitted = sched.pop_next()
    assert len(sched) == 2
    assert sched.remove(admitted) is False and len(sched) == 2   # admitted: no longer in the queue


def test_a_request_that_leaves_twice_is_an_error_not_a_clamp():
    """The count of a process's running requests is never kept from going negative: a second finish of
    the same request is the kernel's bookkeeping gone wrong, and says so."""
    sched = FairScheduler()
    sched.enqueue(Req(pid=1))
    sched.enqueue(Req(pid=1, seq=1))
    first, second = sched.pop_next(), sched.pop_next()
    sched.finished(first)
    sched.finished(second)
    with pytest.raises(DoubleRelease, match="process 1 left the device twice"):
        sched.finished(first)


def test_a_request_of_a_forgotten_process_may_still_leave():
    """A reaped process is forgotten while its requests run; each of them still ends (and leaves) once."""
    sched = FairScheduler()
    sched.enqueue(Req(pid=7))
    running = sched.pop_next()
    sched.enqueue(Req(pid=8, seq=1))
    sched.pop_next()                 # another process runs beside it, so may_cut_in weighs pid 7's count
    sched.enqueue(Req(pid=7, seq=2))
    assert [r.seq for r in sched.forget(7)] == [2]       # the queued one handed back
    sched.may_cut_in(7)              # asking about a forgotten process must not bring its count back at 0...
    sched.finished(running)          # ...or its running request's end would be taken for a second one
