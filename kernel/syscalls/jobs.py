"""Fine-tune job syscalls: tune, jobs, job_cancel (the jobs themselves are kernel/jobs.py's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmos.specs import SYSCALLS, trainset

from .. import registry

from ..adapters import NAME
from ..errors import eagain, einval, enoent

if TYPE_CHECKING:
    from ..process import CallContext
    from ..jobs import Job
    from ..kernel import Kernel

MAX_EXAMPLES = SYSCALLS["tune"].args["examples"].max_items     # per job; its bytes are bounded by the frame
MAX_ACTIVE_JOBS_PER_PRINCIPAL = 2      # queued or running: each holds a copy of its base model on a device
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_TARGETS = ["q_proj", "v_proj"]


async def sys_tune(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    base, name, examples = args["base"], args["name"], args["examples"]
    for part, what in ((base, "base"), (name, "name")):
        if not NAME.fullmatch(part) or part in (".", ".."):
            raise einval(f"tune: '{part[:64]}' cannot be an adapter's {what}: 1-64 of A-Z a-z 0-9 . _ - "
                         f"starting with a letter or digit")
    if not examples:
        raise einval("tune: 'examples' is empty")
    if len(examples) > MAX_EXAMPLES:
        raise einval(f"tune: {len(examples)} examples; a job takes at most {MAX_EXAMPLES}")
    bad = trainset.check_examples(examples)
    if bad:
        raise einval(f"tune: {len(bad)} bad example(s), nothing started: {trainset.describe_bad(bad)}")
    targets = args["target_modules"] or DEFAULT_TARGETS
    unknown = [t for t in targets if t not in TARGET_MODULES]
    if unknown or not all(isinstance(t, str) for t in targets):
        raise einval(f"tune: target_modules must be among {', '.join(TARGET_MODULES)}")
    if registry.is_path(base, k.settings.models):
        raise enoent(f"tune: no model '{base}' in the registry or the config; fine-tune one of `llmos models`")
    principal = ctx.proc.principal
    active = k.jobs.active(principal)
    if active >= MAX_ACTIVE_JOBS_PER_PRINCIPAL:
        raise eagain(f"tune: user '{principal}' has {active} jobs queued or running (at most "
                     f"{MAX_ACTIVE_JOBS_PER_PRINCIPAL}); wait for one to end, or cancel one (job_cancel)")
    hyper = {key: args[key] for key in ("epochs", "lr", "rank", "alpha", "batch_size", "max_seq_len",
                                        "checkpoint_every", "seed")}
    hyper["target_modules"] = sorted(set(targets), key=TARGET_MODULES.index)
    job = await k.jobs.submit(principal, base, name, hyper, examples)
    k.audit.record("tune", pid=ctx.proc.pid, principal=principal, job=job.id, model=f"{base}:{name}",
                   examples=len(examples))
    return job.describe()


def _visible(k: "Kernel", ctx: "CallContext", job: "Job | None") -> bool:
    return job is not None and (job.owner == ctx.proc.principal or "admin" in ctx.proc.caps)


def sys_jobs(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    return {"jobs": [j.describe() for j in k.jobs if _visible(k, ctx, j)]}


def sys_job_cancel(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    job = k.jobs.get(args["job"])
    if not _visible(k, ctx, job):       # another's job is "not found", not "not yours"
        raise enoent(f"no job '{args['job'][:64]}'")
    was = job.state
    k.jobs.cancel(job)
    return {"job": job.id, "was": was, "cancelled": was in ("queued", "running")}


HANDLERS = {"tune": sys_tune, "jobs": sys_jobs, "job_cancel": sys_job_cancel}
