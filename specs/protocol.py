"""Wire-protocol constants and frame codec, shared by the kernel and every client.

One request is one ZeroMQ message of one frame: a msgpack map
``{"v": 1, "id": n, "call": name, "args": {...}}``. The kernel answers with
``{"id": n, "ok": true, "result": ...}`` or ``{"id": n, "ok": false, "error": {"errno", "message"}}``;
a streaming call sends frames with ``"more": true`` before its final one. Frames with
``"id": 0`` are kernel notices (heartbeat probes, shutdown) that answer no request.
"""

from __future__ import annotations

from typing import Any

import msgpack

ABI_VERSION = 1
ABI_MINOR = 1      # 1.1: infer takes constraint, tools, logprobs, penalties, logit_bias, min_tokens
KERNEL_VERSION = "0.1.0"

# Bounds on what one connection can make the kernel hold (specs/ABI.md, "Security model").
# A request frame over MAX_FRAME_BYTES (`max_frame` in hello) is answered EINVAL and the
# connection kept; one over MAX_WIRE_FRAME_BYTES is cut off by ZeroMQ itself (ZMQ_MAXMSGSIZE)
# while it arrives, which costs the sender its connection. A value (16 MiB) fits well inside.
MAX_FRAME_BYTES = 32 * 1024 * 1024
MAX_WIRE_FRAME_BYTES = MAX_FRAME_BYTES + 8 * 1024 * 1024
# Every frame sent to a client (replies, streamed parts, errors, notices) is counted as unread
# until the connection's socket has sent everything it held (its OS send queue is empty). A reply
# that would take a connection's unread bytes past UNREAD_BYTES_PER_CONNECTION, or its principal's
# (all its connections together) past UNREAD_BYTES_PER_PRINCIPAL, is answered EAGAIN with
# retry_after instead; any other frame cuts the connections holding most (they are not reading)
# until it fits. So neither a client that never reads nor a principal opening many such
# connections can make the kernel hold more for it. Frames per connection are bounded by SEND_HWM.
UNREAD_BYTES_PER_CONNECTION = 64 * 1024 * 1024
UNREAD_BYTES_PER_PRINCIPAL = 256 * 1024 * 1024
UNREAD_RETRY_AFTER_S = 0.5
# What tcp peers have sent that ZeroMQ holds without delivering it (a frame still arriving, the
# parts of a multipart message whose last part never comes; ZeroMQ bounds neither in bytes):
# a connection holding more than INBOUND_HELD_PER_CONNECTION is cut, and while all of them
# together hold more than INBOUND_HELD_TOTAL the ones holding most are cut.
INBOUND_HELD_PER_CONNECTION = MAX_WIRE_FRAME_BYTES + 1024 * 1024
INBOUND_HELD_TOTAL = 512 * 1024 * 1024
# ... and while one principal's connections together hold more than INBOUND_HELD_PER_PRINCIPAL, its
# connections holding most are cut: many connections of one user add up to no more than one's share.
INBOUND_HELD_PER_PRINCIPAL = 128 * 1024 * 1024
SEND_HWM = 2_000   # frames queued to one connection before it counts as not reading
# Requests ZeroMQ queues from one connection before the kernel has taken them (its RCVHWM; past it
# ZeroMQ reads no more from that socket, and the rest waits with the sender). A process has at most
# 64 requests in flight, so a longer queue serves nobody. It must stay short: libzmq receives into
# 8 KiB buffers (18 KiB with a header for each message in them) and does not copy a request under
# 8 KiB out of its buffer, so each one waiting keeps a whole buffer alive (ZMQ_ZERO_COPY_RECV,
# which would stop that, is a draft option). With 2,000 of them, connections sending 4 KiB requests
# faster than the kernel took them made it hold 2.7 times their bytes (1 GB for 64 connections).
# Now a connection holds at most RECV_HELD_PER_CONNECTION (1.2 MiB) beyond the bytes themselves,
# which INBOUND_HELD_* count: measured, requests of 40 to 2,000 bytes arriving one by one.
RECV_HWM = 64
RECV_BUFFER_BYTES = 8192 + 8 + (8192 // 33) * 40     # libzmq's buffer, its counter, a header per message in it
RECV_HELD_PER_CONNECTION = (RECV_HWM + 4) * (RECV_BUFFER_BYTES + 64)   # a few more than RCVHWM; a queue slot each
# What a frame queued to a client costs ZeroMQ beyond its bytes (its slot in the queue, its header
# and allocation): counted with each frame towards the UNREAD_BYTES_* bounds, so frames of a few
# bytes cannot hold more than those bounds say.
FRAME_OVERHEAD_BYTES = 128
NOTICE_ID = 0
# The start of the EPERM message every frame gets once its connection's key is no longer a
# principal's (the user's key was rotated, or the user removed): how a client tells a revoked
# key from a missing capability, and knows that only a new connection with a current key helps.
KEY_REVOKED = "key revoked"
KERNEL_LOG = "kernel.log"      # the kernel's JSON log, in its state dir (`llmos logs` reads it)

# errno names users know, with what each means in llmos.
ERRNOS = {
    "EINVAL": "invalid argument or malformed frame",
    "ENOENT": "no such model, device, process, region, key or request",
    "EPERM": "capability missing, or no process (call hello first)",
    "EACCES": "the resource belongs to another program",
    "ENOMEM": "does not fit in device memory or exceeds a quota",
    "EBUSY": "in use",
    "EAGAIN": "too many requests in flight, or a rate limit; retry later (after `retry_after` seconds if given)",
    "EDQUOT": "a quota of the caller's principal is used up (processes, requests, reserved bytes, memory)",
    "ETIMEDOUT": "the deadline passed",
    "ECANCELED": "cancelled, reaped, or the kernel is shutting down",
    "ENOSYS": "no such syscall",
    "EIO": "a driver or service failed",
}


class FrameError(ValueError):
    """A frame that cannot be decoded into a request."""


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(frame: bytes) -> Any:
    """Decode an untrusted frame: str map keys only; its size is already bounded by ZMQ_MAXMSGSIZE."""
    try:
        return msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises a zoo of types for bad input
        raise FrameError(f"frame is not valid msgpack: {exc.__class__.__name__}: {exc}") from None


def reply_ok(req_id: int, result: Any, more: bool = False) -> bytes:
    msg = {"id": req_id, "ok": True, "result": result}
    if more:
        msg["more"] = True
    return pack(msg)


def reply_error(req_id: int, errno: str, message: str, retry_after: float | None = None) -> bytes:
    error = {"errno": errno, "message": message}
    if retry_after is not None:
        error["retry_after"] = round(retry_after, 3)
    return pack({"id": req_id, "ok": False, "error": error})


def runtime_dir() -> str:
    """Per-user directory for sockets: $XDG_RUNTIME_DIR/llmos, else /tmp/llmos-UID."""
    import os

    base = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(base, "llmos") if base else f"/tmp/llmos-{os.getuid()}"


def default_socket() -> str:
    """Where clients and `llmos boot` meet unless told otherwise: $LLMOS_SOCKET, else the runtime dir."""
    import os

    return os.environ.get("LLMOS_SOCKET") or f"ipc://{runtime_dir()}/kernel.sock"
