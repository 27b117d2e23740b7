"""Replicas: one model loaded on several devices (here two CPU drivers, cpu:0 and cpu:1), each new
request sent to the copy that can start it soonest, and a generation whose driver dies finishing
on the other copy with the text an undisturbed run gives."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from harness import errno_of, wait_until

DEVICES = ["cpu:0", "cpu:1"]


@pytest.fixture(scope="module")
def two_cpus(tmp_path_factory, tiny_llama):
    from llmos.userland.testing import KernelProcess

    k = KernelProcess(tmp_path_factory.mktemp("replicas"), model=tiny_llama, env={"LLMOS_NO_SERVICES": "1"},
                      extra=["--device", ",".join(DEVICES), "--replicas", "2", "--dtype", "float32"]).start()
    yield k
    k.stop()


def copies(c, name) -> dict[str, str]:
    return {m["device"]: m["state"] for m in c.models()["loaded"] if m["name"] == name}


def test_the_boot_model_is_ready_on_both_devices(two_cpus, tiny_llama):
    with two_cpus.client() as c:
        assert wait_until(lambda: copies(c, tiny_llama) == {"cpu:0": "ready", "cpu:1": "ready"}, 60)
        assert sorted(d["name"] for d in c.devices()) == DEVICES


def test_requests_of_many_processes_are_spread_over_both_replicas(two_cpus, tiny_llama):
    results, busy = [], {d: 0 for d in DEVICES}

    def program(i: int) -> None:
        with two_cpus.client(f"p{i}") as c:
            for _ in range(4):
                results.append(c.infer(prompt=f"program {i} says", max_tokens=48, temperature=0))

    with two_cpus.client("watcher") as watcher:
        threads = [threading.Thread(target=program, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()

        def both_busy() -> bool:
            for d in watcher.devices():
                busy[d["name"]] = max(busy[d["name"]], d["running"] + d["queued"])
            return all(busy.values())

        spread = wait_until(both_busy, 60)
        for t in threads:
            t.join(120)
    assert spread, busy
    assert len(results) == 32 and all(r["usage"]["completion_tokens"] >= 1 for r in results)


def test_a_stream_whose_replica_dies_finishes_on_the_other_with_the_same_text(two_cpus, tiny_llama):
    prompt = "Once upon a time, in a land far away, there lived"
    with two_cpus.client() as c:
        undisturbed = c.infer(prompt=prompt, max_tokens=80, temperature=0)["text"]
        stream = c.stream(prompt=prompt, max_tokens=80, temperature=0)
        chunks = iter(stream)
        text = next(chunks)
        busy = next(d for d in c.devices() if d["running"])
        os.kill(busy["os_pid"], signal.SIGKILL)
        text += "".join(chunks)
        assert text == undisturbed
        moved = [e for e in two_cpus.events("request.requeued") if e.get("died") == busy["name"]]
        assert moved and moved[-1]["device"] != busy["name"], "a ready replica elsewhere takes it at once"
        assert wait_until(lambda: set(copies(c, tiny_llama).values()) == {"ready"}, 90)


def test_replicas_are_the_operators_call_and_bounded_by_the_devices(two_cpus, tiny_llama):
    with two_cpus.client("no-admin", caps=["load", "models", "infer"]) as user:
        assert errno_of(user.load_model, tiny_llama, replicas=2) == "EPERM"
    with two_cpus.client("operator", caps=["admin", "load", "models"]) as op:
        assert errno_of(op.load_model, tiny_llama, device="cpu:0", replicas=2) == "EINVAL"
        assert errno_of(op.load_model, tiny_llama, replicas=3) == "EINVAL"
        again = op.load_model(tiny_llama, replicas=2)
    assert again["already_loaded"] and sorted(again["replicas"]) == DEVICES
