"""`llmos mem`: a program's durable memory regions from the terminal (get, put, ls, search, rm)."""

from __future__ import annotations

import sys

import click

from .common import OrderedGroup, connect


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
        sys.stdout.buffer.write(value)
    else:
        click.echo(value)


@mem.command("put", short_help="write a value under a key",
             help="write VALUE under a key, - for VALUE reads stdin (a region is made on first write)")
@click.argument("region")
@click.argument("key")
@click.argument("value")
@click.option("--embed", is_flag=True, help="also store its embedding, for mem search")
@click.pass_obj
def mem_put(owner: str, region: str, key: str, value: str, embed: bool) -> None:
    if value == "-":
        value = sys.stdin.read()
    with connect(owner) as c:
        r = c.memwrite(region, key, value, embed=embed)
    click.echo(f"{r['region']}/{r['key']}: {r['bytes']} bytes, version {r['version']}" + (", embedded" if embed else ""))


@mem.command("search", help="entries closest in meaning to a query (those put with --embed)")
@click.argument("region")
@click.argument("query")
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
