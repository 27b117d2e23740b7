"""The llmos plugin contract: everything a service plugin needs, on one screen.

A plugin is a module (found through the entry-point group ``llmos.services``) with a hook
implementation that registers named services, each a set of tasks:

    from llmos.services import Task, hookimpl

    async def shout(ctx, text: str, times: int = 1) -> dict:
        return {"text": " ".join([text.upper()] * times)}

    @hookimpl
    def register_services(register):
        register("echo", {"shout": Task(shout, "Repeat the text in capitals.",
                                        args={"text": {"type": "str"}, "times": {"type": "int", "default": 1, "min": 1}})},
                 description="A template for plugins.")

A task is ``fn(ctx, **args)``, plain or ``async``; plain ones run on a worker thread. It returns a
map (a str becomes ``{"text": str}``). Its args arrive checked against ``Task.args``, whose
entries use the syscall table's keys: ``type`` (str, int, float, bool, bytes, list, map, any,
unions like "str|null"), ``default`` or ``nullable = true`` (else required), ``doc``, ``min``,
``max``, ``max_len`` (of a str, bytes, or each string of a list), ``max_items`` (of a list or map),
and ``choices`` (the allowed values). Bound every argument, as the built-ins must: what is left open
is bounded only by the frame (32 MiB), and a big number reaches your code as it came. ``ctx`` offers:

    ctx.kernel         an llmos AsyncClient acting for the caller: infer, embed and the memory calls run as
                       the calling program (its namespace, quotas and fair share), never as the host
    ctx.caller         {"pid": int, "name": str, "principal": str} of the program that made the svc_call
    ctx.region(name)   a memory region name private to this service and the calling principal
    ctx.stream         whether the caller streams; ctx.emit(delta) sends it text as it is made
    ctx.deadline       seconds left before the caller's deadline, or None
    ctx.run(aw)        from a plain task: run an awaitable (a kernel call) and return its result
    ctx.cpu(fn, *a)    from an async task: `await` fn(*a) on a worker thread; CPU-heavy work goes there

The host's event loop serves every caller: an async task must not compute for long between awaits
(past 2 s it is interrupted, ETIMEDOUT), so it hands heavy work to ``ctx.cpu``. A call ends with
ETIMEDOUT after ``Task.cost_limit_s`` seconds of running (or at the caller's deadline, if sooner).

Raise ServiceError(errno, message) to answer with an errno (EINVAL, ENOENT...); any other
exception answers EIO with its message. Services run in the service host, a process of its own:
a plugin that crashes or hangs it costs only the calls in flight.

A plugin can also add subcommands to the `llmos` command, written with click; `connect(name)`
gives a client of the kernel the command line points at:

    import click
    from llmos.userland.cli import connect

    @click.command("shout", help="Repeat a text in capitals.")      # `llmos shout TEXT`
    @click.argument("text")
    def shout_command(text):
        with connect("llmos-shout") as c:
            click.echo(c.svc_call("echo", "shout", {"text": text})["text"])

    @hookimpl
    def register_commands(register):
        register(shout_command)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

PROJECT = "llmos"
ENTRY_POINT_GROUP = "llmos.services"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass
class Task:
    """One thing a service does: fn(ctx, **args) -> dict, its description and its argument schema."""

    fn: Callable[..., Any]
    description: str = ""
    args: dict[str, dict] = field(default_factory=dict)
    stream: bool = False          # True: it emits text deltas (ctx.emit) when the caller streams
    cost_limit_s: float = 60.0    # the longest one call may run (its work and its syscalls); then ETIMEDOUT


class ServiceError(Exception):
    """Raised by a task to answer with an errno other than EIO, e.g. ServiceError("EINVAL", "...")."""

    def __init__(self, errno: str, message: str):
        super().__init__(f"{errno}: {message}")
        self.errno = errno
        self.message = message


@hookspec
def register_services(register):
    """Register services: call register(name, {task_name: Task, ...}, description="") once per service."""


@hookspec
def register_commands(register):
    """Register `llmos` subcommands: call register(command) with a click.Command, once per command."""
