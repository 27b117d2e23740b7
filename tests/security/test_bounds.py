"""Bounded memory per connection: what one client can make the kernel hold, and what it gets past it.

The bounds live in specs/protocol.py (MAX_FRAME_BYTES, MAX_WIRE_FRAME_BYTES, UNREAD_BYTES_PER_*,
SEND_HWM, RECV_HWM, INBOUND_HELD_*). Each test reaches one of them on a kernel of its own (no model, no services).
"""

from __future__ import annotations

import asyncio
import select
import socket
import struct
import threading
import time

import msgpack
import psutil
import pytest
import zmq
import zmq.asyncio

from harness import dealer
from llmos.kernel.bounds import InboundGuard, UnreadReplies, tcp_bytes_received
from llmos.kernel.peers import Peers
from llmos.kernel.transport import Transport
from llmos.specs.protocol import (INBOUND_HELD_PER_CONNECTION, INBOUND_HELD_PER_PRINCIPAL, MAX_FRAME_BYTES,
                                  RECV_HELD_PER_CONNECTION, UNREAD_BYTES_PER_PRINCIPAL)
from llmos.userland.errors import ERRORS
from llmos.userland.testing import KernelProcess, curve_dealer, wait_until

MiB = 1 << 20
BULK_REPLY_BYTES = 4 << 10    # a reply's size, as the unread bounds' tests count
VALUE_BYTES = 16 * MiB    # the largest value memwrite takes
RSS_GROWTH_LIMIT = 600 << 20


@pytest.fixture(scope="module")
def bare_kernel(tmp_path_factory):
    k = KernelProcess(tmp_path_factory.mktemp("bounds"), env={"LLMOS_NO_SERVICES": "1"}).start()
    yield k
    k.stop()


@pytest.fixture
def raw(bare_kernel):
    """A DEALER that says hello itself and reads only when the test says so."""
    with dealer(bare_kernel.socket) as sock:
        yield sock


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


def test_small_frames_count_towards_their_principal_s_bound_however_many_connections_it_opens():
    """Finding 9: frames under 4 KiB were bounded only per connection (SEND_HWM of them), so a principal
    with N connections that never read made the kernel hold N times that."""
    sockets = FakeSockets()
    sockets.unsent.update({fd: 1 for fd in range(1, 9)})          # nobody reads
    unread = UnreadReplies(per_connection=64 * BULK_REPLY_BYTES, per_principal=16 * BULK_REPLY_BYTES, unsent=sockets)
    accepted = sum(unread.charge("alice", b"c%d" % fd, fd, BULK_REPLY_BYTES - 1) for fd in range(1, 9) for _ in range(10))
    assert accepted * (BULK_REPLY_BYTES - 1) <= 16 * BULK_REPLY_BYTES
    assert unread.held("alice") <= 16 * BULK_REPLY_BYTES
    assert unread.charge("bob", b"c9", 9, 8 * BULK_REPLY_BYTES)       # another principal has its own


def test_past_its_principal_s_bound_the_connections_holding_most_unread_are_cut_first():
    sockets = FakeSockets()
    sockets.unsent.update({1: 1, 2: 1})                               # c1 and c2 do not read; c3 does
    cut = []
    unread = UnreadReplies(per_connection=8 * BULK_REPLY_BYTES, per_principal=6 * BULK_REPLY_BYTES, unsent=sockets)

    def charge(connection, fd, nbytes):
        return unread.charge("alice", connection, fd, nbytes, cut=lambda conn, why: cut.append(conn))

    assert charge(b"c1", 1, 4 * BULK_REPLY_BYTES) and charge(b"c2", 2, 2 * BULK_REPLY_BYTES)
    assert charge(b"c3", 3, 100)                      # over the bound: c1, holding most, goes
    assert cut == [b"c1"] and unread.held("alice") == 2 * BULK_REPLY_BYTES + 100
    assert not charge(b"c2", 2, 7 * BULK_REPLY_BYTES)   # alone past the bound of one connection: c2 itself
    assert cut == [b"c1", b"c2"] and unread.held("alice") == 0      # c3 has read its 100 bytes


def test_a_principal_s_connections_that_never_read_are_cut_once_they_hold_its_bound(tmp_path):
    """Real sockets: six connections of one principal that read nothing and one that reads, each sent
    small frames; what the six may hold stays under the principal's bound and the reader gets all of its."""
    bound, frame = 1 << 20, b"r" * 3000
    folder = tmp_path / "sock"
    folder.mkdir(mode=0o700)
    url = f"ipc://{folder}/kernel.sock"

    async def scenario():
        actx, ctx, cut = zmq.asyncio.Context(), zmq.Context(), []
        transport = Transport(actx, url, None, lambda connection, why: cut.append(why),
                              unread=UnreadReplies(per_principal=bound))
        socks = [ctx.socket(zmq.DEALER) for _ in range(7)]
        try:
            routing = {}
            for i, sock in enumerate(socks):
                sock.setsockopt(zmq.LINGER, 0)
                if i < 6:                                   # sleepers: take almost nothing off the socket
                    sock.setsockopt(zmq.RCVHWM, 1)
                    sock.setsockopt(zmq.RCVBUF, 4096)
                sock.connect(url)
                sock.send(b"%d" % i)
                envelope, frames, _, _ = await asyncio.wait_for(transport.recv(), 5)
                routing[int(frames[0])] = envelope
            for burst in (50, 200):             # 750 kB each, 4.5 MB in all; the first burst fills their sockets
                for i in range(6):
                    for _ in range(burst):
                        transport.send(routing[i], frame)
                await asyncio.sleep(0.2)
            held, cut_by_then = transport.peers.unread.held("operator"), list(cut)
            sent = sum(transport.send(routing[6], frame) for _ in range(200))
            received = 0
            while socks[6].poll(2000) and received < 200:
                received += socks[6].recv() == frame
            return held, cut_by_then, cut, sent, received
        finally:
            for sock in socks:
                sock.close(0)
            transport.close()
            ctx.term()
            actx.term()

    held, cut_by_then, cut, sent, received = asyncio.run(scenario())
    assert 0 < held <= bound                            # what the sleepers kept stays under the bound
    assert 4 <= len(cut_by_then) < 6                    # only as many cut as the bound needed
    # The reader's frames count too until it has read them: on a busy machine the last sleeper may go then.
    assert all("not reading" in why for why in cut)
    assert sent == received == 200


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


# --- what tcp peers make ZeroMQ hold before it delivers anything --------------------------------

def zmtp_connect(port: int) -> socket.socket:
    """A raw tcp connection that has done ZMTP 3.0's NULL handshake as a DEALER."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32)
    s.recv(64)
    body = b"\x05READY\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    s.sendall(b"\x04" + bytes([len(body)]) + body)
    return s


def send_until_cut(s: socket.socket, data: bytes, times: int) -> int:
    """How many times data went out before the kernel side cut the connection."""
    for i in range(times):
        try:
            s.sendall(data)
        except OSError:
            return i
    return times


def guarded_router(scenario, **bounds):
    """Run scenario(port, router) beside a tcp ROUTER watched by an InboundGuard (its connections
    followed by a Peers) whose reader tells it what was delivered."""

    async def main():
        ctx = zmq.asyncio.Context()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        guard = InboundGuard(**bounds)
        peers = Peers(router, inbound=guard, period_s=0.02)

        async def read():
            while True:
                parts = await router.recv_multipart(copy=False)
                peers.follow()
                guard.delivered(parts[-1].get(zmq.SRCFD), parts[1:])
                await router.send_multipart([parts[0].bytes, b"got %d" % len(parts[-1])])

        tasks = [asyncio.create_task(peers.run()), asyncio.create_task(read())]
        try:
            return await asyncio.to_thread(scenario, port)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            router.close(0)
            ctx.term()

    return asyncio.run(main())


def test_a_tcp_peer_holding_an_unfinished_multipart_message_past_its_bound_is_cut():
    part = b"\x03" + struct.pack(">Q", MiB) + b"p" * MiB        # long frame, MORE: never the last part

    def attack(port):
        with zmtp_connect(port) as s:
            return send_until_cut(s, part, 500)

    assert guarded_router(attack, per_connection=8 * MiB, total=64 * MiB) < 500


def test_a_tcp_peer_whose_messages_are_delivered_is_not_cut_however_much_it_sends():
    def bystander(port):
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{port}")
        try:
            for _ in range(6):
                sock.send(b"b" * (4 * MiB))
                assert sock.poll(10_000), "cut, or not answered"
                assert sock.recv() == b"got %d" % (4 * MiB)
        finally:
            sock.close(0)
            ctx.term()
        return True

    assert guarded_router(bystander, per_connection=8 * MiB, total=12 * MiB)


def test_while_tcp_peers_together_hold_past_the_total_the_one_holding_most_is_cut():
    def stall(port):
        socks = [zmtp_connect(port) for _ in range(3)]
        try:
            for s, size in zip(socks, (3 * MiB, 5 * MiB, 4 * MiB)):   # frames whose last byte never comes
                s.sendall(b"\x02" + struct.pack(">Q", size) + b"f" * (size - 1))
            assert wait_until(lambda: any(cut(s) for s in socks), timeout=30)
            return [cut(s) for s in socks]
        finally:
            for s in socks:
                s.close()

    assert guarded_router(stall, per_connection=8 * MiB, total=10 * MiB) == [False, True, False]


def cut(s: socket.socket) -> bool:
    """True once the other side has closed s (a read would return nothing, or fail)."""
    while select.select([s], [], [], 0)[0]:
        try:
            if s.recv(1 << 16) == b"":     # what the kernel side sent before (its handshake) goes first
                return True
        except OSError:
            return True
    return False


def test_a_curve_client_that_sends_more_than_the_inbound_bound_in_whole_requests_keeps_its_connection(
        tcp_kernel, make_user):
    _, key_file = make_user()
    payload = b"p" * (8 * MiB)
    with tcp_kernel.client("uploader", key=key_file) as c:
        for _ in range(4 * INBOUND_HELD_PER_CONNECTION // len(payload)):   # four times what a cut would allow
            assert ping_as_told(c, payload)["payload"] == payload
        assert c.pid in [p["pid"] for p in c.ps()]      # still its process: the connection was never cut


def ping_as_told(c, payload: bytes, tries: int = 20) -> dict:
    """ping, retried as an EAGAIN says (after retry_after): the previous 8 MiB reply counts as unread until
    the kernel's socket has nothing left to send it, and on a busy machine the last bytes of it (or a
    heartbeat) may still be unacknowledged when the next ping arrives. That is the bound's contract, not a
    cut: the connection must stay, and every ping be answered."""
    for _ in range(tries - 1):
        try:
            return c.ping(payload)
        except ERRORS["EAGAIN"] as exc:
            time.sleep(exc.retry_after or 0.5)
    return c.ping(payload)


def test_many_connections_of_one_principal_hold_no_more_than_its_inbound_share():
    """Inbound bytes ZeroMQ holds count per principal too: bob's three connections (1, 1.5 and 2 MiB held)
    pass his 3 MiB share, so his biggest is cut; alice's 2 MiB, alone, is within hers."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * MiB)    # room to hold what is sent, unread
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        clients, accepted = [], []
        try:
            for size in (1, 1.5, 2, 2):
                c = socket.create_connection(("127.0.0.1", port))
                conn, _ = server.accept()
                clients.append(c)
                accepted.append(conn)
                c.sendall(b"x" * int(size * MiB + InboundGuard.HANDSHAKE_BYTES))
            guard = InboundGuard(per_connection=8 * MiB, total=64 * MiB, per_principal=3 * MiB)
            for conn, who in zip(accepted, ("bob", "bob", "bob", "alice")):
                guard.accepted(conn.fileno())
                guard.owned_by(conn.fileno(), who)
            assert wait_until(lambda: all(tcp_held(conn) for conn in accepted), timeout=5)
            assert guard.check() == [accepted[2].fileno()]      # bob's biggest; then he is within his share
            assert guard.check() == []
        finally:
            for s in clients + accepted:
                s.close()


def tcp_held(conn) -> bool:
    from llmos.kernel.bounds import tcp_bytes_received
    return (tcp_bytes_received(conn.fileno()) or 0) >= MiB


def test_many_connections_of_one_principal_that_never_read_grow_the_kernel_only_within_its_bounds(tmp_path):
    """Finding 9, end to end: 64 CurveZMQ connections of bob's read nothing, and each sends 2,000 pings of
    3,900 bytes whose replies echo them (500 MB asked for). The kernel grew by 0.9 to 1 GB, and kept it:
    ZeroMQ queued up to 2,000 requests per connection (RCVHWM) ahead of the kernel, each keeping its
    18 KiB receive buffer alive, and the InboundGuard never ran while requests kept coming. Now the
    kernel grows by no more than bob's bounds add up to (unread replies, inbound bytes, and the
    receive buffers of RECV_HWM requests per connection), and alice is answered meanwhile."""
    conns, per_conn, payload = 64, 2000, b"x" * 3900
    k = KernelProcess(tmp_path, tcp=True, env={"LLMOS_NO_SERVICES": "1"}).start()
    ctx, socks = zmq.Context(), []
    try:
        with k.client("op", caps=["admin"]) as op:
            bob = op.user_add("bob")["key_file"]
            alice = op.user_add("alice")["key_file"]
        rss = PeakRss(k.proc.pid)
        for _ in range(conns):
            # read nothing (replies stay with the kernel); every request goes out, none waits here
            socks.append(curve_dealer(ctx, k.socket, bob, RCVHWM=1, RCVBUF=4096, SNDHWM=2 * per_conn))
        for sock in socks:
            for i in range(1, per_conn + 1):
                sock.send(frame(i, "ping", payload=payload))
        with k.client("alice", key=alice) as c:         # another principal, while bob's requests are served
            assert c.ping(b"still served")["payload"] == b"still served"
        assert wait_until(lambda: kernel_idle(k.proc.pid), timeout=120)
        growth = rss.growth()
    finally:
        for sock in socks:
            sock.close(0)
        ctx.term()
        k.stop()
    bound = UNREAD_BYTES_PER_PRINCIPAL + INBOUND_HELD_PER_PRINCIPAL + conns * RECV_HELD_PER_CONNECTION
    assert growth < bound, f"the kernel grew by {growth >> 20} MiB; bob's bounds add up to {bound >> 20} MiB"


def test_a_long_lived_connection_is_allowed_its_heartbeats():
    """ZMTP pings deliver nothing but count as received: an hour-old connection that received 300 kB of
    them holds nothing; the same bytes on a new connection are held."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * MiB)    # room to hold what is sent, unread
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        try:
            client.sendall(b"p" * (InboundGuard.HANDSHAKE_BYTES + 300_000))
            now = [1000.0]
            guard = InboundGuard(per_connection=200_000, total=64 * MiB, clock=lambda: now[0])
            guard.accepted(conn.fileno())
            assert wait_until(lambda: (tcp_bytes_received(conn.fileno()) or 0) >= InboundGuard.HANDSHAKE_BYTES + 300_000,
                              timeout=5)
            now[0] += 3600                      # an hour: 460 kB of heartbeats allowed
            assert guard.check() == []
            fresh = InboundGuard(per_connection=200_000, total=64 * MiB, clock=lambda: now[0])
            fresh.accepted(conn.fileno())
            assert fresh.check() == [conn.fileno()]
        finally:
            client.close()
            conn.close()
