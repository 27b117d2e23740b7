"""The `llmos` root command: its subcommands, plugin commands loaded on first need, errors as exit codes.

Every subcommand except `boot` is an ordinary userland program: it connects to the kernel's
socket as a process and makes syscalls, exactly as any other program would.
"""

from __future__ import annotations

from typing import Callable

import click

from ..errors import KernelUnavailable, LLMOSError
from .boot import boot, demo
from .common import OrderedGroup
from .generate import chat, run
from .memory import mem
from .models import devices, load, models, unload
from .plugins import add_installed_commands
from .processes import kill, ps, sysinfo
from .services import svc

EXIT_SYSCALL_FAILED = 1
EXIT_NO_KERNEL = 3
EXIT_INTERRUPTED = 130


class CommandFailed(click.ClickException):
    """A syscall failed or no kernel answered: the message as it is, and its exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(self.message, err=True)


class Llmos(OrderedGroup):
    """Adds the plugins' commands only when asked for one that is not built in or for the whole
    list (--help): `llmos ps` imports no plugin."""

    def __init__(self, *args, add_plugin_commands: Callable[[click.Group], None], **kwargs):
        super().__init__(*args, **kwargs)
        self._add_plugin_commands = add_plugin_commands
        self._plugins_added = False

    def _add_plugins(self) -> None:
        if not self._plugins_added:
            self._plugins_added = True
            self._add_plugin_commands(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugins()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands:
            self._add_plugins()
        return self.commands.get(name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KernelUnavailable as exc:
            raise CommandFailed(f"llmos: {exc.message}", EXIT_NO_KERNEL) from exc
        except LLMOSError as exc:
            raise CommandFailed(f"llmos {ctx.invoked_subcommand}: {exc.errno}: {exc.message}",
                                EXIT_SYSCALL_FAILED) from exc


BUILT_IN_COMMANDS = (boot, ps, devices, models, sysinfo, load, unload, kill, run, chat, mem, svc, demo)


def make_cli(add_plugin_commands: Callable[[click.Group], None] = add_installed_commands) -> Llmos:
    """The root command with the built-in subcommands; add_plugin_commands(group) adds the plugins'."""

    @click.group(cls=Llmos, add_plugin_commands=add_plugin_commands,
                 help="llmos: an operating system for language models.")
    @click.option("--socket", default=None,
                  help="kernel socket URL (default: $LLMOS_SOCKET or the per-user ipc socket)")
    def llmos(socket: str | None) -> None:
        """The subcommands read --socket through common.connect."""

    for command in BUILT_IN_COMMANDS:
        llmos.add_command(command)
    return llmos


cli = make_cli()


def main(argv: list[str] | None = None) -> int:
    """`llmos ARGS...`: the exit status (0, 1 a syscall failed, 2 a usage error, 3 no kernel, 130 ^C)."""
    try:
        status = cli.main(args=argv, prog_name="llmos", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        return EXIT_INTERRUPTED
    return status if isinstance(status, int) else 0
