"""`llmos tune` and `llmos jobs`: fine-tune jobs, started, followed, listed and cancelled.

`tune` checks the data file here first (bad lines by number, nothing sent), submits it, then
follows the job with a progress bar until it ends. The job is the kernel's, not this command's:
Ctrl-C only stops following it.
"""

from __future__ import annotations

import time

import click

from llmos.specs import trainset
from llmos.specs.units import format_size

from .common import connect, decode_text, read_input, table
from .exits import EXIT_INTERRUPTED, fail

POLL_S = 0.5
ENDED = ("done", "failed", "cancelled")


def read_examples(path: str) -> list[dict]:
    """The file's examples; EINVAL naming the bad lines (and nothing sent) if any is bad."""
    text = decode_text(read_input(path), "stdin" if path == "-" else path)
    examples, bad = trainset.parse_jsonl(text)
    if bad:
        raise fail("EINVAL", f"{path}: {len(bad)} bad line(s), nothing was sent: {trainset.describe_bad(bad)}")
    if not examples:
        raise fail("EINVAL", f"{path} holds no examples")
    return examples


@click.command(help="fine-tune a LoRA adapter of a model on a JSONL file of chats ({\"messages\": [...]}) or "
                    "{\"prompt\", \"completion\"} pairs; the result is the model BASE:NAME")
@click.argument("data", metavar="DATA.jsonl")
@click.option("--base", required=True, help="the model to adapt (a registry or config name)")
@click.option("--name", required=True, help="the adapter's name")
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--lr", type=float, default=2e-4, show_default=True, help="learning rate")
@click.option("--rank", type=int, default=8, show_default=True, help="LoRA rank")
@click.option("--alpha", type=float, default=16.0, show_default=True, help="LoRA alpha (scale alpha/rank)")
@click.option("--batch-size", type=int, default=4, show_default=True, help="examples per step")
@click.option("--max-seq-len", type=int, default=512, show_default=True, help="tokens kept per example")
@click.option("--checkpoint-every", type=int, default=50, show_default=True, help="steps between checkpoints")
@click.option("--target-modules", default=None, help="comma-separated, e.g. q_proj,v_proj (the default)")
@click.option("--no-wait", is_flag=True, help="submit and print the job id; do not follow it")
def tune(data: str, base: str, name: str, epochs: int, lr: float, rank: int, alpha: float, batch_size: int,
         max_seq_len: int, checkpoint_every: int, target_modules: str | None, no_wait: bool) -> None:
    examples = read_examples(data)
    targets = [t.strip() for t in target_modules.split(",") if t.strip()] if target_modules else None
    with connect("llmos-tune", caps=["tune", "ps"]) as c:
        job = c.tune(base=base, name=name, examples=examples, epochs=epochs, lr=lr, rank=rank, alpha=alpha,
                     batch_size=batch_size, max_seq_len=max_seq_len, checkpoint_every=checkpoint_every,
                     target_modules=targets)
        if no_wait:
            click.echo(job["job"])
            return
        click.echo(f"job {job['job']}: {job['model']}, {len(examples)} examples, {job['steps']} steps on "
                   f"{job['device']} ({format_size(job['reserved_bytes'])} reserved)", err=True)
        try:
            job = follow(c, job)
        except KeyboardInterrupt:
            click.echo(f"\ndetached: job {job['job']} keeps running; follow it with `llmos jobs`, "
                       f"cancel it with `llmos jobs cancel {job['job']}`", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    if job["state"] != "done":
        errno, _, message = (job["error"] or "ECANCELED: cancelled").partition(": ")
        raise fail(errno if errno.isupper() else "EIO", f"job {job['job']} {job['state']}: {message or errno}")
    click.echo(f"{job['model']}: trained, {job['steps']} steps, last loss {job['loss']}")


def follow(c, job: dict) -> dict:
    """Poll `jobs` until the job ends, drawing its progress: step/steps, loss, tokens/s, ETA."""
    from tqdm import tqdm

    with tqdm(total=job["steps"], unit="step", dynamic_ncols=True, desc=job["model"]) as bar:
        while job["state"] not in ENDED:
            time.sleep(POLL_S)
            job = next((j for j in c.jobs()["jobs"] if j["job"] == job["job"]), None) or {**job, "state": "failed",
                                                                                           "error": "EIO: job gone"}
            bar.update(job["step"] - bar.n)
            loss = "-" if job["loss"] is None else f"{job['loss']:.4f}"
            eta = "-" if job["eta_s"] is None else f"{job['eta_s']:.0f}s"
            bar.set_postfix_str(f"{job['state']}, loss {loss}, {job['tokens_per_s']:.0f} tok/s, ETA {eta}")
    return job


@click.group(invoke_without_command=True, help="list fine-tune jobs; `llmos jobs cancel ID` cancels one")
@click.option("--all", "everyone", is_flag=True, help="every principal's jobs (needs the admin capability)")
@click.pass_context
def jobs(ctx: click.Context, everyone: bool) -> None:
    if ctx.invoked_subcommand is not None:
        return
    with connect("llmos-jobs", caps=["ps", "admin"] if everyone else ["ps"]) as c:
        rows = c.jobs()["jobs"]
    for r in rows:
        r["progress"] = f"{r['step']}/{r['steps']}"
        r["loss"] = "-" if r["loss"] is None else f"{r['loss']:.4f}"
        r["rate"] = f"{r['tokens_per_s']:.0f}"
        r["eta"] = "-" if r["eta_s"] is None else f"{r['eta_s']:.0f}s"
    click.echo(table(rows, [("job", "JOB"), ("model", "MODEL"), ("owner", "OWNER"), ("state", "STATE"),
                            ("progress", "STEP"), ("loss", "LOSS"), ("rate", "TOK/S"), ("eta", "ETA"),
                            ("error", "ERROR")]))


@jobs.command(help="cancel a fine-tune job: no adapter is written, its memory is given back")
@click.argument("job")
def cancel(job: str) -> None:
    with connect("llmos-jobs", caps=["tune"]) as c:
        answer = c.job_cancel(job=job)
    click.echo(f"job {job}: cancelled" if answer["cancelled"] else f"job {job} had already ended ({answer['was']})")
