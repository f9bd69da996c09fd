"""`race`: run a connection's tasks in one task group; the first to end cancels the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ("race",)


async def race(*coros: Coroutine[Any, Any, None]) -> None:
    """Run `coros` in one `asyncio.TaskGroup`; whichever ends first cancels the others.

    Returns once all have ended. An exception in any of them cancels the
    others and is raised (in an `ExceptionGroup`); cancelling the caller
    cancels them all and propagates.
    """
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(c) for c in coros]

        def cancel_rest(_: asyncio.Task[None]) -> None:
            for t in tasks:
                t.cancel()

        for t in tasks:
            t.add_done_callback(cancel_rest)
