"""`llmos boot` (start the kernel) and `llmos demo` (a private kernel, one question, then stop it).

The userland never imports the kernel: it starts it as a program, `python -m llmos.kernel`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import click

from ..client import Client, KernelUnavailable
from .common import echo_stream, table


@click.command(help="boot the kernel (flags: see `llmos boot --help`)", add_help_option=False,
               context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("kernel_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def boot(ctx: click.Context, kernel_args: tuple[str, ...]) -> None:
    """Exec the kernel with the flags given, --help included: they are the kernel's, not ours."""
    socket = ctx.find_root().params.get("socket")
    os.execv(sys.executable, [sys.executable, "-m", "llmos.kernel"] + (["--socket", socket] if socket else [])
             + list(kernel_args))


@click.command(help="boot a private kernel on the default model, ask it one question")
@click.argument("question", default="What is the capital of France?")
@click.option("--device", default="auto", show_default=True)
@click.option("--max-tokens", type=int, default=64, show_default=True)
def demo(question: str, device: str, max_tokens: int) -> None:
    with tempfile.TemporaryDirectory(prefix="llmos-demo-") as tmp:
        socket = f"ipc://{tmp}/kernel.sock"
        click.echo(f"booting a kernel on {socket} (loading the default model takes ~20 s on a CPU)...", err=True)
        kernel = subprocess.Popen([sys.executable, "-m", "llmos.kernel", "--socket", socket, "--state-dir", tmp,
                                   "--device", device])
        try:
            with _wait_for_kernel(socket, kernel) as c:
                model = c.info.get("default_model")
                c.load_model(model)
                click.echo(f"\nQ: {question}\nA: ", nl=False)
                stream = c.stream(messages=[{"role": "user", "content": question}], temperature=0.0,
                                  max_tokens=max_tokens)
                result = echo_stream(stream)
                click.echo()
                click.echo(table([dict(p, age=f"{p['age_s']:.1f}s") for p in c.ps()],
                                 [("pid", "PID"), ("name", "NAME"), ("age", "AGE"), ("tokens", "TOKENS")]))
                u = result["usage"]
                click.echo(f"\n{model}: {u['prompt_tokens']} prompt + {u['completion_tokens']} completion tokens, "
                           f"finish: {result['finish_reason']}")
        finally:
            kernel.send_signal(signal.SIGTERM)
            kernel.wait(30)


def _wait_for_kernel(socket: str, kernel: subprocess.Popen, timeout: float = 120.0) -> Client:
    deadline = time.monotonic() + timeout
    while True:
        if kernel.poll() is not None:
            raise KernelUnavailable(f"the kernel exited with code {kernel.returncode} while booting")
        try:
            return Client(socket=socket, name="llmos-demo", timeout=None)
        except KernelUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
