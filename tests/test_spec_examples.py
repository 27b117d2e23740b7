"""specs/ABI.md, run: its example client and the frames it describes, against a real kernel."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
import zmq

from harness import dealer
from llmos.specs import SYSCALLS

ABI = (Path(__file__).resolve().parents[1] / "specs" / "ABI.md").read_text()


def example_client() -> str:
    section = ABI[ABI.index("## Example: a raw client in Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_abi_example_client_runs_as_written(kernel):
    code = example_client().replace('"ipc:///tmp/llmos-0/kernel.sock"', repr(kernel.socket))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("pid ")
    assert "'finish_reason'" in out.stdout           # the final reply's result, printed


@pytest.fixture
def raw(kernel):
    with dealer(kernel.socket) as sock:
        sock.setsockopt(zmq.RCVTIMEO, 30_000)
        yield lambda frame: ask(sock, frame)


def ask(sock, frame: dict) -> dict:
    """Send a frame; the first reply to it (one with its id, or with no id: a frame the kernel
    could not read), skipping notices and what earlier requests still stream."""
    sock.send(msgpack.packb(frame))
    while True:
        reply = msgpack.unpackb(sock.recv())
        if reply["id"] in (frame.get("id"), None):
            return reply


@pytest.mark.parametrize("v", [True, 1.0, 2, "1"])
def test_v_must_be_the_integer_1(raw, v):
    reply = raw({"v": v, "id": 5, "call": "ping", "args": {}})
    assert reply["ok"] is False and reply["error"]["errno"] == "EINVAL"


def test_ids_run_from_1_to_2_to_the_63_minus_1(raw):
    assert raw({"v": 1, "id": 2**63 - 1, "call": "ping", "args": {}})["ok"] is True
    reply = raw({"v": 1, "id": 2**63, "call": "ping", "args": {}})
    assert reply["error"]["errno"] == "EINVAL" and reply["id"] is None


def test_exactly_the_calls_marked_before_hello_work_before_hello(raw):
    marked = sorted(name for name, s in SYSCALLS.items() if s.before_hello)
    assert marked == ["hello", "ping", "sysinfo"]
    assert "(`hello`, `ping`, `sysinfo`)" in ABI
    for i, name in enumerate(n for n in SYSCALLS if n not in marked and SYSCALLS[n].cap == ""):
        reply = raw({"v": 1, "id": 100 + i, "call": name, "args": {}})
        assert reply["error"]["errno"] in ("EPERM", "EINVAL"), name
    assert raw({"v": 1, "id": 9, "call": "sysinfo"})["ok"] is True


def test_stream_goes_inside_args(raw):
    assert raw({"v": 1, "id": 1, "call": "hello", "args": {"name": "spec"}})["ok"]
    first = raw({"v": 1, "id": 2, "call": "infer", "args": {"prompt": "Hi", "max_tokens": 3, "stream": True}})
    assert first.get("more") is True or first["ok"] is True
    outside = raw({"v": 1, "id": 3, "call": "infer", "stream": True, "args": {"prompt": "Hi", "max_tokens": 2}})
    assert outside["ok"] is True and "more" not in outside     # a stream key outside args is not one
