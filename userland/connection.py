"""One process's connection to the kernel: a DEALER socket, the hello handshake, and reply routing.

Every request frame carries an id; one reader task routes each reply to whoever waits on that id:
a future for a plain call, a queue for a stream (several frames with more=true, then the last).
When the connection is lost every waiter gets KernelUnavailable, so nobody hangs.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

import zmq
import zmq.asyncio

from llmos.specs.keys import KERNEL_KEY_META, SOCKET_META, read_key_file
from llmos.specs.protocol import ABI_VERSION, MAX_FRAME_BYTES, NOTICE_ID, FrameError, default_socket, pack, unpack

from .errors import KernelUnavailable, LLMOSError, raise_error

CONNECT_TIMEOUT_S = 10.0


class Stream:
    """A streaming call (infer or svc_call with stream=true): iterate for text deltas; `.result` holds
    the final reply after."""

    def __init__(self, connection: "Connection", req_id: int, queue: asyncio.Queue):
        self.connection = connection
        self.id = req_id
        self._queue = queue
        self.result: dict | None = None

    def __aiter__(self):
        return self

    async def __anext__(self) -> str:
        if self.result is not None:
            raise StopAsyncIteration
        msg = await self._queue.get()
        if isinstance(msg, BaseException):
            raise msg
        if not msg.get("ok"):
            self.connection._pending.pop(self.id, None)
            raise_error(msg.get("error", {}))
        if msg.get("more"):
            return msg["result"].get("delta", "")
        self.connection._pending.pop(self.id, None)
        self.result = msg["result"]
        raise StopAsyncIteration

    async def cancel(self) -> None:
        """Ask the kernel to end this call; the stream then ends with ECANCELED."""
        await self.connection._call("cancel", {"id": self.id}, self.connection.timeout)


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
        self._lost: str | None = None

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
        if self._reader:
            self._reader.cancel()
            try:
                await self._reader
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
        try:
            while True:
                try:
                    msg = unpack(await self._sock.recv())
                except FrameError:
                    continue
                rid = msg.get("id") if isinstance(msg, dict) else None
                if rid == NOTICE_ID or rid is None:
                    continue
                waiter = self._pending.get(rid)
                if isinstance(waiter, asyncio.Queue):
                    waiter.put_nowait(msg)
                elif waiter is not None:
                    self._pending.pop(rid, None)
                    if not waiter.done():
                        waiter.set_result(msg)
        except (asyncio.CancelledError, zmq.ZMQError):
            pass
        finally:
            self._lost = self._lost or "connection closed"
            for waiter in self._pending.values():
                err = KernelUnavailable(f"connection to the kernel at {self.socket_url} closed")
                if isinstance(waiter, asyncio.Queue):
                    waiter.put_nowait(err)
                elif not waiter.done():
                    waiter.set_exception(err)

    async def _send(self, call: str, args: dict, waiter: asyncio.Future | asyncio.Queue) -> int:
        """Send a request frame whose replies go to waiter; its id."""
        if self._sock is None:
            raise KernelUnavailable("not connected: use `async with AsyncClient()` or await connect()")
        req_id = next(self._ids)
        self._pending[req_id] = waiter
        await self._sock.send(pack({"v": ABI_VERSION, "id": req_id, "call": call, "args": args}))
        return req_id

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
