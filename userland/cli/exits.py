"""How a `llmos` command ends: one exit code per kind of outcome, and one line on stderr for each failure.

A user who meets a traceback stops trusting the tool, so nothing escapes as one: an errno becomes
`llmos CMD: ERRNO: message`, a closed stdout ends the command quietly (as SIGPIPE ends `cat`), and
a bug prints one line naming the file that holds its full traceback.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback

import click

from ..errors import KernelUnavailable, LLMOSError

EXIT_OK = 0
EXIT_FAILED = 1          # a syscall answered an errno, or the command's own input was wrong (a missing file)
EXIT_USAGE = 2           # unknown command or option, a bad argument (click's own code)
EXIT_NO_KERNEL = 3       # no kernel answered, or it went away during the command
EXIT_INTERNAL = 4        # a bug in llmos: the line names the file with the traceback
EXIT_INTERRUPTED = 130   # Ctrl-C (128 + SIGINT)
EXIT_BROKEN_PIPE = 141   # whoever read stdout stopped reading (128 + SIGPIPE), e.g. `llmos ps | head -1`

EPILOG = f"""\b
Exit codes:
  {EXIT_OK}    success
  {EXIT_FAILED}    the command failed: stderr has one line "llmos CMD: ERRNO: message"
  {EXIT_USAGE}    usage error (unknown command, option or bad argument)
  {EXIT_NO_KERNEL}    no kernel answered on the socket, or it went away
  {EXIT_INTERNAL}    internal error: stderr names the file with the full traceback
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
  {EXIT_BROKEN_PIPE}  stdout was closed by its reader (e.g. `| head`); nothing is printed
"""


class CommandFailed(click.ClickException):
    """A command ends with one line on stderr, `PREFIX: ERRNO: message`, and its exit code."""

    def __init__(self, errno: str, message: str, exit_code: int = EXIT_FAILED, prefix: str | None = None):
        super().__init__(message)
        self.errno = errno
        self.exit_code = exit_code
        self.prefix = prefix or _command_path()

    def show(self, file=None) -> None:
        click.echo(f"{self.prefix}: {self.errno}: {self.message}", err=True)


def fail(errno: str, message: str) -> CommandFailed:
    """The failure of the running command with errno (ENOENT, EINVAL...): `raise fail(...)`."""
    return CommandFailed(errno, message)


def from_exception(exc: BaseException) -> CommandFailed | None:
    """The CommandFailed that reports exc, or None for what is not a failure of ours to report."""
    if isinstance(exc, KernelUnavailable):
        return CommandFailed(exc.errno, exc.message, EXIT_NO_KERNEL)
    if isinstance(exc, LLMOSError):
        return CommandFailed(exc.errno, exc.message)
    if isinstance(exc, (click.ClickException, click.exceptions.Exit, click.Abort, BrokenPipeError,
                        KeyboardInterrupt, SystemExit)):
        return None
    return internal_error(exc)


def internal_error(exc: BaseException) -> CommandFailed:
    """A bug: the full traceback goes to a private file, the user gets one line that names it."""
    fd, path = tempfile.mkstemp(prefix="llmos-error-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(f"llmos {' '.join(sys.argv[1:])}\n\n")
        traceback.print_exception(exc, file=f)
    return CommandFailed("internal error", f"{exc.__class__.__name__}: {exc} (full traceback in {path})",
                         EXIT_INTERNAL)


def silence_stdout() -> int:
    """After a broken pipe: point stdout at /dev/null so the interpreter's last flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):      # stdout is not a file (a test's capture): nothing to flush
        pass
    finally:
        os.close(devnull)
    return EXIT_BROKEN_PIPE


def _command_path() -> str:
    """`llmos SUBCOMMAND`, the name errors go under (as `ls: cannot access ...`)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return "llmos"
    root = ctx.find_root()
    return " ".join(filter(None, [root.info_name or "llmos", root.invoked_subcommand]))
