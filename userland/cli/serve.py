"""`llmos serve`: the OpenAI-compatible HTTP gateway; `llmos serve keys` manages its API keys.

Without API keys every HTTP request runs as the gateway's own identity (the operator on the local
ipc socket, or $LLMOS_KEY's user), so the gateway then binds loopback only and says so. With a key
table, each key speaks as the kernel principal whose key file it names.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click

from ..gateway.keys import KeyTable, KeyTableError, default_keys_path
from .common import OrderedGroup, table
from .exits import fail

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _table(path: str | None) -> KeyTable:
    try:
        return KeyTable(path or default_keys_path()).load()
    except KeyTableError as exc:
        raise fail("EINVAL", str(exc)) from None


KEYS_OPTION = click.option("--keys", "keys_path", default=None, metavar="FILE",
                           help="the API key table (default: $LLMOS_GATEWAY_KEYS, else ~/.config/llmos/gateway-keys.json)")


@click.group(cls=OrderedGroup, invoke_without_command=True,
             help="serve the OpenAI API over HTTP (chat, completions, embeddings, models); `serve keys` for API keys")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to bind; other than loopback only with API keys")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@KEYS_OPTION
@click.option("--require-keys", is_flag=True,
              help="serve with the key table even while it is missing or empty: every request is 401 until "
                   "`serve keys add` (containers start the gateway this way)")
@click.option("--open-metrics", is_flag=True,
              help="GET /metrics without an API key, for a scraper (counts and latencies by route, no names)")
@click.option("--socket", default=None, help="the kernel socket the gateway itself uses (default: `llmos --socket`)")
@click.option("--max-streams", type=click.IntRange(1, 4096), default=None,
              help="generations in flight per API key before 429 (default 64)")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, keys_path: str | None, require_keys: bool,
          open_metrics: bool, socket: str | None, max_streams: int | None) -> None:
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from ..gateway.app import DEFAULT_MAX_STREAMS, MAX_BODY_BYTES, Settings, configure_logging, make_app
    from ..gateway.http import uvicorn_options

    root = ctx.find_root().params
    path = Path(keys_path) if keys_path else default_keys_path()
    keys = _table(str(path)) if path.exists() or require_keys else None
    if keys is None and not is_loopback(host):
        raise fail("EPERM", f"refusing to serve {host} without API keys: every request would run as this gateway's "
                            f"own identity. Bind 127.0.0.1, or add keys (`llmos serve keys add NAME --key-file PATH`)")
    settings = Settings(socket=socket or root.get("socket"), key=root.get("key"), keys=keys,
                        max_streams=max_streams or DEFAULT_MAX_STREAMS, max_body=MAX_BODY_BYTES,
                        open_metrics=open_metrics)
    if keys is None:
        click.echo(f"llmos serve: no API keys ({path} does not exist): every request runs as this gateway's own "
                   f"kernel identity; serving loopback only", err=True)
    else:
        click.echo(f"llmos serve: {len(keys)} API key(s) from {path}; a request without one of them is refused (401)",
                   err=True)
    click.echo(f"llmos serve: OpenAI API at http://{host}:{port}/v1, Ollama's at http://{host}:{port}/api", err=True)
    configure_logging()
    uvicorn.run(make_app(settings), host=host, port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5, **uvicorn_options())


@serve.group(cls=OrderedGroup, help="API keys of the gateway: add, list, rm")
def keys() -> None:
    pass


@keys.command("add", help="make an API key speaking as the principal of --key-file; prints the key once")
@click.argument("name")
@click.option("--key-file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="the principal's key file from `llmos user add`")
@KEYS_OPTION
def keys_add(name: str, key_file: str, keys_path: str | None) -> None:
    t = _table(keys_path)
    try:
        api_key = t.add(name, key_file)
    except KeyTableError as exc:
        raise fail("EINVAL", str(exc)) from None
    click.echo(f"API key for {name} (shown once; the table keeps only its hash): ", err=True, nl=False)
    click.echo(api_key)


@keys.command("list", help="the API keys' names and key files (never the keys)")
@KEYS_OPTION
def keys_list(keys_path: str | None) -> None:
    rows = [{"name": e.name, "key_file": e.key_file} for e in _table(keys_path).entries()]
    click.echo(table(rows, [("name", "NAME"), ("key_file", "KEY FILE")]))


@keys.command("rm", help="remove an API key: a running gateway refuses it from its next request")
@click.argument("name")
@KEYS_OPTION
def keys_rm(name: str, keys_path: str | None) -> None:
    t = _table(keys_path)
    try:
        t.remove(name)
    except KeyTableError as exc:
        raise fail("ENOENT", str(exc)) from None
    click.echo(f"removed the API key {name}")
