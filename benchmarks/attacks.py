"""What one client can make the kernel hold: its resident memory under each attack of issue 8's finding 6.

Each attack runs on a fresh kernel (no model, no services) over its ipc socket, as the operator
(the only principal an ipc socket admits; on tcp each connection must first pass CurveZMQ):

1. never reads: 200 `memread`s of a 16 MiB value, none of the replies read.
2. unfinished multipart: one message of 2,000 x 1 MiB parts whose last part never comes.
3. stalled frames: 50 connections, each announcing a frame just under the kernel's wire limit
   (MAX_WIRE_FRAME_BYTES) and sending all of it but its last byte (raw ZMTP 3.0, NULL mechanism).

The kernel's RSS is sampled before, through the attack (peak), and after the attacker closes.

    python benchmarks/attacks.py                # prints the table; about a minute
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import threading
import time

import msgpack
import psutil
import zmq

from llmos.specs.protocol import (MAX_FRAME_BYTES, MAX_WIRE_FRAME_BYTES, UNREAD_BYTES_PER_CONNECTION,
                                  UNREAD_BYTES_PER_PRINCIPAL)
from llmos.userland.testing import KernelProcess, wait_until
from report import log, print_table

MiB = 1 << 20


class Rss:
    """The kernel's resident set, sampled on a thread: before, the peak, and the latest."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.before = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def stop(self) -> tuple[int, int, int]:
        self._stop.set()
        self._thread.join()
        return self.before, self.peak, self.proc.memory_info().rss


def settled(pid: int) -> bool:
    """The kernel used under 20 ms of CPU in the last 300 ms."""
    proc = psutil.Process(pid)
    before = sum(proc.cpu_times()[:2])
    time.sleep(0.3)
    return sum(proc.cpu_times()[:2]) - before < 0.02


def dealer(ctx: zmq.Context, url: str, **options) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(url)
    return sock


def request(req_id: int, call: str, **args) -> bytes:
    return msgpack.packb({"v": 1, "id": req_id, "call": call, "args": args}, use_bin_type=True)


def never_reads(k: KernelProcess, rss: Rss) -> str:
    with k.client("filler", caps=["mem"]) as c:
        c.memwrite("big", "v", b"v" * (16 * MiB))
    ctx = zmq.Context()
    sock = dealer(ctx, k.socket, RCVHWM=1, RCVBUF=4096)
    try:
        sock.send(request(1, "hello", name="reader", caps=["mem"]))
        assert sock.poll(10_000)
        sock.recv()
        for i in range(2, 202):
            sock.send(request(i, "memread", region="big", key="v"))
        wait_until(lambda: settled(k.proc.pid), timeout=120)
        answers = [msgpack.unpackb(sock.recv())["ok"] for _ in range(200)]
    finally:
        sock.close(0)
        ctx.term()
    return f"{answers.count(True)} ok, {answers.count(False)} EAGAIN"


def zmtp_greeting() -> bytes:
    """ZMTP 3.0's greeting for the NULL mechanism, as a client."""
    return b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31


def zmtp_ready(socket_type: bytes = b"DEALER") -> bytes:
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    return b"\x04" + bytes([len(body)]) + body


def zmtp_connect(k: KernelProcess) -> socket.socket:
    """A raw connection to the kernel's ipc socket that has done ZMTP's handshake as a DEALER."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(k.socket[len("ipc://"):])
    s.sendall(zmtp_greeting())
    s.recv(64)                              # the kernel's greeting (and perhaps its READY)
    s.sendall(zmtp_ready())
    return s


def unfinished_multipart(k: KernelProcess, rss: Rss, parts: int = 2000) -> str:
    """Raw frames flagged MORE (a libzmq DEALER would keep them until the message is complete)."""
    s = zmtp_connect(k)
    try:
        part = b"\x03" + struct.pack(">Q", MiB) + b"p" * MiB
        for _ in range(parts):
            s.sendall(part)
        wait_until(lambda: settled(k.proc.pid), timeout=120)
    finally:
        s.close()
    return f"{parts:,} parts of 1 MiB, last part never sent"


def stalled_frames(k: KernelProcess, rss: Rss, connections: int = 50) -> str:
    size = MAX_WIRE_FRAME_BYTES - 1024
    socks = []
    try:
        for _ in range(connections):
            s = zmtp_connect(k)
            s.sendall(b"\x02" + struct.pack(">Q", size))
            chunk = b"f" * MiB
            sent = 0
            while sent < size - 1:
                n = min(len(chunk), size - 1 - sent)
                s.sendall(chunk[:n])
                sent += n
            socks.append(s)
        wait_until(lambda: settled(k.proc.pid), timeout=120)
    finally:
        for s in socks:
            s.close()
    return f"{len(socks)} connections x {size // MiB} MiB, last byte never sent"


ATTACKS = {
    "never reads: 200 memreads of 16 MiB": never_reads,
    "unfinished multipart: 2,000 x 1 MiB": unfinished_multipart,
    "stalled frames: 50 just under the wire limit": stalled_frames,
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=sorted(ATTACKS), help="one attack")
    args = p.parse_args(argv)
    rows = []
    for name, attack in ATTACKS.items():
        if args.only and args.only != name:
            continue
        log(f"attack: {name}")
        with KernelProcess(env={"LLMOS_NO_SERVICES": "1"}) as k:
            rss = Rss(k.proc.pid)
            what = attack(k, rss)
            wait_until(lambda: settled(k.proc.pid), timeout=60)
            before, peak, after = rss.stop()
            rows.append([name, f"{before / MiB:.0f}", f"{peak / MiB:.0f}", f"+{(peak - before) / MiB:.0f}",
                         f"{after / MiB:.0f}", what])
    print_table("kernel RSS under each attack (MiB; after = once the attacker closed)",
                ["attack", "before", "peak", "growth", "after", "what happened"], rows,
                [f"bounds: max_frame {MAX_FRAME_BYTES // MiB} MiB (EINVAL above), wire limit "
                 f"{MAX_WIRE_FRAME_BYTES // MiB} MiB (connection cut above), unread replies "
                 f"{UNREAD_BYTES_PER_CONNECTION // MiB} MiB per connection, {UNREAD_BYTES_PER_PRINCIPAL // MiB} MiB "
                 f"per principal (EAGAIN above)"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
