"""What the `llmos` commands share, plugin commands included: a client, tables, streamed text, typed lines."""

from __future__ import annotations

import click

from ..client import Client, SyncStream


class OrderedGroup(click.Group):
    """A command group whose --help lists its subcommands in the order they were added."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


def connect(name: str, caps: list[str] | None = None) -> Client:
    """A client of the kernel at `llmos --socket` (else $LLMOS_SOCKET, else the per-user socket),
    as the program `name`, with no timeout: a command waits as long as its call takes."""
    socket = click.get_current_context().find_root().params.get("socket")
    return Client(socket=socket, name=name, caps=caps, timeout=None)


def size(n: float) -> str:
    """Bytes for people: 512 B, 1.5 KiB, 3.2 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """rows as aligned columns; `columns` lists (key, TITLE) pairs."""
    cells = [[title for _, title in columns]] + [[str(r.get(key, "")) for key, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def echo_stream(stream: SyncStream) -> dict:
    """Print a stream's text as it comes, then a newline; its final result."""
    for delta in stream:
        click.echo(delta, nl=False)
    click.echo()
    return stream.result


def typed_lines(prompt: str):
    """Lines the user types, until an empty line or Ctrl-D."""
    while True:
        try:
            line = input(prompt)
        except EOFError:
            click.echo()
            return
        if not line.strip():
            return
        yield line
