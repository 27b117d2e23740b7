"""`llmos eval`: a labeled set run through the kernel's syscalls (userland/evaluation.py), the figure
printed with its 95% interval, so a fine-tune is judged by what its users get."""

from __future__ import annotations

import json
import time

import click

from ..evaluation import TASKS, DataError, evaluate, parse_data
from .common import connect, decode_text, read_input, table, warn
from .exits import fail

MAX_DATA_BYTES = 64 * 1024 * 1024


@click.command(name="eval", help="evaluate a model on a labeled JSONL set (classify, qa) or on texts (perplexity)")
@click.option("--model", default=None, help="a model or adapter (BASE:NAME); default: the kernel's default model")
@click.option("--task", required=True, type=click.Choice(TASKS), help="what the data holds (userland/evaluation.py)")
@click.option("--data", "path", required=True, metavar="FILE", help="JSONL, one example a line (- for stdin)")
@click.option("--labels", default=None, help="classify: the label set, comma-separated (else the file's first line)")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 64),
              help="requests in flight at once (the kernel batches them)")
@click.option("--json", "as_json", is_flag=True, help="print the result as one JSON object")
@click.option("--save", is_flag=True, help="keep the result in the adapter's metadata (BASE:NAME only)")
def evaluate_command(model: str | None, task: str, path: str, labels: str | None, concurrency: int, as_json: bool,
                     save: bool) -> None:
    if save and (model is None or ":" not in model):
        raise fail("EINVAL", "--save keeps a result in an adapter's metadata: give --model BASE:NAME")
    text = decode_text(read_input(path, MAX_DATA_BYTES), path)
    try:
        data = parse_data(task, text, [x.strip() for x in labels.split(",")] if labels is not None else None)
    except DataError as exc:
        raise fail("EINVAL", f"{path}: {exc}") from None
    with connect("llmos-eval") as c:
        started = time.monotonic()
        result = evaluate(c, model, data, concurrency)
    result.update(data=path, seconds=round(time.monotonic() - started, 2))
    if as_json or save:
        click.echo(json.dumps(result, sort_keys=True))
    else:
        click.echo(report(result))
    if save:
        warn("no syscall writes an adapter's metadata yet, so nothing was saved: the line above is the "
             "result to keep")


def report(r: dict) -> str:
    """The result as `llmos eval` prints it without --json."""
    head = f"{r['model']}  {r['task']}  {r['data']}  n={r['n']}  ({r['seconds']:.1f}s)"
    if r["task"] == "perplexity":
        ppl = "n/a (no tokens after the first of any text)" if r["perplexity"] is None else f"{r['perplexity']:.3f}"
        return f"{head}\nperplexity {ppl} over {r['tokens']} tokens"
    low, high = r["interval95"]
    lines = [head, f"accuracy {r['accuracy']:.3f} ({r['correct']}/{r['n']}), 95% interval {low:.3f}-{high:.3f} (Wilson)"]
    if r["task"] == "classify":
        rows = [{"label": name, **counts} for name, counts in r["labels"].items()]
        lines += ["", table(rows, [("label", "LABEL"), ("n", "N"), ("correct", "CORRECT"), ("predicted", "PREDICTED")]),
                  f"answers naming no label: {r['unmatched']}"]
    return "\n".join(lines)
