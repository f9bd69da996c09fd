"""Owning background tasks: reap them so failures surface, cancel and await them on close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

__all__ = ("cancel_and_wait", "reap")

log = logging.getLogger(__name__)


def reap(task: asyncio.Task[Any], what: str = "") -> BaseException | None:
    """A done-callback body: log a task that failed; returns its error (None if fine/cancelled)."""
    if task.cancelled():
        return None
    error = task.exception()
    if error is not None:
        log.error("%s: task %s failed", what or "raycluster", task.get_name(), exc_info=error)
    return error


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any] | None], timeout_s: float = 5.0
) -> None:
    """Cancel `tasks` and wait up to `timeout_s` for them to finish.

    Their own cancellation is expected and their errors are logged, never
    raised; a task still running after the timeout is logged. The calling
    task may be among them: it is cancelled, not waited for. A cancellation
    of the caller itself propagates (`asyncio.wait` does not swallow it), so
    this is safe in teardown paths that may themselves be cancelled.
    """
    owned = [t for t in tasks if t is not None]
    for t in owned:
        t.cancel()
    # A task closing what it belongs to is cancelled (at its next await) but
    # cannot wait for itself.
    me = asyncio.current_task()
    owned = [t for t in owned if t is not me]
    if not owned:
        return
    done, pending = await asyncio.wait(owned, timeout=timeout_s)
    for t in done:
        reap(t)
    for t in pending:
        log.warning("task %s still runs %ss after its cancellation", t.get_name(), timeout_s)
