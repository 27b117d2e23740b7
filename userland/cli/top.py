"""`llmos top`: what the machine is doing now, refreshed in place, as `top` and `nvtop` show it.

The picture is a pure function of one `stats` reply (render), so it is tested on a real kernel's
figures without a terminal, and `--once` prints exactly what the live view shows. The loop is
thin: ask for stats, draw, wait for the interval or a key. Quitting (q, or Ctrl-C, which is how
people leave top) is success, not an interruption.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import tty
from contextlib import contextmanager
from typing import Iterator

import click
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from llmos.specs.units import format_duration, format_latency, size_unit

from ..errors import ERRORS
from .common import connect

BAR_WIDTH = 10
QUIT_KEYS = ("q", "Q")


class PipeConsole(Console):
    """A closed stdout is the CLI's to report (quietly, exit 141, exits.py); rich's own rule exits 1."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def render(stats: dict, title: str) -> Group:
    """The whole frame for one `stats` reply; `title` names the kernel (version and socket)."""
    return Group(header(stats, title), devices_table(stats["devices"]), models_table(stats["models"]),
                 processes_table(stats["processes"]))


def header(stats: dict, title: str) -> Text:
    ttft, requests, services = stats["latency"]["ttft_s"], stats["requests"], stats["services"]
    text = Text()
    text.append(title, style="bold")
    text.append(f"  up {format_duration(stats['uptime_s'])}\n")
    if stats["ready"]:
        text.append("ready", style="green")
    else:
        text.append(f"not ready: {stats.get('ready_reason') or 'no reason given'}", style="bold red")
    text.append(f"  services {services['state']} ({services['restarts']} restarts)",
                style="" if services["state"] == "up" else "red")
    text.append(f"\nprocesses {len(stats['processes'])}  tokens/s {stats['throughput']['tokens_per_s']:.1f}"
                f"  TTFT p50 {format_latency(ttft['p50'])} p95 {format_latency(ttft['p95'])} ({ttft['count']} in the last min)")
    text.append(f"\nerrors {requests['errors']} of {requests['total']} replies  auth failures {stats['auth_failures']}"
                f"  tokens {stats['tokens']['prompt']} prompt, {stats['tokens']['generated']} generated")
    return text


def devices_table(devices: list[dict]) -> Table:
    t = _table("DEVICE", "DRIVER", "MEMORY used/reserved/total", "KV", "QUEUED", "RUN", "RESTARTS")
    t.caption = "memory: █ models  ▒ reserved by programs (alloc_gpu)  ░ free"
    for d in devices:
        memory = memory_bar(d["used_bytes"], d["reserved_bytes"], d["total_bytes"])
        memory.append(" " + amounts(d["used_bytes"], d["reserved_bytes"], d["total_bytes"]))
        kv = "-" if d["kv_usage"] is None else f"{d['kv_usage']:.0%}"
        t.add_row(d["name"], d["driver"], memory, kv, str(d["queued"]), str(d["running"]), str(d["restarts"]),
                  style="" if d["driver"] == "up" else "red")
    return t


def models_table(models: list[dict]) -> Table:
    t = _table("MODEL", "DEVICE", "STATE")
    for m in models:
        t.add_row(m["name"], m["device"] or "-", m["state"])
    return t


def processes_table(processes: list[dict]) -> Table:
    """Busiest first: tokens per second over the last minute, then tokens over the process's life."""
    t = _table("PID", "NAME", "PRINCIPAL", "REQS", "TOKENS", "TOK/S")
    for p in sorted(processes, key=lambda p: (-p["tokens_per_s"], -p["tokens"], p["pid"])):
        t.add_row(str(p["pid"]), p["name"], p["principal"], str(p["requests"]), str(p["tokens"]),
                  f"{p['tokens_per_s']:.1f}")
    return t


def memory_bar(used: int, reserved: int, total: int, width: int = BAR_WIDTH) -> Text:
    """Models' memory as █, memory reserved by alloc_gpu as ▒ (both count as used), free as ░."""
    if total <= 0:
        return Text("░" * width, style="dim")
    models_cells = round(width * min(max(used - reserved, 0), total) / total)
    reserved_cells = min(round(width * reserved / total), width - models_cells)
    bar = Text("█" * models_cells, style="cyan")
    bar.append("▒" * reserved_cells, style="magenta")
    bar.append("░" * (width - models_cells - reserved_cells), style="dim")
    return bar


def amounts(*values: int) -> str:
    """Sizes in the unit of the last one: '30.0/8.0/140.0 GiB'."""
    unit, scale = size_unit(values[-1])
    return "/".join(f"{v / scale:.1f}" for v in values) + f" {unit}"


def _table(*columns: str) -> Table:
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0), show_edge=False)
    for name in columns:
        t.add_column(name, no_wrap=True, justify="right" if name in {"PID", "REQS", "TOKENS", "TOK/S", "KV",
                                                                      "QUEUED", "RUN", "RESTARTS"} else "left")
    return t


@click.command(help="a live view of devices, models, processes and latency (q or Ctrl-C quits)")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True, metavar="SECONDS",
              help="seconds between refreshes")
@click.option("--once", is_flag=True, help="print one frame to stdout and exit (plain text when not a terminal)")
def top(interval: float, once: bool) -> None:
    with _connect() as c:
        info = c.sysinfo()
        title = f"llmos {info['kernel']} on {info['socket']}"
        console = PipeConsole()
        if once:
            console.print(render(c.stats(), title))
            return
        try:
            with keys() as pressed, screen(console) as draw:
                draw(render(c.stats(), title))
                while pressed(interval) not in QUIT_KEYS:
                    draw(render(c.stats(), title))
        except KeyboardInterrupt:
            pass


@contextmanager
def screen(console: Console) -> Iterator:
    """draw(frame): on a terminal, the frame replaces the last one (the alternate screen, left as it
    was after); elsewhere (a pipe, a file) frames follow one another, as `top -b` writes them."""
    if not console.is_terminal:
        yield lambda frame: console.print(frame, "")
        return
    with Live(console=console, auto_refresh=False, screen=True, vertical_overflow="crop") as live:
        yield lambda frame: live.update(frame, refresh=True)


def _connect():
    """As an admin when this connection may be one (an operator sees every principal's processes),
    else with `ps` alone (a user sees their own)."""
    try:
        return connect("llmos-top", caps=["ps", "admin"])
    except ERRORS["EPERM"]:
        return connect("llmos-top", caps=["ps"])


@contextmanager
def keys() -> Iterator:
    """wait(timeout) -> the key pressed within timeout, or None: stdin unbuffered while inside,
    restored after. Ctrl-C still raises KeyboardInterrupt (cbreak keeps signals)."""
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    saved = termios.tcgetattr(fd) if fd is not None else None

    def wait(timeout: float) -> str | None:
        if fd is None:
            select.select([], [], [], timeout)
            return None
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 1).decode(errors="replace") if ready else None

    try:
        if fd is not None:
            tty.setcbreak(fd, termios.TCSANOW)     # not TCSAFLUSH, which would drop a key typed already
        yield wait
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
