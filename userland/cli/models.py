"""`llmos devices`, `models`, `load` and `unload`: device memory and the models in it."""

from __future__ import annotations

import time

import click

from llmos.specs.units import format_size

from .common import connect, table


@click.command(help="list devices and their memory")
def devices() -> None:
    with connect("llmos-devices") as c:
        rows = c.devices()
    for r in rows:
        for key in ("total_bytes", "used_bytes", "free_bytes", "models_bytes", "reserved_bytes"):
            r[key] = format_size(r[key])
    click.echo(table(rows, [("name", "DEVICE"), ("driver", "DRIVER"), ("total_bytes", "TOTAL"), ("used_bytes", "USED"),
                            ("free_bytes", "FREE"), ("models_bytes", "MODELS"), ("reserved_bytes", "RESERVED"),
                            ("running", "RUNNING"), ("queued", "QUEUED")]))


@click.command(help="list loaded and available models")
def models() -> None:
    with connect("llmos-models") as c:
        info = c.models()
    loaded = info["loaded"]
    for r in loaded:
        r["size"] = format_size(r["bytes"])
        r["quant"] = r.get("quant") or "-"
    click.echo(table(loaded, [("name", "MODEL"), ("kind", "KIND"), ("device", "DEVICE"), ("state", "STATE"),
                              ("size", "SIZE"), ("quant", "QUANT"), ("refs", "REFS"), ("in_use", "IN USE"),
                              ("load_s", "LOAD S")]))
    names = {r["name"] for r in loaded}
    others = [a for a in info["available"] if a["name"] not in names]
    if others:
        click.echo("\navailable:")
        click.echo(table(others, [("name", "MODEL"), ("kind", "KIND"), ("source", "SOURCE")]))


@click.command(help="load a model (one copy per device serves every program)")
@click.argument("model")
@click.option("--device", default="auto", show_default=True, help="a device from `llmos devices`, or auto")
@click.option("--quant", type=click.Choice(["none", "int8"]), default=None,
              help="int8: weights stored as int8, about half the memory (Llama-family generate models)")
@click.option("--replicas", type=int, default=1, show_default=True,
              help="copies on as many devices, each request going to the one that can start it soonest (admin)")
def load(model: str, device: str, quant: str | None, replicas: int) -> None:
    with connect("llmos-load") as c:
        started = time.monotonic()
        r = c.load_model(model, device=device, quant=quant, replicas=replicas)
        waited = time.monotonic() - started
    how = "already loaded" if r["already_loaded"] else f"loaded in {r['load_s']:.1f}s"
    where = ", ".join(r.get("replicas") or [r["device"]])
    click.echo(f"{r['name']} on {where}: {format_size(r['bytes'])}{' int8' if r.get('quant') == 'int8' else ''}, "
               f"{how} (waited {waited:.1f}s)")


@click.command(help="unload a model nobody else uses")
@click.argument("model")
def unload(model: str) -> None:
    with connect("llmos-unload") as c:
        r = c.unload_model(model, evict=True)
    click.echo(f"{r['name']}: unloaded")
