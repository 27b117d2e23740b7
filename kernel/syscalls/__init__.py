"""The syscall table: one handler per syscall of specs/syscalls.toml, grouped by family.

Arguments arrive already validated against the table (types, ranges, defaults) and the
caller's capability checked (kernel/dispatch.py); handlers check what the table cannot express
(cross-argument rules, ownership, existence). A plain function answers at once on the loop; a
coroutine runs as a task of its own, for calls that wait on a driver, the service host or the
disk. Handlers take the Kernel as their first argument and import it only as a type.
"""

from __future__ import annotations

from . import adapters, auditread, devices, inference, jobs, memory, models, process, score, services, stats, users

HANDLERS = {**process.HANDLERS, **devices.HANDLERS, **models.HANDLERS, **inference.HANDLERS, **memory.HANDLERS,
            **services.HANDLERS, **users.HANDLERS, **stats.HANDLERS, **score.HANDLERS,
            **adapters.HANDLERS, **jobs.HANDLERS, **auditread.HANDLERS}
