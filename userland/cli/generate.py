"""`llmos run` (one prompt, streamed, with a stats line) and `llmos chat` (a multi-turn REPL)."""

from __future__ import annotations

import time

import click

from .common import connect, echo_stream, typed_lines


def sampling_options(command):
    """--model, --system and the sampling flags of run and chat; the sampling ones reach the command
    as keyword arguments named as infer's, so it passes them on as they are."""
    options = [
        click.option("--model", default=None, help="a loaded or registry model (default: the kernel's)"),
        click.option("--system", default=None, help="system prompt"),
        click.option("--max-tokens", type=int, default=256, show_default=True),
        click.option("--temperature", type=float, default=0.2, show_default=True),
        click.option("--top-p", type=float, default=0.95, show_default=True),
        click.option("--seed", type=int, default=None, help="same seed, same text"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _messages(system: str | None) -> list[dict]:
    return [{"role": "system", "content": system}] if system else []


@click.command(help="answer one prompt, streamed")
@click.argument("prompt")
@click.option("-q", "--quiet", is_flag=True, help="no stats line")
@sampling_options
def run(prompt: str, quiet: bool, system: str | None, **sampling) -> None:
    messages = _messages(system) + [{"role": "user", "content": prompt}]
    with connect("llmos-run") as c:
        started = time.monotonic()
        first = None
        stream = c.stream(messages=messages, **sampling)
        for delta in stream:
            if first is None:
                first = time.monotonic()
            click.echo(delta, nl=False)
        click.echo()
        r = stream.result
        elapsed = time.monotonic() - started
        n = r["usage"]["completion_tokens"]
        gen_s = max(1e-9, time.monotonic() - (first or started))
        if not quiet:
            click.echo(f"[{r['model']}: {n} tokens in {elapsed:.2f}s, {n / gen_s:.1f} tokens/s after the first, "
                  f"time to first token {(first or started) - started:.2f}s, finish: {r['finish_reason']}]",
                       err=True)


@click.command(help="a multi-turn chat")
@sampling_options
def chat(system: str | None, **sampling) -> None:
    messages = _messages(system)
    with connect("llmos-chat") as c:
        click.echo("llmos chat: empty line or Ctrl-D to quit, /reset to start over", err=True)
        for line in typed_lines("> "):
            if line.strip() == "/reset":
                messages = _messages(system)
                continue
            messages.append({"role": "user", "content": line})
            stream = c.stream(messages=messages, **sampling)
            try:
                result = echo_stream(stream)
            except KeyboardInterrupt:
                stream.cancel()
                click.echo(" [cancelled]")
                messages.pop()
                continue
            messages.append({"role": "assistant", "content": result["text"]})
