"""One tenant's service calls cannot stop, stall or starve another's (issue 25, items 3 and 4).

A tcp kernel with its service host, the tiny BERT for embeddings and two test plugins (misbehave,
heavy); alice is the noisy tenant, bob the one who must not notice. Each test's noise stays within
alice's own limits: what she cannot do is take bob's share of the host.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from harness import errno_of, raised, services_kernel, wait_until
from llmos.userland.client import AsyncClient, LLMOSError

PLUGINS = Path(__file__).resolve().parents[1] / "data" / "plugins"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory, tiny_bert):
    k = services_kernel(tmp_path_factory.mktemp("svc-fair"), tiny_bert,
                        env={"LLMOS_SERVICES_PATH": str(PLUGINS), "LLMOS_PLUGIN_MODULES": "misbehave,heavy",
                             "LLMOS_PLUGINS": ""})
    with k.client("svc-waiter") as c:
        assert c.svc_call("heavy", "embeds", {"n": 1})      # the embedding model is loaded before the tests time anything
    yield k
    k.stop()


@pytest.fixture(scope="module")
def keys(kernel):
    with kernel.client("console", caps=["admin", "ps", "mem", "svc"]) as op:
        made = {name: op.user_add(name)["key_file"] for name in ("alice", "bob", "dave")}
        made["carol"] = op.user_add("carol", quotas={"requests": 1})["key_file"]
        yield made
        for name in made:
            op.user_remove(name)


@pytest.fixture
def bob(kernel, keys):
    with kernel.client("bob-app", key=keys["bob"]) as c:
        yield c


def restarts(kernel) -> int:
    with kernel.client("watcher") as c:
        return c.svc_list()["host"]["restarts"]


def flood(kernel, key: str, connections: int, calls: int, service: str, task: str, args: dict,
          deadline: float = 120.0) -> dict:
    """`calls` concurrent svc_calls on each of `connections` connections of one user, started at once; the
    outcomes ({"ok": n, errno: n}) and how long each EAGAIN took to come back."""
    outcomes: Counter = Counter()
    eagain_s: list[float] = []

    async def one(c: AsyncClient) -> None:
        started = time.monotonic()
        try:
            await c.svc_call(service, task, args, deadline=deadline)
            outcomes["ok"] += 1
        except LLMOSError as exc:
            outcomes[exc.errno] += 1
            if exc.errno == "EAGAIN":
                eagain_s.append(time.monotonic() - started)

    async def connection() -> None:
        async with AsyncClient(kernel.socket, "flood", key=key, timeout=None) as c:
            await asyncio.gather(*(one(c) for _ in range(calls)))

    threads = [threading.Thread(target=asyncio.run, args=(connection(),)) for _ in range(connections)]
    for t in threads:
        t.start()
    return {"threads": threads, "outcomes": outcomes, "eagain_s": eagain_s}


def finish(noise: dict) -> Counter:
    for t in noise["threads"]:
        t.join(timeout=300)
    return noise["outcomes"]


def in_flight(kernel) -> int:
    with kernel.client("watcher") as c:
        return c.svc_list()["host"]["in_flight"]


def test_one_users_flood_of_service_calls_does_not_delay_anothers(kernel, keys, bob):
    """alice: 200 concurrent calls from 4 connections, each making 10 embed syscalls for her. Before, the
    host made them all as itself on one connection, so they took its 64 request slots and bob's calls
    got EAGAIN."""
    before = restarts(kernel)
    noise = flood(kernel, keys["alice"], 4, 50, "heavy", "embeds", {"n": 10}, deadline=300)
    assert wait_until(lambda: in_flight(kernel) >= 16, timeout=30)
    for _ in range(10):
        started = time.monotonic()
        assert bob.svc_call("heavy", "embeds", {"n": 2}, deadline=30) == {"n": 2}
        assert bob.svc_call("classify", "sentiment", {"text": "Thanks, that was great."}, deadline=30)["label"]
        assert time.monotonic() - started < 10
    assert in_flight(kernel) > 0          # bob's calls ran while alice's flood did
    outcomes = finish(noise)
    assert set(outcomes) <= {"ok", "EAGAIN"} and outcomes["ok"] >= 64, outcomes
    assert restarts(kernel) == before


def test_calls_past_a_users_bound_are_eagain_at_once(kernel, keys, bob):
    """90 calls of alice's from 3 connections: 64 in flight (her bound), the rest EAGAIN at once."""
    noise = flood(kernel, keys["alice"], 3, 30, "misbehave", "slow", {"seconds": 3})
    assert wait_until(lambda: len(noise["eagain_s"]) >= 26, timeout=30)
    started = time.monotonic()
    assert bob.svc_call("misbehave", "slow", {"seconds": 0.1}) == {"slept": 0.1}
    assert time.monotonic() - started < 5
    outcomes = finish(noise)
    assert outcomes == {"ok": 64, "EAGAIN": 26}, outcomes
    assert max(noise["eagain_s"]) < 2


def test_calls_past_a_programs_bound_are_eagain_at_once(kernel, keys):
    noise = flood(kernel, keys["alice"], 1, 40, "misbehave", "slow", {"seconds": 2})
    outcomes = finish(noise)
    assert outcomes == {"ok": 32, "EAGAIN": 8}, outcomes
    assert max(noise["eagain_s"]) < 2


def test_the_syscalls_a_service_makes_for_a_call_count_against_the_caller(kernel, keys):
    """carol may have 1 request in flight: her svc_call is it, so the embed the host makes for it is hers
    too, and over her quota. Before, it was the host's, and nobody's quota."""
    with kernel.client("carol-app", key=keys["carol"]) as carol:
        error = raised(carol.svc_call, "heavy", "embeds", {"n": 1})
        assert error.errno == "EDQUOT" and "carol" in error.message


def test_a_task_that_computes_on_the_event_loop_fails_alone(kernel, keys, bob):
    """Before, the host stopped answering pings and was killed: every call in flight ended EIO."""
    before = restarts(kernel)
    with kernel.client("alice-app", key=keys["alice"]) as alice:
        for task in ("spin", "block"):
            started = time.monotonic()
            outcome: dict = {}
            t = threading.Thread(target=lambda: outcome.update(
                error=raised(alice.svc_call, "heavy", task, {"seconds": 60}, deadline=90)))
            t.start()
            time.sleep(0.5)
            assert bob.svc_call("misbehave", "add", {"a": 1, "b": 2})["sum"] == 3
            t.join(timeout=60)
            assert outcome["error"].errno == "ETIMEDOUT" and "event loop" in outcome["error"].message
            assert time.monotonic() - started < 15
    assert restarts(kernel) == before


def test_cpu_work_on_worker_threads_leaves_the_host_answering(kernel, keys, bob):
    before = restarts(kernel)
    with kernel.client("alice-app", key=keys["alice"]) as alice:
        outcomes: list = []
        threads = [threading.Thread(target=lambda task=task: outcomes.append(
            alice.svc_call("heavy", task, {"seconds": 12}, deadline=60))) for task in ("grind", "offload") * 2]
        for t in threads:
            t.start()
        for _ in range(5):
            started = time.monotonic()
            assert bob.svc_call("redact", "text", {"text": "Mail me at bob@example.com"})["counts"] == {"EMAIL": 1}
            assert time.monotonic() - started < 5
        for t in threads:
            t.join(timeout=60)
        assert len(outcomes) == 4
    assert restarts(kernel) == before


def test_a_call_ends_at_its_tasks_cost_limit(kernel, keys):
    with kernel.client("alice-app", key=keys["alice"]) as alice:
        started = time.monotonic()
        error = raised(alice.svc_call, "heavy", "nap", {"seconds": 30})
        assert error.errno == "ETIMEDOUT" and "cost_limit_s" in error.message
        assert time.monotonic() - started < 5
        listed = {t["name"]: t for s in alice.svc_list()["services"] if s["name"] == "heavy" for t in s["tasks"]}
        assert listed["nap"]["cost_limit_s"] == 1.0 and listed["spin"]["cost_limit_s"] == 60.0


def test_a_users_blocked_plain_tasks_keep_no_thread_from_others(kernel, keys, bob):
    """dave's 8 plain tasks block for an hour and end at their deadlines. Before, they held the 6
    threads every plain task of every user ran on, so bob's waited behind them until its deadline."""
    with kernel.client("dave-app", key=keys["dave"]) as dave:
        threads = [threading.Thread(target=lambda: errno_of(dave.svc_call, "misbehave", "hang_sync", {}, deadline=1))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        started = time.monotonic()
        assert bob.svc_call("misbehave", "add", {"a": 2, "b": 2}, deadline=20)["sum"] == 4
        assert time.monotonic() - started < 5
