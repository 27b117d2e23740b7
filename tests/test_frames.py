"""Bad frames get EINVAL or ENOSYS, never crash the kernel, and never disturb another client."""

import threading

import msgpack
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from harness import dealer
from llmos.specs.protocol import MAX_WIRE_FRAME_BYTES


@pytest.fixture
def raw(kernel):
    with dealer(kernel.socket) as sock:
        yield sock


def ask(sock, frame: bytes) -> dict:
    sock.send(frame)
    assert sock.poll(10_000), "the kernel did not answer"
    return msgpack.unpackb(sock.recv())


def req(**fields) -> bytes:
    base = {"v": 1, "id": 1, "call": "ping", "args": {}}
    base.update(fields)
    return msgpack.packb({k: v for k, v in base.items() if v is not ...})


BAD_FRAMES = {
    "garbage bytes": b"\x00\xffnot msgpack at all\xc1",
    "empty frame": b"",
    "truncated msgpack": msgpack.packb({"v": 1, "id": 1, "call": "ping"})[:-3],
    "not a map": msgpack.packb([1, "ping", {}]),
    "integer map keys": msgpack.packb({1: 2}),
    "missing id": req(id=...),
    "negative id": req(id=-5),
    "string id": req(id="one"),
    "bool id": req(id=True),
    "missing version": req(v=...),
    "future version": req(v=99),
    "call not a string": req(call=42),
    "args not a map": req(args=[1, 2]),
    "unknown argument": req(args={"nope": 1}),
    "wrong argument type": req(call="kill", args={"pid": "one"}),
    "nan float": req(call="infer", args={"prompt": "x", "temperature": float("nan")}),
    "deeply nested": msgpack.packb({"v": 1, "id": 1, "call": "ping", "args": {"payload": [[[[[[[[[[[]]]]]]]]]]]}}),
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_a_bad_frame_is_answered_einval(raw, name):
    reply = ask(raw, BAD_FRAMES[name])
    if name == "deeply nested":
        assert reply["ok"]   # odd but valid
        return
    assert reply["ok"] is False and reply["error"]["errno"] == "EINVAL", reply
    assert reply["error"]["message"]


def test_an_unknown_syscall_is_enosys(raw):
    reply = ask(raw, req(call="reboot_the_world"))
    assert reply["error"]["errno"] == "ENOSYS" and reply["id"] == 1


def next_event(monitor) -> zmq.Event:
    assert monitor.poll(10_000), "no connection event"
    return recv_monitor_message(monitor)["event"]


def test_a_frame_over_the_wire_limit_is_never_answered_and_costs_its_sender_the_connection(raw):
    # Over max_frame but under the wire limit is EINVAL on a kept connection: tests/security/test_bounds.py.
    assert ask(raw, req(id=1))["id"] == 1             # connected, and answered
    monitor = raw.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
    try:
        raw.send(msgpack.packb({"v": 1, "id": 2, "call": "ping", "args": {"payload": b"x" * MAX_WIRE_FRAME_BYTES}}))
        assert next_event(monitor) == zmq.EVENT_DISCONNECTED   # ZMQ_MAXMSGSIZE: the kernel never sees it
        assert next_event(monitor) == zmq.EVENT_CONNECTED      # the client's socket reconnects by itself
    finally:
        raw.disable_monitor()
        monitor.close(0)
    assert ask(raw, req(id=3))["id"] == 3              # the same client is served; id 2 got nothing


def test_another_client_keeps_being_served_during_a_barrage(kernel, raw):
    results = []

    def good_client():
        with kernel.client("bystander") as c:
            for i in range(50):
                results.append(c.ping(i)["payload"] == i)

    t = threading.Thread(target=good_client)
    t.start()
    for _ in range(20):
        for frame in BAD_FRAMES.values():
            raw.send(frame)
    t.join(60)
    for _ in range(20 * len(BAD_FRAMES)):
        assert raw.poll(10_000), "a bad frame went unanswered"
        raw.recv()
    assert results == [True] * 50
