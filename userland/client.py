"""The llmos client library: one method per syscall, failures raised as exceptions with an errno.

`AsyncClient` is the real client: one DEALER socket, one reader task that routes every reply
to the caller waiting on its id, streams as async iterators. `Client` is the same thing for
synchronous code: it runs an AsyncClient on a private event-loop thread.

    with Client(name="myapp") as c:
        print(c.infer(prompt="Hello")["text"])
        for delta in c.stream(messages=[{"role": "user", "content": "Hi"}]):
            print(delta, end="")

Userland talks to the kernel only through syscalls: nothing here imports kernel or drivers.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from typing import Any, Iterator

import zmq
import zmq.asyncio

from llmos.specs.protocol import ABI_VERSION, MAX_FRAME_BYTES, NOTICE_ID, FrameError, default_socket, pack, unpack

CONNECT_TIMEOUT_S = 10.0


class LLMOSError(Exception):
    """A syscall failed; `errno` is the kernel's errno name (EINVAL, ENOMEM, ...)."""

    errno = "EIO"

    def __init__(self, errno: str, message: str):
        super().__init__(f"{errno}: {message}")
        self.errno = errno
        self.message = message


class KernelUnavailable(LLMOSError, ConnectionError):
    """No kernel answers on the socket, or the connection to it was lost."""

    def __init__(self, message: str):
        super().__init__("EIO", message)


def _errno_classes() -> dict[str, type]:
    from llmos.specs.protocol import ERRNOS

    return {name: type(name, (LLMOSError,), {"errno": name, "__doc__": why}) for name, why in ERRNOS.items()}


ERRORS = _errno_classes()   # ERRORS["ENOMEM"] is the class raised for ENOMEM; catch LLMOSError for all


def raise_error(error: dict) -> None:
    errno = error.get("errno", "EIO")
    raise ERRORS.get(errno, LLMOSError)(errno, error.get("message", ""))


class Stream:
    """A streaming call (infer or svc_call with stream=true): iterate for text deltas; `.result` holds
    the final reply after."""

    def __init__(self, client: "AsyncClient", req_id: int, queue: asyncio.Queue):
        self.client = client
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
            self.client._pending.pop(self.id, None)
            raise_error(msg.get("error", {}))
        if msg.get("more"):
            return msg["result"].get("delta", "")
        self.client._pending.pop(self.id, None)
        self.result = msg["result"]
        raise StopAsyncIteration

    async def cancel(self) -> None:
        await self.client.cancel(self.id)


class AsyncClient:
    def __init__(self, socket: str | None = None, name: str | None = None, caps: list[str] | None = None,
                 timeout: float | None = 60.0, service_token: str | None = None):
        self.socket_url = socket or default_socket()
        self.name = name or f"client-{os.getpid()}"
        self.caps = caps
        self.service_token = service_token   # the kernel's service host only
        self.timeout = timeout     # for calls other than infer/load_model; None waits forever
        self.pid: int | None = None
        self.info: dict = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future | asyncio.Queue] = {}
        self._ctx: zmq.asyncio.Context | None = None
        self._sock = None
        self._reader: asyncio.Task | None = None
        self._lost: str | None = None

    # -- connection ------------------------------------------------------------------------------

    async def connect(self) -> "AsyncClient":
        if self.socket_url.startswith("ipc://") and not os.path.exists(self.socket_url[6:]):
            raise KernelUnavailable(f"no kernel socket at {self.socket_url}: start one with `llmos boot` "
                                    f"(or set LLMOS_SOCKET to where it listens)")
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self._sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)      # ZMTP pings: notice a kernel that vanished
        self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
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

    async def close(self) -> None:
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

    async def __aenter__(self) -> "AsyncClient":
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

    # -- raw calls -------------------------------------------------------------------------------

    async def _call(self, call: str, args: dict, timeout: float | None) -> Any:
        if self._sock is None:
            raise KernelUnavailable("not connected: use `async with AsyncClient()` or await connect()")
        req_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        await self._sock.send(pack({"v": ABI_VERSION, "id": req_id, "call": call, "args": args}))
        try:
            msg = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(req_id, None)
        if not msg.get("ok"):
            raise_error(msg.get("error", {}))
        return msg["result"]

    async def call(self, call: str, **args: Any) -> Any:
        """Any syscall by name, for calls newer than this library."""
        return await self._call(call, {k: v for k, v in args.items() if v is not None}, None)

    # -- one method per syscall ------------------------------------------------------------------

    async def ping(self, payload: Any = None) -> dict:
        return await self._call("ping", {"payload": payload}, self.timeout)

    async def ps(self) -> list[dict]:
        return (await self._call("ps", {}, self.timeout))["processes"]

    async def kill(self, pid: int) -> dict:
        return await self._call("kill", {"pid": pid}, self.timeout)

    async def sysinfo(self) -> dict:
        return await self._call("sysinfo", {}, self.timeout)

    async def devices(self) -> list[dict]:
        return (await self._call("devices", {}, self.timeout))["devices"]

    async def alloc_gpu(self, bytes: int, device: str = "auto") -> dict:
        return await self._call("alloc_gpu", {"bytes": bytes, "device": device}, self.timeout)

    async def free(self, handle: int) -> dict:
        return await self._call("free", {"handle": handle}, self.timeout)

    async def models(self) -> dict:
        return await self._call("models", {}, self.timeout)

    async def load_model(self, name: str, device: str = "auto") -> dict:
        return await self._call("load_model", {"name": name, "device": device}, None)

    async def unload_model(self, name: str, evict: bool = False) -> dict:
        return await self._call("unload_model", {"name": name, "evict": evict}, self.timeout)

    async def infer(self, prompt: str | None = None, messages: list[dict] | None = None, model: str | None = None,
                    max_tokens: int = 256, temperature: float = 0.7, top_p: float = 1.0, top_k: int = 0,
                    stop: str | list[str] | None = None, seed: int | None = None, priority: int = 0,
                    deadline: float | None = None, for_call: int | None = None) -> dict:
        args = _infer_args(prompt, messages, model, max_tokens, temperature, top_p, top_k, stop, seed, priority, deadline,
                           for_call)
        return await self._call("infer", args, None)

    async def stream(self, prompt: str | None = None, messages: list[dict] | None = None, model: str | None = None,
                     max_tokens: int = 256, temperature: float = 0.7, top_p: float = 1.0, top_k: int = 0,
                     stop: str | list[str] | None = None, seed: int | None = None, priority: int = 0,
                     deadline: float | None = None, for_call: int | None = None) -> Stream:
        """infer with stream=true: returns a Stream to iterate for deltas."""
        args = _infer_args(prompt, messages, model, max_tokens, temperature, top_p, top_k, stop, seed, priority, deadline,
                           for_call)
        return await self._open_stream("infer", args)

    async def _open_stream(self, call: str, args: dict) -> Stream:
        if self._sock is None:
            raise KernelUnavailable("not connected: use `async with AsyncClient()` or await connect()")
        args = dict(args, stream=True)
        req_id = next(self._ids)
        queue: asyncio.Queue = asyncio.Queue()
        self._pending[req_id] = queue
        await self._sock.send(pack({"v": ABI_VERSION, "id": req_id, "call": call, "args": args}))
        return Stream(self, req_id, queue)

    async def embed(self, input: str | list[str], model: str = "minilm-l6-v2", normalize: bool = True) -> dict:
        return await self._call("embed", {"input": input, "model": model, "normalize": normalize}, None)

    async def cancel(self, id: int) -> dict:
        return await self._call("cancel", {"id": id}, self.timeout)

    async def memwrite(self, region: str, key: str, value: str | bytes, embed: bool = False,
                       model: str = "minilm-l6-v2") -> dict:
        args = {"region": region, "key": key, "value": value, "embed": embed, "model": model}
        return await self._call("memwrite", args, None if embed else self.timeout)

    async def memread(self, region: str, key: str | None = None, prefix: str = "") -> dict:
        return await self._call("memread", {"region": region, "key": key, "prefix": prefix}, self.timeout)

    async def memdel(self, region: str, key: str | None = None) -> dict:
        return await self._call("memdel", {"region": region, "key": key}, self.timeout)

    async def memsearch(self, region: str, query: str, k: int = 5, model: str = "minilm-l6-v2") -> dict:
        """The k entries of a region closest in meaning to query (those written with embed=True)."""
        return await self._call("memsearch", {"region": region, "query": query, "k": k, "model": model}, None)

    async def svc_list(self) -> dict:
        return await self._call("svc_list", {}, self.timeout)

    async def svc_call(self, service: str, task: str, args: dict | None = None, deadline: float | None = None) -> dict:
        return await self._call("svc_call", {"service": service, "task": task, "args": args or {},
                                             "deadline": deadline}, None)

    async def svc_stream(self, service: str, task: str, args: dict | None = None,
                         deadline: float | None = None) -> Stream:
        """svc_call with stream=true: returns a Stream of text deltas; `.result` holds the task's result after."""
        return await self._open_stream("svc_call", {"service": service, "task": task, "args": args or {},
                                                    "deadline": deadline})

    async def svc_reload(self, drain: float = 10.0) -> dict:
        return await self._call("svc_reload", {"drain": drain}, None)


def _infer_args(prompt, messages, model, max_tokens, temperature, top_p, top_k, stop, seed, priority, deadline,
                for_call) -> dict:
    args = {"prompt": prompt, "messages": messages, "model": model, "max_tokens": max_tokens,
            "temperature": temperature, "top_p": top_p, "top_k": top_k, "stop": stop, "seed": seed,
            "priority": priority, "deadline": deadline}
    if for_call is not None:
        args["for_call"] = for_call
    return args


_STREAMS = ("stream", "svc_stream")   # return a Stream: wrapped by Client as a SyncStream


class Client:
    """Synchronous client: the AsyncClient's methods, run on a private event-loop thread."""

    def __init__(self, socket: str | None = None, name: str | None = None, caps: list[str] | None = None,
                 timeout: float | None = 60.0):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="llmos-client")
        self._thread.start()
        self._async = AsyncClient(socket, name, caps, timeout)
        try:
            self._run(self._async.connect())
        except BaseException:
            self._stop_loop()
            raise

    @property
    def pid(self) -> int | None:
        return self._async.pid

    @property
    def info(self) -> dict:
        return self._async.info

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.close())
        self._stop_loop()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getattr__(self, name: str):
        method = getattr(AsyncClient, name, None)
        if name.startswith("_") or method is None or not asyncio.iscoroutinefunction(method) or name in _STREAMS:
            raise AttributeError(name)
        bound = getattr(self._async, name)
        return lambda *a, **kw: self._run(bound(*a, **kw))

    def stream(self, *args, **kwargs) -> "SyncStream":
        return SyncStream(self, self._run(self._async.stream(*args, **kwargs)))

    def svc_stream(self, *args, **kwargs) -> "SyncStream":
        return SyncStream(self, self._run(self._async.svc_stream(*args, **kwargs)))


class SyncStream:
    def __init__(self, client: Client, stream: Stream):
        self._client = client
        self._stream = stream
        self.id = stream.id

    @property
    def result(self) -> dict | None:
        return self._stream.result

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                yield self._client._run(self._stream.__anext__())
            except StopAsyncIteration:
                return

    def cancel(self) -> None:
        self._client._run(self._stream.cancel())
