"""The `llmos` root command: its subcommands, plugin commands loaded on first need, errors as exit codes.

Every subcommand except `boot` is an ordinary userland program: it connects to the kernel's
socket as a process and makes syscalls, exactly as any other program would. How each failure is
shown and which exit code it gets is exits.py's.
"""

from __future__ import annotations

import sys
from typing import Callable

import click

from .exits import EPILOG, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, from_exception, internal_error, silence_stdout
from .boot import boot, demo
from .evaluate import evaluate_command
from .common import OrderedGroup
from .generate import chat, embed, run
from .health import health
from .jobs import jobs, tune
from .memory import mem
from .models import devices, load, models, unload
from .plugins import add_installed_commands
from .processes import kill, ps, stop, sysinfo
from .serve import serve
from .services import svc
from .statefiles import audit, logs
from .top import top
from .users import user
from .voice import voice


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
        except BrokenPipeError:     # before click's own handler, which would exit 1 as if it had failed
            raise click.exceptions.Exit(silence_stdout()) from None
        except Exception as exc:
            failed = from_exception(exc)
            if failed is None:
                raise
            raise failed from exc


BUILT_IN_COMMANDS = (boot, ps, devices, models, sysinfo, load, unload, kill, stop, run, chat, embed, mem, svc, user,
                     logs, audit, top, serve, health, demo, evaluate_command,
                     tune, jobs, voice)


def make_cli(add_plugin_commands: Callable[[click.Group], None] = add_installed_commands) -> Llmos:
    """The root command with the built-in subcommands; add_plugin_commands(group) adds the plugins'."""

    @click.group(cls=Llmos, add_plugin_commands=add_plugin_commands, epilog=EPILOG,
                 help="llmos: an operating system for language models.")
    @click.option("--socket", default=None,
                  help="kernel socket URL (default: $LLMOS_SOCKET, the key file's kernel, or the per-user ipc socket)")
    @click.option("--key", default=None, envvar="LLMOS_KEY", metavar="PATH",
                  help="your key file from `llmos user add` (default: $LLMOS_KEY); needed on a tcp socket")
    def llmos(socket: str | None, key: str | None) -> None:
        """The subcommands read --socket and --key through common.connect."""

    for command in BUILT_IN_COMMANDS:
        llmos.add_command(command)
    return llmos


cli = make_cli()


def main(argv: list[str] | None = None) -> int:
    """`llmos ARGS...`: the exit status, one of exits.py's EXIT_* codes."""
    try:
        status = cli.main(args=argv, prog_name="llmos", standalone_mode=False)
        sys.stdout.flush()        # a closed pipe shows here, not in the interpreter's last words
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return silence_stdout()
    except Exception as exc:      # outside any subcommand (option parsing, plugin loading)
        internal_error(exc).show()
        return EXIT_INTERNAL
    return status if isinstance(status, int) else EXIT_OK
