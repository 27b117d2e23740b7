"""`llmos svc`: the service host's services from the terminal (list, call, reload)."""

from __future__ import annotations

import json

import click

from .common import OrderedGroup, connect, echo_stream, table, utf8_text


@click.group(cls=OrderedGroup, help="services: list, call, reload")
@click.option("--as", "as_name", default=None,
              help="program name to call as (services keep per-program state; default: llmos-svc)")
@click.pass_context
def svc(ctx: click.Context, as_name: str | None) -> None:
    ctx.obj = as_name or "llmos-svc"     # the program name list and call connect as


@svc.command("list", short_help="services, their tasks and arguments", help="services, their tasks and arguments, and plugins that failed to load")
@click.option("--json", "as_json", is_flag=True, help="print the whole listing as JSON")
@click.pass_obj
def svc_list(program: str, as_json: bool) -> None:
    with connect(program) as c:
        listing = c.svc_list()
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    host = listing["host"]
    click.echo(f"service host: {host['state']}, pid {host['os_pid']}, restarts {host['restarts']}")
    rows = []
    for service in listing["services"]:
        for t in service["tasks"]:
            params = " ".join(f"{n}" if a["required"] else f"[{n}]" for n, a in t["args"].items())
            rows.append({"task": f"{service['name']} {t['name']}", "args": params, "plugin": service["plugin"],
                         "doc": t["description"]})
    click.echo(table(rows, [("task", "SERVICE TASK"), ("args", "ARGS"), ("plugin", "PLUGIN"), ("doc", "DESCRIPTION")]))
    for f in listing["failed"]:
        click.echo(f"failed: {f['plugin']}: {f['error']}", err=True)


def parse_args(ctx, param, items: tuple[str, ...]) -> dict:
    """--arg key=value: the value as JSON when it parses (numbers, true, lists, maps), else as a string."""
    args = {}
    for item in items:
        key, sep, raw = utf8_text(item, f"--arg {item.partition('=')[0]}").partition("=")
        if not sep or not key:
            raise click.BadParameter(f"wants key=value, got '{item}'", ctx, param)
        try:
            args[key] = json.loads(raw)
        except ValueError:
            args[key] = raw
    return args


@svc.command("call", short_help="run a service's task", help="run a service's task: llmos svc call kb ask --arg kb=docs --arg question='...'")
@click.argument("service")
@click.argument("task")
@click.option("--arg", "task_args", multiple=True, metavar="KEY=VALUE", callback=parse_args,
              help="a task argument; the value is parsed as JSON when it can be (42, true, [1,2]), else a string")
@click.option("--stream", is_flag=True, help="print text as the task produces it")
@click.option("--deadline", type=float, default=None, help="seconds before the call ends with ETIMEDOUT")
@click.option("--json", "as_json", is_flag=True, help="print the whole result as JSON")
@click.pass_obj
def svc_call(program: str, service: str, task: str, task_args: dict, stream: bool, deadline: float | None,
             as_json: bool) -> None:
    with connect(program) as c:
        if stream:
            result = echo_stream(c.svc_stream(service, task, task_args, deadline=deadline))
        else:
            result = c.svc_call(service, task, task_args, deadline=deadline)
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False, default=repr))
        return
    has_text = isinstance(result.get("text"), str)
    if has_text and not stream:
        click.echo(result["text"])
    for line in field_lines(result, skip="text" if has_text else None):
        click.echo(line)


def field_lines(result: dict, skip: str | None = None) -> list[str]:
    """Every field of a task's result as a `key: value` line (values that are not text as JSON)."""
    return [f"{key}: {value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=repr)}"
            for key, value in result.items() if key != skip]


@svc.command("reload", short_help="restart the service host (needs admin)", help="restart the service host to load newly installed plugins (needs admin)")
@click.option("--drain", type=float, default=10.0, show_default=True, help="seconds to let calls in flight finish")
def svc_reload(drain: float) -> None:
    with connect("llmos-svc", caps=["admin", "svc"]) as c:
        r = c.svc_reload(drain=drain)
    click.echo(f"service host restarted (pid {r['os_pid']}) in {r['reload_s']:.2f}s: "
               f"{r['services']} services, {r['failed']} plugins failed (see `llmos svc list`)")
