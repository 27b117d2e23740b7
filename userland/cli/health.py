"""`llmos health`: exit 0 when the kernel is ready to serve, 1 when it is not, 3 when no kernel answers,
for scripts and systemd.

Ready is the kernel's own word (`stats`' ready flag): its default model is loaded and a one-token
probe through the scheduler succeeded in the last 30 s. A kernel that does not answer is not
ready either, but it is exit 3, every command's "no kernel" code (exits.py), so a script can tell
"not up yet" from "up and not ready"; either way one line says why.
"""

from __future__ import annotations

import click

from ..client import Client
from ..errors import KernelUnavailable, LLMOSError
from .exits import EXIT_FAILED, EXIT_NO_KERNEL, EXIT_OK

ANSWER_MARGIN_S = 5.0     # how much longer than --wait the kernel may take to answer


@click.command(help="exit 0 if the kernel is ready (default model loaded, a probe answered), else 1 saying why "
                    "(3: no kernel answered)")
@click.option("--wait", type=click.FloatRange(0, 30), default=12.0, show_default=True,
              help="seconds to wait for a readiness probe the kernel is running")
def health(wait: float) -> int:
    root = click.get_current_context().find_root().params
    try:
        with Client(socket=root.get("socket"), name="llmos-health", caps=["ps"], key=root.get("key"),
                    timeout=wait + ANSWER_MARGIN_S) as c:
            stats = c.stats(wait_ready=wait)
    except LLMOSError as exc:
        why, code = f"{exc.errno}: {exc.message}", EXIT_NO_KERNEL if isinstance(exc, KernelUnavailable) else EXIT_FAILED
    else:
        if stats["ready"]:
            click.echo(f"ready: {stats['ready_reason']}")
            return EXIT_OK
        why, code = stats["ready_reason"], EXIT_FAILED
    click.echo(f"llmos health: not ready: {why}", err=True)
    raise click.exceptions.Exit(code)
