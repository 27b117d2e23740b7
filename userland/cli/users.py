"""`llmos user`: the operator adds, lists, removes and re-keys the users of a kernel (admin syscalls).

Each user gets a CurveZMQ key file from the kernel; `user add` and `user rotate` print its path and
the one line the user runs with it, since that file is all they need to connect.
"""

from __future__ import annotations

import click

from llmos.specs.keys import SOCKET_META, read_key_file
from llmos.specs.units import exact_size, parse_size

from .common import OrderedGroup, connect, table


def parse_quotas(ctx, param, items: tuple[str, ...]) -> dict[str, int | str]:
    """--quota name=value: a count, a size such as 512MiB for the *_bytes quotas, or a share of each
    device such as 50% for reserve_bytes (the kernel checks the share)."""
    quotas = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if sep and name == "reserve_bytes" and raw.strip().endswith("%"):
            quotas[name] = raw.strip()
            continue
        try:
            quotas[name] = parse_size(raw if sep and name else "")
        except ValueError:
            raise click.BadParameter(f"wants name=number (e.g. requests=8, mem_bytes=512MiB or reserve_bytes=50%), "
                                     f"got '{item}'", ctx, param) from None
    return quotas


def shown_quota(name: str, value: int | str | None) -> str:
    """A quota as `user add` prints it: sizes in whole KiB/MiB/GiB where they are, none as unlimited."""
    if value is None:
        return f"{name}=unlimited"
    if name.endswith("_bytes") and isinstance(value, int):
        return f"{name}={exact_size(value)}"
    return f"{name}={value}"


def parse_caps(ctx, param, value: str | None) -> list[str] | None:
    return None if value is None else [c.strip() for c in value.split(",") if c.strip()]


@click.group(cls=OrderedGroup, help="users of this kernel and their keys: add, ls, rm, rotate (needs admin)")
def user() -> None:
    pass


def _admin():
    return connect("llmos-user", caps=["admin"])


def _show_key(r: dict) -> None:
    """Where the user's key file is and the line they run with it."""
    try:
        socket = read_key_file(r["key_file"]).get(SOCKET_META)
    except (OSError, ValueError):
        socket = None
    click.echo(f"key file: {r['key_file']} (secret: give it to {r['name']} alone)")
    click.echo(f"use it:   LLMOS_KEY={r['key_file']} llmos{f' --socket {socket}' if socket else ''} ps")


@user.command("add", help="add a user with a key of its own; prints the key file to hand over")
@click.argument("name")
@click.option("--caps", default=None, callback=parse_caps, metavar="CAP,CAP",
              help="the capabilities it may hold (default: the kernel's default set; admin only if named)")
@click.option("--quota", "quotas", multiple=True, callback=parse_quotas, metavar="NAME=VALUE",
              help="a limit of its own over the kernel's defaults: processes, requests, tokens_per_minute, "
                   "reserve_bytes, mem_bytes, mem_keys (sizes take KiB, MiB, GiB; reserve_bytes also a share "
                   "of each device, e.g. 50%)")
def user_add(name: str, caps: list[str] | None, quotas: dict[str, int | str]) -> None:
    with _admin() as c:
        r = c.user_add(name, caps=caps, quotas=quotas or None)
    click.echo(f"user {r['name']}: caps {','.join(r['caps']) or '-'}")
    click.echo(f"quotas: {' '.join(shown_quota(k, v) for k, v in r['effective_quotas'].items())}")
    click.echo("        (raise them with --quota NAME=VALUE for this user, [quotas] in the config for every user)")
    _show_key(r)


@user.command("ls", help="list the users, their capabilities and quotas")
def user_ls() -> None:
    with _admin() as c:
        users = c.user_list()["users"]
    rows = [{"name": u["name"], "caps": ",".join(u["caps"]) or "-",
             "quotas": " ".join(f"{k}={v}" for k, v in u["quotas"].items()) or "-",
             "key": u["public_key"][:12] + "..."} for u in users]
    click.echo(table(rows, [("name", "NAME"), ("caps", "CAPS"), ("quotas", "QUOTAS"), ("key", "PUBLIC KEY")]))


@user.command("rm", help="remove a user: its key is refused and its processes reaped (its memory stays)")
@click.argument("name")
def user_rm(name: str) -> None:
    with _admin() as c:
        r = c.user_remove(name)
    click.echo(f"removed {r['name']}; reaped {r['reaped']} processes")


@user.command("rotate", help="give a user a new key: the old one is refused and its processes reaped")
@click.argument("name")
def user_rotate(name: str) -> None:
    with _admin() as c:
        r = c.user_rotate(name)
    click.echo(f"user {r['name']}: new key")
    _show_key(r)


