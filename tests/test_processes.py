"""Processes: reaping the dead, shutdown, one kernel per socket, memory across restarts, concurrency."""

import os
import select
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import KernelProcess, wait_until
from llmos.userland import LLMOSError


def test_a_client_killed_with_sigkill_is_reaped_and_its_holdings_freed(kernel, tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from llmos.userland import Client
        c = Client({kernel.socket!r}, name="doomed")
        c.alloc_gpu(5 << 20, device="cpu")
        s = c.stream(prompt="forever", max_tokens=400, temperature=1.0, seed=1)
        it = iter(s); next(it)
        print("ready", flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert select.select([child.stdout], [], [], 60)[0], "the doomed client never began its stream"
        assert child.stdout.readline().strip() == "ready"
        with kernel.client("watcher") as c:
            doomed = [p for p in c.ps() if p["name"] == "doomed"]
            assert doomed and doomed[0]["reserved_bytes"] == 5 << 20
            reserved_before = c.devices()[0]["reserved_bytes"]
            child.send_signal(signal.SIGKILL)
            child.wait()
            assert wait_until(lambda: not [p for p in c.ps() if p["name"] == "doomed"], timeout=10)
            assert c.devices()[0]["reserved_bytes"] == reserved_before - (5 << 20)
            assert wait_until(lambda: c.devices()[0]["running"] == 0, timeout=5)
    finally:
        child.kill()
        child.wait()


def test_concurrent_clients_all_get_their_own_correct_answers(kernel):
    prompts = [f"Question {i}: what is {i} plus {i}?" for i in range(8)]
    with kernel.client("solo") as c:
        expected = [c.infer(prompt=p, max_tokens=10, temperature=0.8, seed=i)["text"] for i, p in enumerate(prompts)]

    def one(i):
        with kernel.client(f"worker-{i}") as c:
            return c.infer(prompt=prompts[i], max_tokens=10, temperature=0.8, seed=i)["text"]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(8))) == expected


def test_shutdown_ends_in_flight_requests_with_ecanceled_and_removes_the_socket(fresh_kernel):
    k = fresh_kernel()
    with k.client("waiting") as c:
        stream = c.stream(prompt="long", max_tokens=400, temperature=1.0, seed=3)
        it = iter(stream)
        next(it)
        k.proc.send_signal(signal.SIGTERM)
        with pytest.raises(LLMOSError) as info:
            for _ in it:
                pass
        assert info.value.errno == "ECANCELED"
    assert k.proc.wait(30) == 0
    assert not os.path.exists(k.socket[len("ipc://"):])


def test_a_second_kernel_on_the_same_socket_refuses_to_boot(kernel, tmp_path):
    out = subprocess.run([sys.executable, "-m", "llmos.kernel", "--socket", kernel.socket, "--no-model",
                          "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "already serving" in out.stderr
    with kernel.client("still-fine") as c:
        assert c.ping()["pong"]


def test_memory_survives_a_kernel_restart(tmp_path):
    state = tmp_path / "state"
    with KernelProcess(tmp_path / "a", state_dir=state) as k:
        with k.client("notes-app") as c:
            c.memwrite("notes", "greeting", "hello, world")
            c.memwrite("notes", "blob", b"\x00\x01\x02")
    with KernelProcess(tmp_path / "b", state_dir=state) as k:
        with k.client("notes-app") as c:
            assert c.memread("notes", "greeting")["value"] == "hello, world"
            assert c.memread("notes", "blob")["value"] == b"\x00\x01\x02"
            assert c.memread("notes")["keys"] == ["blob", "greeting"]


def test_memory_belongs_to_the_principal_not_the_connection(kernel):
    # Other principals' regions are ENOENT: tests/security/test_isolation.py, on a tcp kernel.
    with kernel.client("owner-app") as c:
        c.memwrite("private", "k", "v1")
        assert c.memwrite("private", "k", "v2")["version"] == 2
    with kernel.client("owner-app") as c:
        assert c.memread("private", "k")["value"] == "v2"
    with kernel.client("another-app") as other:      # the same principal (the operator's socket)
        assert other.memread("private", "k")["value"] == "v2"


def test_memdel_removes_keys_and_regions(kernel):
    with kernel.client("deleter") as c:
        c.memwrite("tmp-region", "a", "1")
        c.memwrite("tmp-region", "b", "2")
        assert c.memdel("tmp-region", "a")["deleted"] == 1
        assert c.memread("tmp-region", prefix="")["keys"] == ["b"]
        assert c.memdel("tmp-region")["deleted"] == 1
        for key in ("b", None):
            with pytest.raises(LLMOSError) as info:
                c.memread("tmp-region", key)
            assert info.value.errno == "ENOENT"


def test_memwrite_over_the_value_limit_is_enomem(kernel):
    with kernel.client("big-writer") as c:
        with pytest.raises(LLMOSError) as info:
            c.memwrite("big", "k", b"x" * (17 << 20))
        assert info.value.errno == "ENOMEM"


def test_a_crashed_driver_is_restarted_and_the_kernel_keeps_serving(fresh_kernel):
    k = fresh_kernel()
    with k.client("survivor") as c:
        crashed = c.devices()[0]["os_pid"]
        os.kill(crashed, signal.SIGKILL)
        assert c.ping()["pong"]

        def restarted() -> bool:
            (cpu,) = c.devices()
            return cpu["driver"] == "up" and cpu["os_pid"] not in (None, crashed)

        assert wait_until(restarted, timeout=60)
        assert wait_until(lambda: all(m["state"] == "ready" for m in c.models()["loaded"]), timeout=60)
        assert c.infer(prompt="back again", max_tokens=3)["usage"]["completion_tokens"] >= 1
