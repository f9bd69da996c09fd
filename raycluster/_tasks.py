"""Background work, owned: task sets, periodic loops, retry backoff, logged teardown.

Every component that runs tasks of its own keeps them in one `TaskSet`: it
holds a reference to each task until it ends, logs a failure the moment it
happens, and cancels and awaits whatever still runs on `aclose()`. Loops that
do something every N seconds are `every(...)`: one failing step is logged and
the loop goes on. Tasks that live and die together (a connection's reader
and writer) run in `race(...)`. Retries wait with one `Backoff`. Teardown
that must not raise runs under `logged(...)`, which logs what it swallowed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

from raycluster.errors import ClosedError

__all__ = (
    "Backoff",
    "TaskSet",
    "cancel_and_wait",
    "checkpoint",
    "every",
    "logged",
    "race",
    "reap",
)

log = logging.getLogger(__name__)

T = TypeVar("T")


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


def checkpoint() -> None:
    """Raise `CancelledError` if this task was cancelled and the cancellation got lost.

    On Python 3.11 `asyncio.wait_for`, which redis-py wraps around every
    command it sends, returns normally when its task is cancelled just as the
    wrapped call completes (CPython gh-86296, fixed in 3.12): the task stays
    `cancelling()` but runs on, and a loop would run for ever. Every
    long-running loop calls this once a turn, so a lost cancellation still
    ends it at the next turn.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def every(
    interval_s: float, step: Callable[[], Awaitable[object]], what: str, *, delay_s: float = 0.0
) -> NoReturn:
    """Run `step` every `interval_s` seconds (the first time after `delay_s`), for ever.

    A step that fails is logged (`what failed`) and the loop goes on; only
    cancellation ends it. Run it as a task of a `TaskSet` or a TaskGroup.
    """
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed", what)
        checkpoint()
        await asyncio.sleep(interval_s)


async def race(*coros: Coroutine[Any, Any, object]) -> None:
    """Run `coros` until the first ends, cancel the others, and raise the first error.

    Returns once all have ended; cancelling the caller cancels them all and
    propagates. Each runs guarded (its error kept, not raised into the task
    group): on Python 3.11 a TaskGroup whose child fails while the group is
    already exiting leaves its parent task cancelling for good (fixed in
    3.12), and the parent's next `checkpoint()` would end it.
    """
    errors: list[Exception] = []

    async def guarded(coro: Coroutine[Any, Any, object]) -> None:
        try:
            await coro
        except Exception as e:
            errors.append(e)

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(guarded(c)) for c in coros]

        def cancel_rest(_: asyncio.Task[None]) -> None:
            for t in tasks:
                t.cancel()

        for t in tasks:
            t.add_done_callback(cancel_rest)
    if errors:
        raise errors[0]


class TaskSet:
    """The background tasks of one component (`owner` names it in logs).

    `spawn` keeps a reference to each task until it ends; a task that fails
    is logged when it ends and counted in `failures` (`on_failure`, if
    given, is called with it too); `aclose` cancels whatever still runs and
    waits for it, bounded. After `aclose` (or the synchronous `cancel`)
    nothing more can be spawned.
    """

    def __init__(
        self, owner: str, *, on_failure: Callable[[BaseException], None] | None = None
    ) -> None:
        self.owner = owner
        self.failures = 0
        self._on_failure = on_failure
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    @property
    def closed(self) -> bool:
        """Whether `aclose` or `cancel` ran."""
        return self._closed

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run `coro` as a task of this set (`ClosedError` once the set is closed)."""
        if self._closed:
            coro.close()
            raise ClosedError(f"{self.owner}: cannot start {name}: its tasks were closed")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def every(
        self,
        interval_s: float,
        step: Callable[[], Awaitable[object]],
        name: str,
        *,
        delay_s: float = 0.0,
    ) -> asyncio.Task[NoReturn]:
        """Spawn `every(interval_s, step)`: a loop that logs a failing step and goes on."""
        return self.spawn(every(interval_s, step, f"{self.owner}: {name}", delay_s=delay_s), name)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        error = reap(task, self.owner)
        if error is not None:
            self.failures += 1
            if self._on_failure is not None:
                self._on_failure(error)

    def cancel(self) -> None:
        """Cancel every task now, without waiting (for teardown that cannot await).

        Safe from another thread than the tasks' loop (the cancel is handed to it).
        """
        self._closed = True
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for t in list(self._tasks):
            loop = t.get_loop()
            if loop is here:
                t.cancel()
            elif not loop.is_closed():
                loop.call_soon_threadsafe(t.cancel)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Cancel every task and wait up to `timeout_s` for them to end (idempotent)."""
        self._closed = True
        await cancel_and_wait(list(self._tasks), timeout_s)


class Backoff:
    """Exponential backoff with jitter between attempts: `min_s`, doubled up to `max_s`."""

    def __init__(self, min_s: float, max_s: float) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self._next_s = min_s

    def reset(self) -> None:
        """After a success: the next failure waits the minimum again."""
        self._next_s = self.min_s

    def next_delay_s(self) -> float:
        """The delay to wait now (with jitter: half to all of the current step); doubles it."""
        delay_s = self._next_s * (0.5 + random.random() / 2)
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay_s

    async def sleep(self) -> None:
        """Wait `next_delay_s()`."""
        await asyncio.sleep(self.next_delay_s())


@contextmanager
def logged(what: str, level: int = logging.WARNING) -> Iterator[None]:
    """Teardown that must not raise: an `Exception` inside is logged (`what failed`), not raised.

    Cancellation and other `BaseException`s propagate.
    """
    try:
        yield
    except Exception as e:
        log.log(level, "%s failed: %s: %s", what, type(e).__name__, e,
                exc_info=log.isEnabledFor(logging.DEBUG))  # fmt: skip
