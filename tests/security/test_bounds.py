"""Bounded memory per connection: what one client can make the kernel hold, and what it gets past it.

The bounds live in specs/protocol.py (MAX_FRAME_BYTES, MAX_WIRE_FRAME_BYTES, BULK_REPLY_BYTES,
UNREAD_BYTES_PER_*, SEND_HWM). Each test reaches one of them on a kernel of its own (no model, no services).
"""

from __future__ import annotations

import threading

import msgpack
import psutil
import pytest
import zmq

from llmos.kernel.transport import UnreadReplies
from llmos.specs.protocol import BULK_REPLY_BYTES, MAX_FRAME_BYTES
from llmos.userland.testing import KernelProcess, wait_until

VALUE_BYTES = 16 << 20    # the largest value memwrite takes
RSS_GROWTH_LIMIT = 600 << 20


@pytest.fixture(scope="module")
def bare_kernel(tmp_path_factory):
    k = KernelProcess(tmp_path_factory.mktemp("bounds"), env={"LLMOS_NO_SERVICES": "1"}).start()
    yield k
    k.stop()


@pytest.fixture
def raw(bare_kernel):
    """A DEALER that says hello itself and reads only when the test says so."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(bare_kernel.socket)
    yield sock
    sock.close(0)
    ctx.term()


def frame(req_id: int, call: str, **args) -> bytes:
    return msgpack.packb({"v": 1, "id": req_id, "call": call, "args": args}, use_bin_type=True)


def ask(sock, data: bytes) -> dict:
    sock.send(data)
    assert sock.poll(30_000), "no reply"
    return msgpack.unpackb(sock.recv())


def test_a_frame_over_max_frame_is_einval_and_its_client_keeps_its_process(raw):
    assert ask(raw, frame(1, "hello", name="oversized", caps=["mem"]))["ok"]
    reply = ask(raw, frame(2, "ping", payload=b"x" * MAX_FRAME_BYTES))
    assert reply["id"] == 2 and reply["error"]["errno"] == "EINVAL"
    assert str(MAX_FRAME_BYTES) in reply["error"]["message"]
    written = ask(raw, frame(3, "memwrite", region="after", key="k", value="still here"))
    assert written["ok"], written                              # a call that needs the process
    assert ask(raw, frame(4, "memread", region="after", key="k"))["result"]["value"] == "still here"


def test_a_multipart_request_is_einval_to_its_sender(raw):
    raw.send_multipart([b"envelope", frame(1, "ping")])
    assert raw.poll(10_000)
    parts = raw.recv_multipart()
    assert len(parts) == 1                                     # no envelope echoed back
    reply = msgpack.unpackb(parts[0])
    assert reply["error"]["errno"] == "EINVAL" and "one frame" in reply["error"]["message"]
    assert ask(raw, frame(2, "ping"))["ok"]


class FakeSockets:
    """What each OS socket still holds to send, as the test says."""

    def __init__(self):
        self.unsent: dict[int, int] = {}

    def __call__(self, fd: int) -> int:
        return self.unsent.get(fd, 0)


def test_a_large_reply_counts_as_unread_until_its_socket_has_sent_everything():
    sockets = FakeSockets()
    unread = UnreadReplies(per_connection=3 * BULK_REPLY_BYTES, per_principal=10 * BULK_REPLY_BYTES, unsent=sockets)
    sockets.unsent[5] = 1                                      # the peer does not read
    assert all(unread.charge("alice", b"c1", 5, BULK_REPLY_BYTES) for _ in range(3))
    assert not unread.charge("alice", b"c1", 5, BULK_REPLY_BYTES)
    sockets.unsent[5] = 0                                      # now it has
    assert unread.charge("alice", b"c1", 5, BULK_REPLY_BYTES)


def test_a_principal_s_connections_share_one_bound_and_others_have_their_own():
    sockets = FakeSockets()
    sockets.unsent.update({1: 1, 2: 1, 3: 1, 4: 1})             # nobody reads
    unread = UnreadReplies(per_connection=2 * BULK_REPLY_BYTES, per_principal=3 * BULK_REPLY_BYTES, unsent=sockets)
    assert unread.charge("alice", b"c1", 1, 2 * BULK_REPLY_BYTES)
    assert unread.charge("alice", b"c2", 2, BULK_REPLY_BYTES)
    assert not unread.charge("alice", b"c3", 3, BULK_REPLY_BYTES)   # a new connection does not help
    assert unread.charge("bob", b"c4", 4, 2 * BULK_REPLY_BYTES)


def test_small_replies_are_not_counted():
    sockets = FakeSockets()
    sockets.unsent[1] = 1
    unread = UnreadReplies(per_connection=BULK_REPLY_BYTES, per_principal=BULK_REPLY_BYTES, unsent=sockets)
    assert all(unread.charge("alice", b"c1", 1, BULK_REPLY_BYTES - 1) for _ in range(1000))


class PeakRss:
    """The kernel's resident set, sampled on a thread from start to stop; peak over the baseline."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.baseline = self.peak = self.proc.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._done.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def growth(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak - self.baseline


def kernel_idle(pid: int) -> bool:
    """True when the kernel used under 20 ms of CPU in the last 300 ms: it has done what it was asked."""
    proc = psutil.Process(pid)
    before = sum(proc.cpu_times()[:2])
    threading.Event().wait(0.3)
    return sum(proc.cpu_times()[:2]) - before < 0.02


def test_a_client_that_never_reads_cannot_grow_the_kernel_past_its_unread_bound(bare_kernel):
    """Finding 6: 200 memreads of a 16 MiB value, none read, grew the kernel by 2.5 GB."""
    with bare_kernel.client("filler", caps=["mem"]) as c:
        c.memwrite("big", "v", b"v" * VALUE_BYTES)
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 1)          # read nothing: replies stay queued in the kernel
        sock.setsockopt(zmq.RCVBUF, 4096)
        try:
            sock.connect(bare_kernel.socket)
            assert ask(sock, frame(1, "hello", name="filler", caps=["mem"]))["ok"]
            rss = PeakRss(bare_kernel.proc.pid)
            for i in range(2, 202):
                sock.send(frame(i, "memread", region="big", key="v"))
            assert wait_until(lambda: kernel_idle(bare_kernel.proc.pid), timeout=120)
            growth = rss.growth()
            errnos = []
            while len(errnos) < 200:
                assert sock.poll(30_000), f"{len(errnos)} replies of 200"
                reply = msgpack.unpackb(sock.recv())
                errnos.append("ok" if reply["ok"] else reply["error"]["errno"])
        finally:
            sock.close(0)
            ctx.term()
    assert growth < RSS_GROWTH_LIMIT, f"the kernel grew by {growth >> 20} MiB; {errnos.count('ok')} replies were ok"
    assert set(errnos) == {"ok", "EAGAIN"}     # past the bound: EAGAIN, not one more queued 16 MiB
