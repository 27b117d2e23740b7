"""User syscalls (admin): user_add, user_list, user_remove, user_rotate.

Each is an admin act, so each goes to the audit log; a removed or rotated user's processes are
reaped at once, since the key that proved them is no longer a principal's.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from ..errors import einval
from ..job import FINISHED
from ..principals import PrincipalError
from ..configschema import QUOTA_NAMES, share_of

if TYPE_CHECKING:
    from ..process import CallContext
    from ..kernel import Kernel


def _checked_quotas(quotas: dict | None) -> dict[str, int | str]:
    quotas = quotas or {}
    for key, value in quotas.items():
        if key not in QUOTA_NAMES:
            raise einval(f"user_add: unknown quota '{str(key)[:32]}'; known: {', '.join(QUOTA_NAMES)}")
        if key == "reserve_bytes" and isinstance(value, str):
            try:
                share_of(value)
            except ValueError as exc:
                raise einval(f"user_add: quota reserve_bytes: {exc}") from None
        elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise einval(f"user_add: quota '{key}' must be a non-negative integer"
                         + (" or a share of each device such as \"25%\"" if key == "reserve_bytes" else ""))
    return dict(quotas)


def _described(k: "Kernel", principal) -> dict:
    """A user as the user syscalls answer it: its overrides (`quotas`) and what applies (`effective_quotas`)."""
    return {**principal.describe(), "effective_quotas": k.quotas.effective(principal.name)}


def reachable_at(url: str) -> str:
    """The address a user's key file names: a wildcard bind is no address, this machine's name is."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if url.startswith(wildcard):
            return f"tcp://{socket.getfqdn()}:{url[len(wildcard):]}"
    return url


def _reap_all(k: "Kernel", name: str, why: str) -> int:
    procs = [p for p in k.procs if p.authenticated_as == name]
    for proc in procs:
        k.reap(proc, why)
    return len(procs)


def _cancel_jobs(k: "Kernel", name: str) -> int:
    """A removed user's fine-tune jobs stop: their turns, memory and adapter were its."""
    jobs = [j for j in k.jobs if j.owner == name and j.state not in FINISHED and not j.cancelling]
    for job in jobs:
        k.jobs.cancel(job)
    return len(jobs)


def sys_user_add(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    caps = args["caps"]
    if caps is not None and not all(isinstance(c, str) for c in caps):
        raise einval("user_add: 'caps' must be a list of strings")
    try:
        principal, path = k.principals.add(args["name"], caps, _checked_quotas(args["quotas"]), reachable_at(k.settings.socket))
    except PrincipalError as exc:
        raise einval(f"user_add: {exc}") from None
    k.audit.record("user_add", by=ctx.proc.principal, pid=ctx.proc.pid, name=principal.name,
                   caps=sorted(principal.caps), quotas=principal.quotas)
    return {**_described(k, principal), "key_file": str(path)}


def sys_user_list(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    return {"users": [_described(k, p) for p in k.principals.users()]}


def sys_user_remove(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    try:
        principal = k.principals.remove(args["name"])
    except PrincipalError as exc:
        raise einval(f"user_remove: {exc}") from None
    reaped = _reap_all(k, principal.name, "its user was removed")
    jobs = _cancel_jobs(k, principal.name)
    k.metrics.forget(principal.name)      # a user added again under the name starts its figures afresh
    k.quotas.forget(principal.name)
    k.audit.record("user_remove", by=ctx.proc.principal, pid=ctx.proc.pid, name=principal.name, reaped=reaped,
                   jobs_cancelled=jobs)
    return {"name": principal.name, "reaped": reaped}


def sys_user_rotate(k: "Kernel", ctx: "CallContext", args: dict) -> dict:
    try:
        principal, path = k.principals.rotate(args["name"], reachable_at(k.settings.socket))
    except PrincipalError as exc:
        raise einval(f"user_rotate: {exc}") from None
    reaped = _reap_all(k, principal.name, "its user's key was rotated")
    k.audit.record("user_rotate", by=ctx.proc.principal, pid=ctx.proc.pid, name=principal.name, reaped=reaped)
    return {**_described(k, principal), "key_file": str(path)}


HANDLERS = {"user_add": sys_user_add, "user_list": sys_user_list, "user_remove": sys_user_remove,
            "user_rotate": sys_user_rotate}
