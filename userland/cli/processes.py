"""`llmos ps`, `sysinfo` and `kill`: the kernel's process table and facts."""

from __future__ import annotations

import json

import click

from llmos.specs.units import format_size

from .common import connect, table


@click.command(help="list processes")
def ps() -> None:
    with connect("llmos-ps") as c:
        rows = c.ps()
    for r in rows:
        r["age"] = f"{r['age_s']:.1f}s"
        r["reserved"] = format_size(r["reserved_bytes"])
    click.echo(table(rows, [("pid", "PID"), ("name", "NAME"), ("age", "AGE"), ("requests", "REQS"),
                            ("tokens", "TOKENS"), ("reserved", "RESERVED")]))


@click.command(help="kernel facts")
def sysinfo() -> None:
    with connect("llmos-sysinfo") as c:
        click.echo(json.dumps(c.sysinfo(), indent=2))


@click.command(help="reap a process (needs the admin capability)")
@click.argument("pid", type=int)
def kill(pid: int) -> None:
    with connect("llmos-kill", caps=["admin"]) as c:
        c.kill(pid)
    click.echo(f"killed {pid}")


@click.command(help="shut the kernel down (needs the admin capability); requests in flight end with ECANCELED")
@click.option("--reason", default="shut down by an admin with `llmos stop`", show_default=True,
              help="told to every program whose request it cancels")
def stop(reason: str) -> None:
    with connect("llmos-stop", caps=["admin"]) as c:
        c.shutdown(reason=reason)
    click.echo("the kernel is stopping")
