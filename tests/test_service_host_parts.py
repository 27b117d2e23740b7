"""The service host's parts that keep callers apart, in process: the per-caller call queue, worker
threads counted per caller, call budgets, and the watch that interrupts a task holding the loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from llmos.services import ServiceError
from llmos.services.callqueue import CallQueue
from llmos.services.workers import Budget, LoopHeld, LoopWatch, Workers, checkpoint


async def test_a_free_slot_goes_to_the_callers_in_turn():
    queue = CallQueue(total=1, per_caller=1)
    order: list[str] = []
    release = asyncio.Event()

    async def call(caller: str, tag: str) -> None:
        async with queue.slot(caller):
            order.append(tag)
            await release.wait()

    first = asyncio.create_task(call("alice", "a0"))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(call("alice", f"a{i}")) for i in range(1, 4)]
    await asyncio.sleep(0)
    waiting.append(asyncio.create_task(call("bob", "b0")))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, *waiting)
    assert order[:3] == ["a0", "b0", "a1"]          # bob's one call waited for one turn, not for alice's three


async def test_a_caller_runs_at_most_its_share_and_the_rest_of_the_host_stays_free():
    queue = CallQueue(total=8, per_caller=2)
    running = {"alice": 0, "bob": 0}
    peak = {"alice": 0, "bob": 0}

    async def call(caller: str) -> None:
        async with queue.slot(caller):
            running[caller] += 1
            peak[caller] = max(peak[caller], running[caller])
            await asyncio.sleep(0.01)
            running[caller] -= 1

    await asyncio.gather(*(call("alice") for _ in range(20)), call("bob"))
    assert peak == {"alice": 2, "bob": 1}


async def test_past_its_bound_a_callers_call_is_eagain_at_once_and_anothers_is_not():
    queue = CallQueue(total=1, per_caller=1, held=3)
    gate = asyncio.Event()

    async def call(caller: str) -> None:
        async with queue.slot(caller):
            await gate.wait()

    held = [asyncio.create_task(call("alice")) for _ in range(3)]
    await asyncio.sleep(0)
    with pytest.raises(ServiceError) as info:
        await call("alice")
    assert info.value.errno == "EAGAIN"
    bob = asyncio.create_task(call("bob"))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*held, bob)
    assert not queue.running and not queue.waiting


async def test_a_call_cancelled_while_it_waits_gives_up_its_place():
    queue = CallQueue(total=1, per_caller=1)
    gate = asyncio.Event()

    async def call(caller: str) -> None:
        async with queue.slot(caller):
            await gate.wait()

    first = asyncio.create_task(call("alice"))
    await asyncio.sleep(0)
    second = asyncio.create_task(call("alice"))
    await asyncio.sleep(0)
    second.cancel()
    gate.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await second
    assert not queue.running and not queue.waiting


async def test_a_job_runs_on_a_thread_of_its_own_while_the_loop_turns():
    workers = Workers()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    def spin() -> str:
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            pass
        return threading.current_thread().name

    tick = asyncio.create_task(ticker())
    name = await workers.run("alice", spin)
    tick.cancel()
    assert name.startswith("llmos-task-alice") and ticks >= 10 and not workers.threads


async def test_a_callers_threads_are_counted_until_they_return_even_after_its_call_ended():
    workers = Workers(per_caller=2)
    stop = threading.Event()
    jobs = [asyncio.create_task(workers.run("alice", stop.wait)) for _ in range(2)]
    await asyncio.sleep(0.05)
    for job in jobs:
        job.cancel()            # the calls ended at a deadline: their threads block on
    with pytest.raises(ServiceError) as info:
        await workers.run("alice", lambda: 1)
    assert info.value.errno == "EAGAIN"
    assert await workers.run("bob", lambda: 2) == 2      # nobody else's threads are taken
    stop.set()
    for _ in range(100):
        if not workers.threads:
            break
        await asyncio.sleep(0.01)
    assert await workers.run("alice", lambda: 3) == 3


async def test_a_job_stops_at_a_checkpoint_once_its_call_is_over_budget():
    workers = Workers()
    laps = 0

    def loop_forever() -> None:
        nonlocal laps
        while True:
            checkpoint()
            laps += 1

    with Budget("t.t", cost_limit_s=0.2, deadline_s=None):
        with pytest.raises(ServiceError) as info:
            await workers.run("alice", loop_forever)
    assert info.value.errno == "ETIMEDOUT" and "cost_limit_s" in info.value.message and laps > 0
    assert Budget("t.t", 60, 5).seconds == 5 and "deadline" in Budget("t.t", 60, 5).error().message


def test_a_task_holding_the_loop_is_interrupted_and_others_are_not():
    async def main() -> tuple:
        loop = asyncio.get_running_loop()
        watch = LoopWatch(loop, lambda task: task.get_name().startswith("call-"), stall_s=0.5)
        watch.start()

        async def hog() -> None:
            end = time.monotonic() + 10
            while time.monotonic() < end:
                pass

        try:
            started = time.monotonic()
            hogging = asyncio.create_task(hog(), name="call-1")
            other = asyncio.create_task(asyncio.sleep(0.1, "fine"), name="call-2")
            outcome = await asyncio.gather(hogging, other, return_exceptions=True)
            return outcome, time.monotonic() - started
        finally:
            watch.stop()

    (held, other), took = asyncio.run(main())
    assert isinstance(held, LoopHeld) and other == "fine" and took < 5
