"""The syscall path: decode a client's frame, check it against the table, run its handler, reply.

Every failure on the way becomes an errno reply to its sender and nothing else: a bad frame,
an unknown syscall, a missing process or capability, a handler's SyscallError, even a kernel
bug (EIO, logged) costs one reply, never the kernel or another client. Handlers come from a
dispatch table by name (kernel/syscalls), never from getattr on a name off the wire. Plain
handlers answer at once on the loop; coroutine handlers run as tasks of their own.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Callable

import msgpack
import zmq

from llmos.specs import SYSCALLS, ArgError
from llmos.specs.protocol import (ABI_VERSION, KEY_REVOKED, MAX_FRAME_BYTES, UNREAD_RETRY_AFTER_S, FrameError,
                                  reply_error, reply_ok, unpack)

from . import logs
from .errors import SyscallError, eperm
from .process import CallContext

if TYPE_CHECKING:
    from .process import ProcessTable
    from .transport import Transport

log = logs.get("llmos.dispatch")


# Told of every reply: (syscall name or None, "OK" or the errno, the principal the transport proved or None).
ReplyCounter = Callable[["str | None", str, "str | None"], None]


class Dispatcher:
    def __init__(self, handlers: dict[str, Callable], system: Any, procs: "ProcessTable",
                 spawn: Callable[..., asyncio.Task], count_reply: ReplyCounter):
        """handlers: the syscalls by name, each called as handler(system, ctx, args): `system` is what the
        syscalls act on (the kernel), which the dispatcher only hands on."""
        self.handlers = handlers
        self.system = system
        self.procs = procs
        self.spawn = spawn
        self.count_reply = count_reply

    async def serve(self, transport: "Transport") -> None:
        self.spawn(transport.peers.run(), f"peers-{transport.url}")
        while True:
            try:
                routing, frames, principal, fd = await transport.recv()
            except zmq.ZMQError:
                return
            if len(frames) != 1:
                self._error(transport, routing, None, None, "EINVAL", f"a request is one frame, not {len(frames)}",
                            principal=principal)
            else:
                self.on_frame(transport, routing, frames[0], principal, fd)

    def on_frame(self, transport: "Transport", routing: list[bytes], frame: bytes, principal: str,
                 fd: int | None = None) -> None:
        """Decode, check, and run one request; every failure becomes an errno reply to its sender."""
        if not principal:      # the key that opened this connection was revoked: nothing more, not even ping
            self._error(transport, routing, peek_id(frame), None, "EPERM", REVOKED_MESSAGE)
            return
        client_id = call = None
        try:
            if len(frame) > MAX_FRAME_BYTES:
                client_id = peek_id(frame)
                raise FrameError(f"a frame of {len(frame)} bytes is over max_frame ({MAX_FRAME_BYTES} bytes; "
                                 f"see hello's max_frame)")
            msg = unpack(frame)
            if not isinstance(msg, dict):
                raise FrameError("a request must be a msgpack map")
            client_id = msg.get("id")
            if not isinstance(client_id, int) or isinstance(client_id, bool) or not 0 < client_id <= MAX_ID:
                client_id = None
                raise FrameError("'id' must be an integer from 1 to 2**63-1")
            if type(msg.get("v")) is not int or msg["v"] != ABI_VERSION:   # not true, not 1.0
                raise FrameError(f"protocol version {msg.get('v')!r} is not supported; this kernel speaks v{ABI_VERSION}")
            call = msg.get("call")
            if not isinstance(call, str):
                raise FrameError("'call' must be a string naming a syscall")
            spec = SYSCALLS.get(call)
            handler = self.handlers.get(call)
            if spec is None or handler is None:
                raise SyscallError("ENOSYS", f"no syscall '{call[:64]}'; see specs/syscalls.md for the list")
            args = spec.validate(msg.get("args"))
            proc = self.procs.by_identity(transport.connection(routing[0]))
            if proc is not None and proc.authenticated_as != principal:
                proc = None        # a routing id reused by someone else: not their process
            if proc is not None:
                proc.last_seen = time.monotonic()
            elif not spec.before_hello:
                raise eperm(f"'{call}' needs a process: call hello first")
            if spec.cap and spec.cap not in proc.caps:
                raise eperm(f"'{call}' needs the '{spec.cap}' capability, which this process does not hold")
        except (FrameError, ArgError) as exc:
            self._error(transport, routing, client_id, call, "EINVAL", str(exc), principal=principal)
            return
        except SyscallError as exc:
            self._error(transport, routing, client_id, call, exc.errno, exc.message, exc.retry_after, principal)
            return
        ctx = CallContext(transport, routing, client_id, proc, principal, fd, call)
        if asyncio.iscoroutinefunction(handler):
            self.spawn(self._run_async(handler, ctx, args), call)
        else:
            self._run(handler, ctx, args)

    def _run(self, handler, ctx: CallContext, args: dict) -> None:
        try:
            result = handler(self.system, ctx, args)
        except SyscallError as exc:
            self._fail(ctx, exc)
        except Exception as exc:  # a kernel bug must cost one reply, never the kernel
            log.exception("syscall.crashed", client_id=ctx.client_id)
            self._fail(ctx, SyscallError("EIO", f"kernel error: {exc}"))
        else:
            self._reply_ok(ctx, result)

    async def _run_async(self, handler, ctx: CallContext, args: dict) -> None:
        try:
            result = await handler(self.system, ctx, args)
        except SyscallError as exc:
            self._fail(ctx, exc)
        except asyncio.CancelledError:
            self._fail(ctx, SyscallError("ECANCELED", "kernel shutting down"))
            raise
        except Exception as exc:
            log.exception("syscall.crashed", client_id=ctx.client_id)
            self._fail(ctx, SyscallError("EIO", f"kernel error: {exc}"))
        else:
            self._reply_ok(ctx, result)

    def _reply_ok(self, ctx: CallContext, result) -> None:
        """The result, unless the client has too much unread already (EAGAIN, retry_after)."""
        frame = reply_ok(ctx.client_id, result)
        if not ctx.transport.fits(ctx.routing, len(frame)):
            self._fail(ctx, SyscallError("EAGAIN", f"a reply of {len(frame)} bytes would pass the bytes this "
                                         "connection or principal may leave unread; read the replies, then retry",
                                         retry_after=UNREAD_RETRY_AFTER_S))
            return
        self.count_reply(ctx.call, "OK", ctx.principal)
        ctx.transport.send(ctx.routing, frame)

    def _fail(self, ctx: CallContext, exc: SyscallError) -> None:
        self._error(ctx.transport, ctx.routing, ctx.client_id, ctx.call, exc.errno, exc.message, exc.retry_after,
                    ctx.principal)

    def _error(self, transport: "Transport", routing: list[bytes], client_id: int | None, call: str | None,
               errno: str, message: str, retry_after: float | None = None, principal: str | None = None) -> None:
        """An errno reply, counted under its syscall (or "unknown", before a name from the table is read), and
        for the principal the transport proved, whose `stats` shows it its own."""
        self.count_reply(call, errno, principal)
        transport.send(routing, reply_error(client_id, errno, message, retry_after))


REVOKED_MESSAGE = (f"{KEY_REVOKED}: this connection's key is no longer a user's (rotated, or the user removed); "
                   "connect again with the current key file")
MAX_ID = (1 << 63) - 1     # request ids are positive int64s, so every client language can hold them


def peek_id(frame: bytes) -> int | None:
    """The request id of a frame too large to decode, found by skipping over the other values."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=len(frame))
    unpacker.feed(frame)
    try:
        for _ in range(min(unpacker.read_map_header(), 8)):
            if unpacker.unpack() == "id":
                found = unpacker.unpack()
                return found if isinstance(found, int) and not isinstance(found, bool) and found > 0 else None
            unpacker.skip()
    except Exception:  # not a map, or cut short: no id to answer
        pass
    return None
