"""kernel/tasks.py: a background task of the kernel is held while it runs, and the exception it
ends with is logged under its name instead of lost; no kernel module starts one and drops it."""

from __future__ import annotations

import ast
import asyncio
import gc
from pathlib import Path

from structlog.testing import capture_logs

from llmos.kernel import logs
from llmos.kernel.tasks import TaskSet

KERNEL = Path(__file__).resolve().parents[1] / "kernel"


async def test_an_exception_in_a_background_task_is_logged_with_its_name():
    async def fails():
        await asyncio.sleep(0)
        raise ValueError("the driver said something odd")

    tasks = TaskSet(logs.get("llmos.test"))
    with capture_logs() as seen:
        task = tasks.spawn(fails(), "driver-up-cpu")
        await asyncio.wait({task})
        await asyncio.sleep(0)              # done callbacks run on the next turn of the loop
    [entry] = [e for e in seen if e["event"] == "task.failed"]
    assert entry["log_level"] == "error" and entry["task"] == "driver-up-cpu"
    assert entry["error"] == "ValueError: the driver said something odd"
    assert "in fails" in entry["traceback"]


async def test_a_task_that_ends_well_or_is_cancelled_logs_nothing():
    tasks = TaskSet(logs.get("llmos.test"))
    with capture_logs() as seen:
        done = tasks.spawn(asyncio.sleep(0), "quick")
        stopped = tasks.spawn(asyncio.sleep(60), "long")
        await asyncio.sleep(0)
        tasks.cancel_all()
        await asyncio.wait({done, stopped})
        await asyncio.sleep(0)
    assert stopped.cancelled() and not [e for e in seen if e["event"] == "task.failed"]
    assert len(tasks) == 0


async def test_a_task_whose_handle_is_dropped_is_held_until_it_ends():
    """The loop holds tasks weakly: without the set's reference a dropped task could be collected mid-run."""
    tasks = TaskSet(logs.get("llmos.test"))
    finished = asyncio.Event()

    async def work():
        await asyncio.sleep(0.01)
        finished.set()

    tasks.spawn(work(), "dropped")
    gc.collect()
    assert len(tasks) == 1
    await asyncio.wait_for(finished.wait(), 5)
    await asyncio.sleep(0)
    assert len(tasks) == 0


def dropped_tasks(source: str) -> list[int]:
    """Lines of `source` that start a task with asyncio.create_task/ensure_future and keep no handle."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Attribute) and node.value.func.attr in ("create_task", "ensure_future")]


def test_no_kernel_module_starts_a_task_and_drops_it():
    found = {str(path.relative_to(KERNEL)): lines for path in sorted(KERNEL.rglob("*.py"))
             if (lines := dropped_tasks(path.read_text()))}
    assert not found, f"tasks started and dropped (use Kernel.spawn or a TaskSet): {found}"


def test_the_scan_sees_a_dropped_task_and_not_a_kept_one():
    assert dropped_tasks("import asyncio\nasync def f(c):\n    asyncio.create_task(c)\n") == [3]
    assert dropped_tasks("import asyncio\nasync def f(c):\n    t = asyncio.ensure_future(c)\n    await t\n") == []
