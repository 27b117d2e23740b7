"""One process's connection to the kernel: a DEALER socket, the hello handshake, and reply routing.

Every request frame carries an id; one reader task routes each reply to whoever waits on that id:
a future for a plain call, a queue for a stream (several frames with more=true, then the last).
When the connection is lost every waiter gets KernelUnavailable, so nobody hangs.

A SIGKILLed kernel closes nothing a DEALER notices (it just reconnects, forever), so the client
watches for silence instead: the kernel sends a heartbeat notice (id 0) to every quiet client each
`heartbeat_s` (from hello), and any inbound frame counts as life. A client that keeps sending is
not quiet to the kernel and may get no heartbeat, so halfway to the limit the client pings. While
calls are in flight and nothing has come for SILENT_BEATS heartbeats (at least MIN_SILENCE_S),
they all end with KernelUnavailable and the connection counts as lost until the kernel is heard
from again.

On tcp a socket monitor watches the CurveZMQ handshake: when the kernel refuses the key (never
a user's, or rotated or removed since), everything waiting ends at once with KeyRefused instead
of waiting out a timeout, and so does every call on a connection whose key was revoked while it
was open (the kernel answers those EPERM "key revoked").

A request is checked before it is sent: one the kernel would drop (over hello's `max_frame`) or
one msgpack cannot carry (a str holding undecodable bytes) fails at once with EINVAL.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from llmos.specs.keys import KERNEL_KEY_META, SOCKET_META, read_key_file
from llmos.specs.protocol import ABI_VERSION, MAX_FRAME_BYTES, NOTICE_ID, FrameError, default_socket, pack, unpack

from .errors import ERRORS, KernelUnavailable, KeyRefused, LLMOSError, is_key_revoked, raise_error
from .stream import Stream

CONNECT_TIMEOUT_S = 10.0
SILENT_BEATS = 3         # heartbeats missed before the kernel counts as gone
MIN_SILENCE_S = 3.0      # ... but never less than this: a busy kernel's loop may pause a moment


class Connection:
    """The socket and its reader; AsyncClient adds one method per syscall on top."""

    def __init__(self, socket: str | None = None, name: str | None = None, caps: list[str] | None = None,
                 timeout: float | None = 60.0, service_token: str | None = None, key: str | None = None):
        self.key_file = key or os.environ.get("LLMOS_KEY") or None
        self._curve = _read_key(self.key_file) if self.key_file else None
        self.socket_url = socket or os.environ.get("LLMOS_SOCKET") or \
            (self._curve or {}).get(SOCKET_META) or default_socket()
        self.name = name or f"client-{os.getpid()}"
        self.caps = caps
        self.service_token = service_token   # the kernel's service host only
        self.timeout = timeout     # for calls that do not wait on a model; None waits forever
        self.pid: int | None = None
        self.info: dict = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future | asyncio.Queue] = {}
        self._ctx: zmq.asyncio.Context | None = None
        self._sock = None
        self._reader: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None
        self._handshakes: asyncio.Task | None = None     # on tcp: notices the kernel refusing the key
        self._probe: asyncio.Future | None = None    # the watchdog's ping in flight
        self._lost: str | None = None      # why the connection is unusable; None while it works
        self._lost_error: type[KernelUnavailable] = KernelUnavailable    # what a call on it raises
        self._silent = False               # lost only because the kernel went quiet: a frame revives it
        self._last_heard = 0.0             # loop time of the last inbound frame (or of a wait's start)
        self.max_frame = MAX_FRAME_BYTES
        self.silence_limit = MIN_SILENCE_S

    async def connect(self):
        """Open the socket and say hello: the kernel answers with this process's pid and caps."""
        if self.socket_url.startswith("ipc://") and not os.path.exists(self.socket_url[6:]):
            raise KernelUnavailable(f"no kernel socket at {self.socket_url}: start one with `llmos boot` "
                                    f"(or set LLMOS_SOCKET to where it listens)")
        curve = self._curve_keys() if self.socket_url.startswith("tcp://") else None
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self._sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)      # ZMTP pings: notice a kernel that vanished
        self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        if curve is not None:
            self._sock.curve_secretkey, self._sock.curve_publickey, self._sock.curve_serverkey = curve
            monitor = self._sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
            self._handshakes = asyncio.create_task(self._watch_handshakes(monitor))
        self._sock.connect(self.socket_url)
        self._reader = asyncio.create_task(self._read_loop())
        try:
            hello = {"name": self.name, "caps": self.caps}
            if self.service_token is not None:
                hello["service_token"] = self.service_token
            self.info = await self._call("hello", hello, CONNECT_TIMEOUT_S)
        except asyncio.TimeoutError:
            await self._teardown()
            raise KernelUnavailable(f"no kernel answered on {self.socket_url} within {CONNECT_TIMEOUT_S:.0f}s") from None
        except BaseException:
            await self._teardown()
            raise
        self.pid = self.info["pid"]
        self.max_frame = self.info.get("max_frame") or MAX_FRAME_BYTES
        self.silence_limit = max(SILENT_BEATS * float(self.info.get("heartbeat_s") or 1.0), MIN_SILENCE_S)
        self._watchdog = asyncio.create_task(self._watch())
        return self

    def _curve_keys(self) -> tuple[bytes, bytes, bytes]:
        """(secret, public, kernel's public) from this principal's key file (key=, LLMOS_KEY): a tcp
        kernel admits nothing else."""
        if self._curve is None:
            raise KernelUnavailable(f"{self.socket_url} is a tcp socket: the kernel admits only users with a key; "
                                    f"pass key=PATH (or --key, or set LLMOS_KEY) with the file `llmos user add` made")
        server = self._curve.get(KERNEL_KEY_META)
        if not server or "secret-key" not in self._curve:
            raise KernelUnavailable(f"{self.key_file} is not a user's key file (it needs secret-key and "
                                    f"{KERNEL_KEY_META}); use the file `llmos user add` wrote")
        return self._curve["secret-key"].encode(), self._curve["public-key"].encode(), server.encode()

    async def close(self) -> None:
        """Say exit (the kernel reaps what this process still had) and close the socket."""
        if self._sock is None:
            return
        if self.pid is not None and self._lost is None:
            try:
                await self._call("exit", {}, 2.0)
            except (LLMOSError, asyncio.TimeoutError):
                pass
        await self._teardown()

    async def _teardown(self) -> None:
        for task in (self._watchdog, self._reader, self._handshakes):
            if task:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._sock.close(0)
        self._ctx.term()
        self._sock = None

    async def __aenter__(self):
        return await self.connect()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await self._sock.recv()
                self._last_heard = loop.time()
                if self._silent:        # the kernel was only quiet, not gone
                    self._lost, self._silent = None, False
                try:
                    msg = unpack(frame)
                except FrameError:
                    continue
                rid = msg.get("id") if isinstance(msg, dict) else None
                if rid is not None and is_key_revoked(msg.get("error")):    # later calls fail here, unsent
                    self._lost, self._lost_error = "the kernel revoked this connection's key", KeyRefused
                if rid == NOTICE_ID or rid is None:
                    continue
                waiter = self._pending.get(rid)
                if isinstance(waiter, asyncio.Queue):
                    waiter.put_nowait(msg)
                    if not msg.get("more"):     # its last frame: nothing more to wait for, read or not
                        self._pending.pop(rid, None)
                elif waiter is not None:
                    self._pending.pop(rid, None)
                    if not waiter.done():
                        waiter.set_result(msg)
        except (asyncio.CancelledError, zmq.ZMQError):
            pass
        finally:
            self._silent = False
            self._fail_all(self._lost or "connection closed",
                           f"connection to the kernel at {self.socket_url} closed")

    async def _watch(self) -> None:
        """End every call in flight once the kernel has been silent for silence_limit seconds; ping it
        when it has been silent for half of that."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.silence_limit / 4)
            quiet = loop.time() - self._last_heard
            if not self._pending:
                continue
            if quiet > self.silence_limit / 2 and (self._probe is None or self._probe.done()):
                self._probe = loop.create_future()
                self._probe.add_done_callback(lambda f: f.cancelled() or f.exception())   # a sign of life, or not
                try:
                    await self._send("ping", {}, self._probe)
                except LLMOSError:
                    pass
            if quiet > self.silence_limit:
                self._silent = True
                self._fail_all("the kernel went silent",
                               f"the kernel at {self.socket_url} stopped answering: nothing heard for "
                               f"{quiet:.1f}s (it sends a heartbeat every {self.info.get('heartbeat_s')}s); "
                               f"is it still running?")

    async def _watch_handshakes(self, monitor) -> None:
        """A handshake the kernel refused (its ZAP handler said no to this key) ends every call at once."""
        try:
            while True:
                event = parse_monitor_message(await monitor.recv_multipart())
                if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH and event["value"] == 400:   # 400: denied
                    self._fail_all("the kernel refused this key",
                                   f"the kernel at {self.socket_url} refused the key in {self.key_file}: it is no "
                                   f"user's key (rotated, or the user removed?); ask the operator for the current "
                                   f"key file", KeyRefused)
        except (asyncio.CancelledError, zmq.ZMQError):
            pass
        finally:
            if self._sock is not None:
                self._sock.disable_monitor()
            monitor.close(0)

    def _fail_all(self, why: str, message: str, error: type[KernelUnavailable] = KernelUnavailable) -> None:
        """Mark the connection lost and end every waiter with error(message)."""
        self._lost, self._lost_error = why, error
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            err = error(message)
            if isinstance(waiter, asyncio.Queue):
                waiter.put_nowait(err)
            elif not waiter.done():
                waiter.set_exception(err)

    async def _send(self, call: str, args: dict, waiter: asyncio.Future | asyncio.Queue) -> int:
        """Send a request frame whose replies go to waiter; its id."""
        if self._sock is None:
            raise KernelUnavailable("not connected: use `async with AsyncClient()` or await connect()")
        if self._lost is not None:
            raise self._lost_error(f"the connection to the kernel at {self.socket_url} is lost "
                                   f"({self._lost}); connect again")
        req_id = next(self._ids)
        frame = self._encode(call, req_id, args)
        if not self._pending:        # a wait starts now: silence is counted from here
            self._last_heard = asyncio.get_running_loop().time()
        self._pending[req_id] = waiter
        await self._sock.send(frame)
        return req_id

    def _encode(self, call: str, req_id: int, args: dict) -> bytes:
        """The request frame, or EINVAL now for one the kernel could never read."""
        try:
            frame = pack({"v": ABI_VERSION, "id": req_id, "call": call, "args": args})
        except UnicodeEncodeError:
            raise ERRORS["EINVAL"]("EINVAL", f"{call}: a string argument is not valid UTF-8 (it holds undecodable "
                                             f"bytes); decode it with errors='replace', or send bytes") from None
        except (TypeError, ValueError) as exc:
            raise ERRORS["EINVAL"]("EINVAL", f"{call}: an argument cannot be sent: {exc}") from None
        if len(frame) > self.max_frame:
            raise ERRORS["EINVAL"]("EINVAL", f"{call}: the request is {len(frame)} bytes, over the kernel's frame "
                                             f"limit of {self.max_frame} bytes (hello's max_frame); nothing was sent")
        return frame

    async def _call(self, call: str, args: dict, timeout: float | None) -> Any:
        """One request, one reply: its result, or the errno raised as an exception."""
        fut = asyncio.get_running_loop().create_future()
        req_id = await self._send(call, args, fut)
        try:
            msg = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(req_id, None)
        if not msg.get("ok"):
            raise_error(msg.get("error", {}))
        return msg["result"]

    async def _open_stream(self, call: str, args: dict) -> Stream:
        """Send a call with stream=true; its frames queue up for the Stream returned."""
        queue: asyncio.Queue = asyncio.Queue()
        req_id = await self._send(call, dict(args, stream=True), queue)
        return Stream(self, req_id, queue)


def _read_key(path: str) -> dict[str, str]:
    try:
        return read_key_file(path)
    except (OSError, ValueError) as exc:
        raise KernelUnavailable(f"cannot use the key file {path}: {exc}") from None
