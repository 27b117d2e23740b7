"""`llmos logs` and `llmos audit`: the kernel's own files in its state dir, read on this machine.

They read files, not syscalls: the kernel writes its log and its audit log into its state dir
(0700, so only the operator who booted it can read them). The state dir is --state-dir, else
$LLMOS_STATE_DIR, else the one a running kernel names in `sysinfo`. --follow polls the file by
its path, so it carries on into the new file when the kernel rotates the old one away.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Iterator

import click

from llmos.specs import auditlog
from llmos.specs.protocol import KERNEL_LOG

from .common import connect
from .exits import fail

POLL_S = 0.25


def state_dir_option(command):
    return click.option("--state-dir", default=None, envvar="LLMOS_STATE_DIR", metavar="DIR",
                        help="the kernel's state dir (default: $LLMOS_STATE_DIR, else the running kernel's)")(command)


def find_state_dir(given: str | None) -> Path:
    """The state dir, checked: ENOENT if there is none, EACCES if it is another user's (it is 0700)."""
    if given:
        directory = Path(given)
    else:
        with connect("llmos-statefiles") as c:
            directory = Path(c.sysinfo()["state_dir"])
    if not directory.is_dir():
        raise fail("ENOENT", f"no state dir at {directory} (on this machine)")
    if not os.access(directory, os.R_OK | os.X_OK):
        raise fail("EACCES", f"{directory} is readable only by the user who booted the kernel")
    return directory


def open_file(path: Path):
    """path opened for reading bytes (a line is decoded once whole), or the one-line failure."""
    try:
        return open(path, "rb")
    except OSError as exc:
        raise fail(errno.errorcode.get(exc.errno, "EIO"), f"{path}: {exc.strerror}") from None


def lines_of(f) -> Iterator[str]:
    for raw in f:
        yield raw.decode("utf-8", "replace")


def last(lines: Iterator[str], n: int | None) -> Iterator[str]:
    """All the lines, or only the last n."""
    return lines if n is None else iter(deque(lines, maxlen=n))


def lines_option(command):
    return click.option("-n", "--lines", type=click.IntRange(min=0), default=None,
                        help="only the last N lines (then, with --follow, the new ones)")(command)


def follow_option(command):
    return click.option("-f", "--follow", "following", is_flag=True,
                        help="then print lines as the kernel writes them (Ctrl-C ends)")(command)


def follow(path: Path, f) -> Iterator[str]:
    """Lines appended to path from f's position on, for ever; a new file at path (rotation) is read
    from its start once the old one is read to its end."""
    part = b""
    while True:
        part += f.readline()
        if part.endswith(b"\n"):
            yield part.decode("utf-8", "replace")
            part = b""
            continue
        try:
            replaced = os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            replaced = False      # between a rotation's two renames
        if replaced:
            f.close()
            f = open_file(path)
        else:
            time.sleep(POLL_S)


@click.command(help="the kernel's log (kernel.log in its state dir)")
@follow_option
@lines_option
@state_dir_option
def logs(following: bool, lines: int | None, state_dir: str | None) -> None:
    path = find_state_dir(state_dir) / KERNEL_LOG
    f = open_file(path)
    for line in last(lines_of(f), lines):
        click.echo(line, nl=False)
    if following:
        for line in follow(path, f):
            click.echo(line, nl=False)


def rotated_lines(path: Path) -> Iterator[str]:
    with open_file(path) as f:
        yield from lines_of(f)


def readable(line: str) -> str:
    """An audit line for people: its time, its event, then its fields (not the chain's hash)."""
    try:
        record = json.loads(line)
    except ValueError:
        return line.rstrip("\n")
    when = datetime.fromtimestamp(record.pop("ts", 0)).isoformat(timespec="seconds")
    record.pop("prev", None)
    event = record.pop("event", "?")
    fields = " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in record.items())
    return f"{when}  {event}  {fields}".rstrip()


def check(directory: Path) -> None:
    """`audit --verify`: the chain, and with the kernel's key its checkpoints and head file."""
    try:
        verdict = auditlog.verify_dir(directory)
    except OSError as exc:
        raise fail(errno.errorcode.get(exc.errno, "EIO"), f"{exc.filename}: {exc.strerror}") from None
    if verdict.problem:
        at_a_line = re.match(r"\S+:\d+: ", verdict.problem)
        raise fail("EBADMSG", f"{verdict.problem} ({verdict.lines} lines " +
                   ("before it are intact)" if at_a_line else "read)"))
    click.echo(f"{verdict.lines} lines, chain intact")
    for note in verdict.notes:
        click.echo(f"note: {note}")


@click.command(help="the audit log: who connected, what was refused, every admin act (audit.log in the state dir)")
@follow_option
@lines_option
@click.option("--verify", is_flag=True,
              help="check the hash chain over the log and its rotated files, and (with the kernel's key, "
                   "as its operator) its signed checkpoints and head: 'N lines, chain intact', or the first "
                   "problem (a changed line, lines cut at either end, a file removed) and exit 1")
@click.option("--json", "as_json", is_flag=True, help="print the lines as they are stored (JSON)")
@state_dir_option
def audit(following: bool, lines: int | None, verify: bool, as_json: bool, state_dir: str | None) -> None:
    directory = find_state_dir(state_dir)
    paths = auditlog.files(directory)
    if not paths:
        raise fail("ENOENT", f"no {auditlog.FILE_NAME} in {directory}")
    if verify:
        check(directory)
        return
    show = (lambda line: line.rstrip("\n")) if as_json else readable
    f = open_file(paths[-1])
    for line in last(itertools.chain(*(rotated_lines(p) for p in paths[:-1]), lines_of(f)), lines):
        click.echo(show(line))
    if following:
        for line in follow(paths[-1], f):
            click.echo(show(line))
