"""Tasks the daemon does not await one by one: fire-and-forget ones, neither forgotten by the
garbage collector nor silent when they fail, and long-running ones, watched until the stop."""

import asyncio
import logging
from collections.abc import Collection, Coroutine
from typing import Any

from poller.errors import TaskDied

log = logging.getLogger(__name__)

_running: set[asyncio.Task[Any]] = set()


def background(coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    task = asyncio.get_running_loop().create_task(coroutine, name=name)
    _running.add(task)
    task.add_done_callback(_finished)
    return task


def _finished(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())


async def watch(tasks: Collection[asyncio.Task[Any]], stop: asyncio.Event) -> TaskDied | None:
    """Wait for `stop`. Each of `tasks` is meant to run until then: if one ends first, with an
    exception or not, log why, set `stop` and return its death."""
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({stopped, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    dead = next((task for task in tasks if task in done), None)
    if dead is None or stop.is_set():  # ended because of the stop
        return None
    stop.set()
    exc = None if dead.cancelled() else dead.exception()
    why = "was cancelled" if dead.cancelled() else f"died: {exc!r}" if exc else "ended"
    log.error("task %s %s; stopping", dead.get_name(), why, exc_info=exc)
    return TaskDied(f"task {dead.get_name()} {why}")
