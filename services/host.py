"""The service host: the process that loads the service plugins and runs their tasks.

The kernel starts it, pings it and restarts it when it dies or hangs, as it does drivers. It
is two things at once:

- a child of the kernel on a private channel (a DEALER whose routing id is "services"), whose
  messages are specs/channel.py's ServiceMessages: the kernel sends Call, Cancel, Ping
  and Shutdown; the host answers HostHello, then CallDelta, Result or Error for each
  call, and Pong;
- an ordinary userland process of the kernel (program name "llmos-services"): every task's
  own work (infer, embed, memwrite, memsearch...) goes through syscalls on the kernel's socket,
  so a service can do nothing that a program could not.

    python -m llmos.services.host --channel ipc://... --kernel ipc://... --token-fd N [--read-dir DIR ...]

Calls wait in a queue per caller and run in turn (callqueue.py); a task's CPU-heavy work runs on
worker threads, within a budget, and a task that holds the loop anyway is interrupted (workers.py): the
loop answers the kernel's pings whatever one caller sends.

It proves to the kernel that it is the kernel's own host with a token it reads from the pipe
`--token-fd` at start and closes at once: never from its environment or its command line, which
other processes of the same uid can read in /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import signal
import sys
import time

import structlog
import zmq
import zmq.asyncio

from llmos.specs import channel
from llmos.specs.abi import ArgError
from llmos.specs.channel import ChannelError, ServiceMessage
from llmos.userland.client import AsyncClient, LLMOSError

from . import plugins
from .callqueue import CallQueue
from .context import TaskContext
from .hookspecs import ServiceError
from .workers import Budget, LoopHeld, LoopWatch, Workers

HOST_ID = b"services"
PROGRAM_NAME = "llmos-services"

log = structlog.get_logger("llmos.services")


def configure_logging() -> None:
    """JSON lines on stderr, which the host shares with the kernel (so they land where the kernel's
    own output goes), keyed as the kernel's are: event, level, timestamp; plus the host's pid."""
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True), structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    structlog.contextvars.bind_contextvars(host_pid=os.getpid())


class ServiceHost:
    def __init__(self, channel: str, kernel_socket: str, service_token: str | None = None,
                 read_dirs: list[str] | None = None):
        self.channel = channel
        self.kernel_socket = kernel_socket
        self.service_token = service_token
        self.read_dirs = list(read_dirs or [])
        self.catalog = plugins.Catalog()
        self.client: AsyncClient | None = None
        self.ctx = zmq.asyncio.Context()
        self.sock = None
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.calls: dict[int, asyncio.Task] = {}
        self.queue = CallQueue()
        self.workers = Workers()
        self.stopping = asyncio.Event()
        self.say_goodbye = False      # exit cleanly from the kernel (a reload); at kernel shutdown nobody listens

    def send(self, msg: ServiceMessage) -> None:
        self.outbox.put_nowait(msg)

    async def _writer(self) -> None:
        while True:
            msg = await self.outbox.get()
            await self.sock.send(channel.encode(msg))

    async def run(self) -> None:
        started = time.monotonic()
        self.catalog = plugins.load()
        self.client = AsyncClient(self.kernel_socket, name=PROGRAM_NAME, timeout=None,
                                  service_token=self.service_token)
        await self.client.connect()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, HOST_ID)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(self.channel)
        writer = asyncio.create_task(self._writer())
        watch = asyncio.create_task(self._watch_parent(os.getppid()))
        self.send(channel.HostHello(os.getpid(), self.catalog.describe()))
        log.info("services.up", services=sorted(self.catalog.services), failed=self.catalog.failed,
                 start_s=round(time.monotonic() - started, 3))
        reader = asyncio.create_task(self._read_loop())
        watch_loop = LoopWatch(asyncio.get_running_loop(), lambda task: task.get_name().startswith("call-"))
        watch_loop.start()
        try:
            await self.stopping.wait()
        finally:
            watch_loop.stop()
            reader.cancel()
            watch.cancel()
            for task in list(self.calls.values()):
                task.cancel()
            await asyncio.gather(*self.calls.values(), return_exceptions=True)
            for _ in range(100):     # up to a second for the last replies to leave
                if self.outbox.empty():
                    break
                await asyncio.sleep(0.01)
            writer.cancel()
            if self.say_goodbye:
                await self.client.close()
            self.sock.close(0)

    async def _watch_parent(self, parent: int) -> None:
        while True:
            await asyncio.sleep(1.0)
            if os.getppid() != parent:    # the kernel died without telling us: nothing left to serve
                self.stopping.set()
                return

    async def _read_loop(self) -> None:
        while True:
            try:
                msg = channel.decode(await self.sock.recv(), ServiceMessage)
            except ChannelError:
                continue
            if isinstance(msg, channel.Call):
                task = asyncio.create_task(self._call(msg), name=f"call-{msg.rid}")
                self.calls[msg.rid] = task
                task.add_done_callback(lambda _t, cid=msg.rid: self.calls.pop(cid, None))
            elif isinstance(msg, channel.Cancel):
                task = self.calls.get(msg.rid)
                if task is not None:
                    task.cancel()
            elif isinstance(msg, channel.Ping):
                self.send(channel.Pong(msg.t))
            elif isinstance(msg, channel.Shutdown):
                self.say_goodbye = msg.reload
                self.stopping.set()
                return

    async def _call(self, msg: channel.Call) -> None:
        try:
            result = await self._run_task(msg)
        except asyncio.CancelledError:
            return     # the kernel already answered the caller (deadline, cancel, reaped, shutdown)
        except LoopHeld as exc:
            log.warning("services.loop_held", service=msg.service, task=msg.task, caller=msg.caller)
            self.send(channel.Error(msg.rid, "ETIMEDOUT", f"{msg.service}.{msg.task}: {exc}; a task must run "
                                                          f"CPU-heavy work with `await ctx.cpu(fn, ...)`"))
        except ServiceError as exc:     # CallError makes an errno the ABI does not know EIO
            self.send(channel.Error(msg.rid, exc.errno, exc.message))
        except ArgError as exc:
            self.send(channel.Error(msg.rid, "EINVAL", str(exc)))
        except LLMOSError as exc:   # one of the task's own syscalls failed: pass its errno on
            self.send(channel.Error(msg.rid, exc.errno, f"{msg.service}.{msg.task}: {exc.message}"))
        except Exception as exc:
            log.exception("services.task_failed", service=msg.service, task=msg.task)
            self.send(channel.Error(msg.rid, "EIO",
                                        f"{msg.service}.{msg.task} failed: {exc.__class__.__name__}: {exc}"))
        else:
            self.send(channel.Result(msg.rid, result))

    async def _run_task(self, msg: channel.Call) -> dict:
        service = self.catalog.services.get(msg.service)
        if service is None:
            raise ServiceError("ENOENT", f"no service '{msg.service}'; this host offers "
                                         f"{', '.join(sorted(self.catalog.services)) or 'none'} (see svc_list)")
        entry = service.tasks.get(msg.task)
        if entry is None:
            raise ServiceError("ENOENT", f"service '{service.name}' has no task '{msg.task}'; "
                                         f"it has {', '.join(service.tasks)}")
        args = entry.schema.validate(msg.args or {})
        ctx = TaskContext(self, msg.rid, service.name, msg.caller or {}, bool(msg.stream), msg.deadline)
        async with self.queue.slot(ctx.key):        # its turn among this caller's calls, and the others'
            budget = Budget(f"{service.name}.{msg.task}", entry.task.cost_limit_s, ctx.deadline)
            with budget:
                try:
                    async with asyncio.timeout(budget.seconds) as limit:
                        result = await self._run(entry.task.fn, ctx, args)
                except TimeoutError:
                    if limit.expired():
                        raise budget.error() from None
                    raise
        if isinstance(result, str):
            result = {"text": result}
        elif result is None:
            result = {}
        elif not isinstance(result, dict):
            result = {"value": result}
        if ctx.emitted and "text" not in result:
            result["text"] = "".join(ctx.emitted)
        return result

    @staticmethod
    async def _run(fn, ctx: TaskContext, args: dict):
        """An async task on the loop; a plain one on a worker thread of the caller's (ctx.cpu)."""
        if inspect.iscoroutinefunction(fn):
            return await fn(ctx, **args)
        result = await ctx.cpu(fn, ctx, **args)
        return await result if inspect.isawaitable(result) else result


def read_token(fd: int) -> str:
    """The kernel's token from the inherited pipe, which is closed after (the kernel wrote it whole)."""
    chunks = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llmos-services", description=__doc__.splitlines()[0])
    p.add_argument("--channel", required=True, help="the kernel's private service channel")
    p.add_argument("--kernel", required=True, help="the kernel's socket, for the host's own syscalls")
    p.add_argument("--token-fd", type=int, default=None, help="an inherited pipe holding the kernel's token")
    p.add_argument("--read-dir", action="append", default=[], help="a folder tasks may read files under")
    args = p.parse_args(argv)
    token = read_token(args.token_fd) if args.token_fd is not None else None
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is the kernel's to handle
    configure_logging()
    loop = asyncio.new_event_loop()     # not asyncio.run: it would wait for a plain task stuck on a thread
    code = 0
    try:
        loop.run_until_complete(ServiceHost(args.channel, args.kernel, token, args.read_dir).run())
    except Exception:
        log.exception("services.failed")
        code = 1
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
