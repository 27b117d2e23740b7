"""What the `llmos` commands share, plugin commands included: a client, tables, streamed text, typed
lines, and text from the user that may not be UTF-8.

The kernel speaks UTF-8 only; Python keeps the bytes of argv and stdin that are not UTF-8 as
surrogate escapes, which no frame can carry. Text (a prompt, a document) is decoded with U+FFFD
for those bytes and stderr says so; a value that need not be text (`mem put`) stays bytes.
"""

from __future__ import annotations

import errno
import os
import sys

import click

from llmos.specs.protocol import MAX_FRAME_BYTES

from ..client import Client, SyncStream
from .exits import fail


class OrderedGroup(click.Group):
    """A command group whose --help lists its subcommands in the order they were added."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


def connect(name: str, caps: list[str] | None = None) -> Client:
    """A client of the kernel at `llmos --socket` (else $LLMOS_SOCKET, else the per-user socket),
    as the program `name`, with no timeout: a command waits as long as its call takes."""
    root = click.get_current_context().find_root().params
    return Client(socket=root.get("socket"), name=name, caps=caps, timeout=None, key=root.get("key"))


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """rows as aligned columns; `columns` lists (key, TITLE) pairs."""
    cells = [[title for _, title in columns]] + [[str(r.get(key, "")) for key, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def echo_stream(stream: SyncStream, waiting=None) -> dict:
    """Print a stream's text as it comes, then a newline (none if no text came); its final result.
    `waiting` (a progress.ProgressLine) is shown the stream's progress frames until the text starts."""
    printed = False
    if waiting is not None:
        stream.on_progress = waiting.show
    try:
        for delta in stream:
            if delta and not printed and waiting is not None:
                waiting.done()
            click.echo(delta, nl=False)
            printed = printed or bool(delta)
    finally:
        if waiting is not None:
            waiting.done()
    if printed:
        click.echo()
    return stream.result


def typed_lines(prompt: str):
    """Lines the user types (an empty one is skipped), until Ctrl-D or /quit."""
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")     # utf8_text decides, line by line
    while True:
        try:
            line = input(prompt)
        except EOFError:
            click.echo()
            return
        if line.strip() == "/quit":
            return
        if line.strip():
            yield utf8_text(line, "the line")


def warn(message: str) -> None:
    ctx = click.get_current_context(silent=True)
    click.echo(f"{ctx.command_path if ctx else 'llmos'}: warning: {message}", err=True)


def utf8_text(text: str, what: str) -> str:
    """text that any frame can carry: bytes that were not UTF-8 become U+FFFD, and stderr says so."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:      # surrogates that are not escaped bytes
        raw = text.encode("utf-8", "replace")
    warn(f"{what} is not valid UTF-8: its undecodable bytes were replaced with U+FFFD")
    return raw.decode("utf-8", "replace")


class Utf8Text(click.ParamType):
    """A str argument that any frame can carry, decoded as utf8_text does."""

    name = "text"

    def convert(self, value, param, ctx):
        what = param.human_readable_name if param is not None else "the argument"
        return utf8_text(value, what) if isinstance(value, str) else value


TEXT = Utf8Text()


def decode_text(data: bytes, what: str) -> str:
    """Bytes as text, as utf8_text decodes them."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return utf8_text(data.decode("utf-8", "surrogateescape"), what)


def read_input(path: str, limit: int = MAX_FRAME_BYTES) -> bytes:
    """The bytes of a file, or of stdin for "-", as a one-line failure (ENOENT, EISDIR, ...) when it
    cannot be read; EINVAL past `limit`, the most one frame carries, before reading more."""
    what = "stdin" if path == "-" else path
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
    except OSError as exc:
        raise fail(errno.errorcode.get(exc.errno, "EIO"), f"{what}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise fail("EINVAL", f"{what} holds more than {limit} bytes, the kernel's frame limit (max_frame); "
                             f"nothing was sent")
    return data


def read_text(path: str) -> str:
    """A file (or stdin for "-") as text: decoded as decode_text does; EINVAL when it holds none."""
    text = decode_text(read_input(path), "stdin" if path == "-" else os.path.basename(path))
    if not text.strip():
        raise fail("EINVAL", f"{'stdin' if path == '-' else path} is empty: there is no text to read")
    return text
