"""The client never hangs: a vanished kernel ends every call in flight, and a request the kernel
could never read fails before it is sent.

A call is held in flight by stopping the kernel's driver (SIGSTOP): the request cannot finish, so
only the kernel's death (or its deadline) can end it. Each call runs on a thread joined with a
timeout: the test asserts that it ended at all, and how, never how fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading

import pytest
import zmq

from llmos.specs.protocol import pack, unpack
from llmos.userland import AsyncClient, Client, KernelUnavailable, LLMOSError
from llmos.userland.testing import wait_until

HANG = 30.0     # a call still running after this long counts as hung


class Call(threading.Thread):
    """fn() on a thread of its own, started at once; outcome() is what it returned or raised."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn = fn
        self.out: BaseException | object = None
        self.start()

    def run(self) -> None:
        try:
            self.out = self.fn()
        except BaseException as exc:
            self.out = exc

    def outcome(self) -> BaseException | object:
        self.join(HANG)
        assert not self.is_alive(), "the call is still waiting"
        return self.out


def outcome(fn) -> BaseException | object:
    """What fn() returned or raised; fails the test if it is still running after HANG."""
    return Call(fn).outcome()


@contextlib.contextmanager
def stopped_driver(client):
    """The kernel's driver frozen (SIGSTOP): requests sent now stay in flight. Killed after, kernel gone or not."""
    driver = client.devices()[0]["os_pid"]
    os.kill(driver, signal.SIGSTOP)
    try:
        yield driver
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(driver, signal.SIGCONT)


def kill_if_left(driver: int) -> None:
    """A stopped driver whose kernel died is usually gone already: its process group, orphaned with a
    stopped member, got SIGHUP from the system."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(driver, signal.SIGKILL)


def in_flight(watcher, pid: int, n: int) -> bool:
    return any(p["pid"] == pid and p["requests"] >= n for p in watcher.ps())


def test_calls_in_flight_end_with_kernel_unavailable_naming_the_socket_when_the_kernel_is_killed(fresh_kernel):
    k = fresh_kernel()
    c = k.client("victim")
    watcher = k.client("watcher")
    with stopped_driver(c) as driver:
        streamed = Call(lambda: list(c.stream(prompt="Once upon a time", max_tokens=5000)))
        plain = Call(lambda: c.infer(prompt="hi", max_tokens=5000))
        assert wait_until(lambda: in_flight(watcher, c.pid, 2))
        k.proc.kill()
        ended = [streamed.outcome(), plain.outcome()]
        kill_if_left(driver)
    assert all(isinstance(e, KernelUnavailable) and k.socket in str(e) for e in ended), ended
    assert isinstance(outcome(c.ping), KernelUnavailable)      # and a later call fails at once
    c.close()


async def test_async_calls_in_flight_end_with_kernel_unavailable_when_the_kernel_is_killed(fresh_kernel):
    k = fresh_kernel()
    with k.client("watcher") as watcher, stopped_driver(watcher) as driver:
        async with AsyncClient(socket=k.socket, name="async-victim") as c:
            stream = await c.stream(prompt="Once upon a time", max_tokens=5000)
            plain = asyncio.ensure_future(c.infer(prompt="hi", max_tokens=5000))
            assert await asyncio.to_thread(wait_until, lambda: in_flight(watcher, c.pid, 2))
            k.proc.kill()

            async def drain():
                return [d async for d in stream]

            ended = await asyncio.wait_for(asyncio.gather(plain, drain(), return_exceptions=True), HANG)
        kill_if_left(driver)
    assert all(isinstance(e, KernelUnavailable) and k.socket in str(e) for e in ended), ended


def test_a_call_waiting_on_a_live_but_busy_kernel_is_ended_by_the_kernel_not_by_the_watchdog(kernel):
    """The kernel's heartbeats keep a quiet wait alive well past the watchdog's silence limit."""
    with kernel.client("patient") as c, stopped_driver(c):
        deadline = c._async.silence_limit + 1     # past the limit, but before the kernel's own watchdog gives up on the driver
        error = outcome(lambda: c.infer(prompt="hi", max_tokens=2, deadline=deadline))
    assert isinstance(error, LLMOSError) and error.errno == "ETIMEDOUT", error


def test_a_request_over_the_frame_limit_fails_before_it_is_sent_naming_the_limit(kernel):
    with kernel.client("big-writer") as c:
        limit = c.info["max_frame"]
        error = outcome(lambda: c.memwrite("big", "k", b"x" * (limit + 1)))
        assert isinstance(error, LLMOSError) and error.errno == "EINVAL", error
        assert str(limit) in error.message and "nothing was sent" in error.message
        assert c.ping("still here")["payload"] == "still here"


def test_a_string_holding_undecodable_bytes_fails_with_einval_and_the_connection_stays_usable(kernel):
    with kernel.client("surrogates") as c:
        with pytest.raises(LLMOSError) as info:
            c.infer(prompt="caf\udce9", max_tokens=1)
        assert info.value.errno == "EINVAL" and "not valid UTF-8" in info.value.message
        assert c.ping()["pong"] is True
        assert c._async._pending == {}      # nothing left waiting whose error nobody will read


class BusyKernel(threading.Thread):
    """A stand-in kernel that sends no heartbeat (it counts its client as busy) and answers only hello,
    ping and exit, until it has answered `pings` pings: then it answers the one infer it holds."""

    def __init__(self, socket: str, pings: int):
        super().__init__(daemon=True)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.bind(socket)
        self.pings = pings
        self.stopping = threading.Event()
        self.start()

    def run(self) -> None:
        held = None
        while not self.stopping.is_set():
            if not self.sock.poll(50):
                continue
            peer, frame = self.sock.recv_multipart()
            msg = unpack(frame)
            if msg["call"] == "hello":
                self.reply(peer, msg, {"pid": 1, "name": "busy", "caps": [], "heartbeat_s": 1.0})
            elif msg["call"] == "ping":
                self.pings -= 1
                self.reply(peer, msg, {"pong": True})
            elif msg["call"] == "exit":
                self.reply(peer, msg, {"pid": 1})
            else:
                held = (peer, msg)
            if held is not None and self.pings <= 0:
                self.reply(*held, {"text": "at last"})
                held = None

    def reply(self, peer: bytes, msg: dict, result: dict) -> None:
        self.sock.send_multipart([peer, pack({"id": msg["id"], "ok": True, "result": result})])

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        self.sock.close(0)
        self.ctx.term()


def test_a_kernel_that_sends_no_heartbeat_but_answers_pings_keeps_a_long_call_alive(tmp_path):
    """The client pings a quiet kernel before it gives up on it: a kernel that answers is alive."""
    kernel = BusyKernel(f"ipc://{tmp_path}/busy.sock", pings=3)     # 3 pings take longer than the silence limit
    try:
        with Client(socket=f"ipc://{tmp_path}/busy.sock", name="patient") as c:
            assert outcome(lambda: c.infer(prompt="hi")) == {"text": "at last"}
    finally:
        kernel.stop()


def test_a_finished_stream_left_unread_is_no_longer_waited_on_and_still_reads_whole(kernel):
    """Nothing keeps the watchdog watching (and pinging) for a stream whose last frame has come."""
    with kernel.client("unread") as c:
        stream = c.stream(prompt="hi", max_tokens=2)
        assert wait_until(lambda: not c._async._pending)
        text = "".join(stream)
        assert stream.result["text"] == text
