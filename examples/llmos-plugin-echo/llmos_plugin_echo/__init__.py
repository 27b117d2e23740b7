"""An example llmos service plugin: the `echo` service, and an `llmos echo` command that calls it.

Registered through the entry-point group "llmos.services" (see pyproject.toml): the service
host imports this module and calls register_services with its register callback; the `llmos`
command imports it too and calls register_commands.
"""

import click

from llmos.services import ServiceError, Task, hookimpl
from llmos.userland.cli import connect, echo_stream


def say(ctx, text: str, times: int = 1) -> dict:
    """A plain function: the host runs it on a worker thread."""
    return {"text": " ".join([text] * times), "caller": ctx.caller.get("name")}


async def stats(ctx, text: str) -> dict:
    if not text.strip():
        raise ServiceError("EINVAL", "echo.stats: 'text' is empty")
    return {"words": len(text.split()), "chars": len(text)}


async def shout(ctx, text: str, reply: bool = False) -> dict:
    """Streams deltas with ctx.emit; with reply=true also asks the kernel's model through a syscall."""
    for i, word in enumerate(text.split()):
        ctx.emit(("" if i == 0 else " ") + word.upper())
    result = {}
    if reply:
        out = await ctx.kernel.infer(prompt=text, max_tokens=16, temperature=0.0)
        result["model_reply"] = out["text"]
    return result     # the host adds "text": the concatenated deltas


@hookimpl
def register_services(register):
    register("echo", {
        "say": Task(say, "Return the text, repeated `times` times.",
                    args={"text": {"type": "str", "max_len": 10000, "doc": "what to echo"},
                          "times": {"type": "int", "default": 1, "min": 1, "max": 10}}),
        "stats": Task(stats, "Count the words and characters of a text.", args={"text": {"type": "str"}}),
        "shout": Task(shout, "Stream the text back in capitals, word by word.",
                      args={"text": {"type": "str", "max_len": 10000},
                            "reply": {"type": "bool", "default": False, "doc": "also ask the default model"}},
                      stream=True),
    }, description="Echo text back: the example plugin (examples/llmos-plugin-echo).")


@click.command("echo", help="Echo TEXT through the echo service; --shout streams it back in capitals.")
@click.argument("text")
@click.option("--times", type=int, default=1, show_default=True)
@click.option("--shout", is_flag=True)
def echo_command(text: str, times: int, shout: bool) -> None:
    with connect("llmos-echo") as c:         # a client of the kernel `llmos --socket` points at
        if shout:
            echo_stream(c.svc_stream("echo", "shout", {"text": text}))
        else:
            click.echo(c.svc_call("echo", "say", {"text": text, "times": times})["text"])


@hookimpl
def register_commands(register):
    register(echo_command)
