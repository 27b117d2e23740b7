"""`llmos run` (one prompt, streamed, with a stats line), `llmos chat` (a multi-turn REPL) and
`llmos embed` (embedding vectors)."""

from __future__ import annotations

import json
import time

import click

from ..errors import LLMOSError
from .common import TEXT, connect, echo_stream, typed_lines
from .exits import EXIT_INTERRUPTED
from .progress import ProgressLine


def sampling_options(command):
    """--model, --system and the sampling flags of run and chat; the sampling ones reach the command
    as keyword arguments named as infer's, so it passes them on as they are."""
    options = [
        click.option("--model", default=None, help="a loaded or registry model (default: the kernel's)"),
        click.option("--system", default=None, type=TEXT, help="a system prompt, said before the conversation"),
        click.option("--max-tokens", type=int, default=256, show_default=True,
                     help="the most tokens to write (cut to what the model's context leaves)"),
        click.option("--temperature", type=float, default=None,
                     help="randomness of the sampling; 0 always takes the most likely token (default: the model's)"),
        click.option("--top-p", type=float, default=None,
                     help="sample only from the most likely tokens that together hold this probability "
                          "(default: the model's)"),
        click.option("--seed", type=int, default=None, help="same seed, same text"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _messages(system: str | None) -> list[dict]:
    return [{"role": "system", "content": system}] if system else []


def cancel_quietly(stream) -> None:
    """Ask the kernel to end a stream the user interrupted; a kernel that is gone needs no asking."""
    try:
        stream.cancel()
    except LLMOSError:
        pass


@click.command(help="answer one prompt, streamed (Ctrl-C stops it)")
@click.argument("prompt", type=TEXT)
@click.option("-q", "--quiet", is_flag=True, help="no stats line")
@sampling_options
@click.pass_context
def run(ctx: click.Context, prompt: str, quiet: bool, system: str | None, **sampling) -> None:
    messages = _messages(system) + [{"role": "user", "content": prompt}]
    with connect("llmos-run") as c:
        started = time.monotonic()
        first = None
        stream = c.stream(messages=messages, progress=True, **sampling)
        waiting = ProgressLine()
        stream.on_progress = waiting.show
        try:
            for delta in stream:
                if first is None:
                    first = time.monotonic()
                    waiting.done()
                click.echo(delta, nl=False)
        except KeyboardInterrupt:
            waiting.done()
            cancel_quietly(stream)
            click.echo(" [cancelled]")
            ctx.exit(EXIT_INTERRUPTED)
        click.echo()
        r = stream.result
        elapsed = time.monotonic() - started
        n = r["usage"]["completion_tokens"]
        gen_s = max(1e-9, time.monotonic() - (first or started))
        if not quiet:
            click.echo(f"[{r['model']}: {n} tokens in {elapsed:.2f}s, {n / gen_s:.1f} tokens/s after the first, "
                       f"time to first token {(first or started) - started:.2f}s, finish: {r['finish_reason']}]",
                       err=True)


@click.command(help="a multi-turn chat (Ctrl-C stops an answer; /reset starts over; /quit or Ctrl-D ends)")
@sampling_options
def chat(system: str | None, **sampling) -> None:
    messages = _messages(system)
    with connect("llmos-chat") as c:
        click.echo("llmos chat: /quit or Ctrl-D to quit, /reset to start over", err=True)
        for line in typed_lines("> "):
            if line.strip() == "/reset":
                messages = _messages(system)
                continue
            messages.append({"role": "user", "content": line})
            stream = c.stream(messages=messages, progress=True, **sampling)
            try:
                result = echo_stream(stream, ProgressLine())
            except KeyboardInterrupt:
                cancel_quietly(stream)
                click.echo(" [cancelled]")
                messages.pop()
                continue
            messages.append({"role": "assistant", "content": result["text"]})


SHOWN_VALUES = 8     # of each vector, in the plain output


@click.command(help="embedding vectors of one or more texts: their size and first values")
@click.argument("texts", nargs=-1, required=True, type=TEXT)
@click.option("--model", default=None, help="an embedding model (default: the kernel's)")
@click.option("--json", "as_json", is_flag=True, help="print the whole result, every value, as JSON")
def embed(texts: tuple[str, ...], model: str | None, as_json: bool) -> None:
    with connect("llmos-embed") as c:
        r = c.embed(list(texts), **({"model": model} if model else {}))
    if as_json:
        click.echo(json.dumps(r))
        return
    click.echo(f"{r['model']}: {len(r['vectors'])} vectors of {r['dim']} dimensions")
    for text, vector in zip(texts, r["vectors"]):
        shown = " ".join(f"{v:+.4f}" for v in vector[:SHOWN_VALUES])
        click.echo(f"[{shown}{' ...' if len(vector) > SHOWN_VALUES else ''}]  {' '.join(text.split())[:60]}")
