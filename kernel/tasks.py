"""Background tasks that are neither lost nor silent.

asyncio keeps only a weak reference to a task, so one whose handle is dropped may be collected
before it ends, and the exception it ends with surfaces, if ever, as "Task exception was never
retrieved" when it is collected, with no word of which task it was. Every fire-and-forget task of
the kernel is started through a TaskSet: held until it ends, its exception logged at once under
its name. tests/test_tasks.py fails any `asyncio.create_task(...)` in kernel/ whose task is dropped.
"""

from __future__ import annotations

import asyncio
import traceback
from typing import Any, Coroutine, Iterator


class TaskSet:
    """Tasks one owner started and holds; each one's exception, if it ends with one, is logged."""

    def __init__(self, log: Any):
        self.log = log
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self.log.error("task.failed", task=task.get_name(), error=f"{type(exc).__name__}: {exc}",
                       traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def __iter__(self) -> Iterator[asyncio.Task]:
        return iter(list(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)
