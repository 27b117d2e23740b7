"""Replies go only to the connection that sent the request, whatever routing id a peer claims.

ZeroMQ's ROUTER routes by routing id alone and lets a peer choose its own (ZMQ_ROUTING_ID). The
kernel serves only ids libzmq assigned (five bytes, the first zero), binds each to the connection
it came in on, and never routes to the id of a connection that has gone.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import time

import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from harness import KernelProcess, wait_until
from llmos.kernel.transport import Transport
from llmos.userland import testing
from llmos.specs.protocol import pack, unpack


def curve_dealer(ctx: zmq.Context, kernel: KernelProcess, key_file: str, routing_id: bytes | None = None):
    """A user's bare DEALER on the kernel's tcp socket, optionally with a routing id of its choosing."""
    return testing.curve_dealer(ctx, kernel.socket, key_file, routing_id)


def request(req_id: int, call: str, **args) -> bytes:
    return pack({"v": 1, "id": req_id, "call": call, "args": args})


def unseeded_zmq_ids(count: int) -> list[int]:
    """The first values libzmq numbers a ROUTER's peers from when nobody seeded libc's rand()."""
    libc = ctypes.CDLL(None)
    libc.srand(1)
    values = []
    for _ in range(count):
        low, high = libc.rand(), libc.rand()
        values.append((low | (high << 31)) & 0xFFFFFFFF)
    libc.srand(secrets.randbits(31))
    return values


@pytest.fixture
def users(tcp_kernel, make_user):
    return make_user()[1], make_user()[1]


def test_claiming_the_routing_ids_the_kernel_would_give_next_does_not_crash_it(tmp_path):
    """An authenticated peer that takes the id libzmq gives the next peer makes libzmq abort (an
    assertion); unseeded, those ids are the same in every kernel."""
    k = KernelProcess(tmp_path, tcp=True, env={"LLMOS_NO_SERVICES": "1"}).start()
    ctx = zmq.Context()
    try:
        with k.client("op", caps=["admin"]) as op:
            mallory, victim = op.user_add("mallory")["key_file"], op.user_add("victim")["key_file"]
        claims = [curve_dealer(ctx, k, mallory, b"\x00" + ((value + offset) & 0xFFFFFFFF).to_bytes(4, "big"))
                  for value in unseeded_zmq_ids(12) for offset in range(2)]
        for sock in claims:
            sock.send(request(1, "ping"))
        assert wait_until(lambda: all(sock.poll(0) for sock in claims), timeout=10) or k.proc.poll() is not None
        with k.client("victim", key=victim) as c:
            assert c.ping()["pong"] is True
        assert k.proc.poll() is None, "the kernel died"
    finally:
        ctx.destroy(linger=0)       # closes the claims too
        k.stop()


def test_a_connection_whose_peer_chose_its_routing_id_is_cut_unanswered(tcp_kernel, users):
    ctx = zmq.Context()
    chooser = curve_dealer(ctx, tcp_kernel, users[0], b"my-own-id")
    events = chooser.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        chooser.send(request(1, "hello", name="chooser"))
        assert events.poll(5000), "the kernel kept a connection with a routing id its peer chose"
        assert recv_monitor_message(events)["event"] == zmq.EVENT_DISCONNECTED
        assert not chooser.poll(0)
        with tcp_kernel.client("bystander", key=users[1]) as c:
            assert c.ping()["pong"] is True
    finally:
        chooser.disable_monitor()
        events.close(0)
        chooser.close(0)
        ctx.term()


def test_a_connection_that_takes_a_departed_ones_routing_id_gets_none_of_its_frames(tcp_kernel, operator, users):
    """The victim's process outlived its connection until the kernel's next send failed; a peer that
    took its id in that window got its frames (heartbeats, replies in flight) and kept it alive."""
    victim_id = b"\x00" + os.urandom(4)      # what libzmq would have given it
    ctx = zmq.Context()
    victim = curve_dealer(ctx, tcp_kernel, users[0], victim_id)
    try:
        victim.send(request(1, "hello", name="victim"))
        assert victim.poll(10_000)
        pid = unpack(victim.recv())["result"]["pid"]
        victim.close(0)
        time.sleep(0.05)
        thief = curve_dealer(ctx, tcp_kernel, users[1], victim_id)
        try:
            got = thief.poll(3000) and unpack(thief.recv())
            assert not got, f"the thief got the victim's frame {got}"
            assert wait_until(lambda: pid not in [p["pid"] for p in operator.ps()], timeout=5)
        finally:
            thief.close(0)
    finally:
        victim.close(0)
        ctx.term()


def test_a_reply_is_never_routed_to_another_connection_that_took_its_routing_id(tmp_path):
    folder = tmp_path / "sock"
    folder.mkdir(mode=0o700)
    url = f"ipc://{folder}/kernel.sock"
    routing_id = b"\x00" + os.urandom(4)

    async def scenario():
        actx, ctx, gone = zmq.asyncio.Context(), zmq.Context(), []
        transport = Transport(actx, url, None, lambda connection, why: gone.append(connection))
        victim = ctx.socket(zmq.DEALER)
        thief = ctx.socket(zmq.DEALER)
        try:
            for sock in (victim, thief):
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.ROUTING_ID, routing_id)
            victim.connect(url)
            victim.send(b"a request")
            routing, frames, _, _ = await asyncio.wait_for(transport.recv(), 5)
            assert routing == [routing_id] and frames == [b"a request"]
            victim.close(0)
            await asyncio.sleep(0.2)
            thief.connect(url)          # libzmq gives it the id: the victim's connection is gone
            await asyncio.sleep(0.3)
            delivered = transport.send(routing, b"the victim's reply")
            await asyncio.sleep(0.05)       # the reap is scheduled, not run inside the send
            stolen = thief.poll(500) and thief.recv()
            return delivered, stolen, gone
        finally:
            thief.close(0)
            victim.close(0)
            transport.close()
            ctx.term()
            actx.term()

    delivered, stolen, gone = asyncio.run(scenario())
    assert not stolen, "the reply went to the connection that took the id"
    assert not delivered and gone == [bytes([0]) + routing_id]
