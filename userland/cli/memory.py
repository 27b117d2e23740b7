"""`llmos mem`: a program's durable memory regions from the terminal (get, put, ls, search, rm).

A value is whatever the user gives: text stays a str, anything that is not UTF-8 (a file, a
pipe, an argument) is stored as bytes, and `mem get` writes it back byte for byte.
"""

from __future__ import annotations

import os
import sys

import click

from .common import TEXT, OrderedGroup, connect, read_input


@click.group(cls=OrderedGroup, help="memory regions: get, put, search, ls, rm")
@click.option("--owner", default="llmos-cli", help="program name the region belongs to (default: llmos-cli)")
@click.pass_context
def mem(ctx: click.Context, owner: str) -> None:
    ctx.obj = owner     # regions belong to a program name: the subcommands connect as it


@mem.command("get", help="print the value of a key")
@click.argument("region")
@click.argument("key")
@click.pass_obj
def mem_get(owner: str, region: str, key: str) -> None:
    with connect(owner) as c:
        value = c.memread(region, key)["value"]
    if isinstance(value, bytes):
        sys.stdout.flush()
        sys.stdout.buffer.write(value)
        sys.stdout.buffer.flush()
    else:
        click.echo(value, nl=not value.endswith("\n"))


def as_value(data: bytes) -> str | bytes:
    """Text as a str; bytes that are not UTF-8 as they are."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


@mem.command("put", short_help="write a value under a key",
             help="write VALUE under a key; VALUE - reads stdin, --file reads a file (a region is made on first "
                  "write). Text is stored as text, anything else as bytes.")
@click.argument("region", type=TEXT)
@click.argument("key", type=TEXT)
@click.argument("value", required=False)
@click.option("--file", "path", default=None, metavar="PATH", help="the value is this file's bytes (- for stdin)")
@click.option("--embed", is_flag=True, help="also store its embedding, for mem search (text only)")
@click.pass_obj
def mem_put(owner: str, region: str, key: str, value: str | None, path: str | None, embed: bool) -> None:
    if (value is None) == (path is None):
        raise click.UsageError("give VALUE, or - for stdin, or --file PATH (one of them)")
    if value == "-":
        path = "-"
    data = as_value(read_input(path)) if path is not None else as_value(os.fsencode(value))
    with connect(owner) as c:
        r = c.memwrite(region, key, data, embed=embed)
    kind = "bytes" if isinstance(data, bytes) else "text"
    click.echo(f"{r['region']}/{r['key']}: {r['bytes']} bytes ({kind}), version {r['version']}"
               + (", embedded" if embed else ""))


@mem.command("search", help="entries closest in meaning to a query (those put with --embed)")
@click.argument("region", type=TEXT)
@click.argument("query", type=TEXT)
@click.option("-k", type=int, default=5, show_default=True, help="how many")
@click.pass_obj
def mem_search(owner: str, region: str, query: str, k: int) -> None:
    with connect(owner) as c:
        hits = c.memsearch(region, query, k=k)["results"]
    for hit in hits:
        value = hit["value"] if isinstance(hit["value"], str) else f"<{len(hit['value'])} bytes>"
        click.echo(f"{hit['score']:.3f}  {hit['key']}  {' '.join(value.split())[:100]}")


@mem.command("ls", help="list a region's keys")
@click.argument("region")
@click.option("--prefix", default="", help="only keys starting with it")
@click.pass_obj
def mem_ls(owner: str, region: str, prefix: str) -> None:
    with connect(owner) as c:
        keys = c.memread(region, None, prefix)["keys"]
    for key in keys:
        click.echo(key)


@mem.command("rm", help="delete a key, or the whole region")
@click.argument("region")
@click.argument("key", required=False)
@click.pass_obj
def mem_rm(owner: str, region: str, key: str | None) -> None:
    with connect(owner) as c:
        r = c.memdel(region, key)
    click.echo(f"deleted {r['deleted']} from {r['region']}")
