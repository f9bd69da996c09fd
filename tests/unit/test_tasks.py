"""The shared owner of background work: TaskSet, every, race, checkpoint, Backoff, logged."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from support import wait_for

from raycluster._tasks import Backoff, TaskSet, checkpoint, every, logged, race
from raycluster.errors import ClosedError


async def test_a_task_set_keeps_reaps_and_closes_its_tasks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures: list[BaseException] = []
    tasks = TaskSet("owner-x", on_failure=failures.append)
    forever = tasks.spawn(asyncio.sleep(3600), "forever")
    quick = tasks.spawn(asyncio.sleep(0), "quick")

    async def boom() -> None:
        raise RuntimeError("kaput")

    with caplog.at_level(logging.ERROR, logger="raycluster._tasks"):
        bad = tasks.spawn(boom(), "boom")
        await asyncio.wait([quick, bad])
        await asyncio.sleep(0)  # done callbacks run
    assert len(tasks) == 1  # finished tasks are not kept
    assert tasks.failures == 1 and isinstance(failures[0], RuntimeError)
    assert "owner-x: task boom failed" in caplog.text
    await tasks.aclose()
    assert forever.cancelled() and tasks.closed and len(tasks) == 0
    coro = asyncio.sleep(0)
    with pytest.raises(ClosedError, match="owner-x"):
        tasks.spawn(coro, "late")


async def test_every_logs_a_failing_step_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("first turn fails")

    tasks = TaskSet("looper")
    with caplog.at_level(logging.ERROR, logger="raycluster._tasks"):
        tasks.every(0.001, step, "tick")
        await wait_for(lambda: calls >= 3, 5, interval_s=0.001, what="three turns")
    await tasks.aclose()
    assert "looper: tick failed" in caplog.text
    assert tasks.failures == 0  # the loop itself never failed


async def test_a_cancellation_lost_inside_wait_for_still_ends_the_loop() -> None:
    """On Python 3.11, wait_for returns normally when its task is cancelled as the
    wrapped call completes (redis-py wraps every command in it); the loop must end anyway."""
    turns = 0
    loop_task: asyncio.Task[None] | None = None

    async def completes_while_cancelled() -> None:
        assert loop_task is not None
        asyncio.get_running_loop().call_soon(loop_task.cancel)

    async def step() -> None:
        nonlocal turns
        turns += 1
        if turns == 1:
            await asyncio.wait_for(completes_while_cancelled(), 5)

    loop_task = asyncio.create_task(every(0.001, step, "lossy"))
    done, _ = await asyncio.wait([loop_task], timeout=5)
    assert done, f"the loop still runs after {turns} turns"
    assert loop_task.cancelled() and turns == 1


async def test_checkpoint_is_silent_with_no_cancellation_pending() -> None:
    checkpoint()


async def test_cancel_from_another_thread_is_handed_to_the_loop() -> None:
    tasks = TaskSet("threads")
    t = tasks.spawn(asyncio.sleep(3600), "sleeper")
    thread = threading.Thread(target=tasks.cancel)
    thread.start()
    thread.join()
    done, _ = await asyncio.wait([t], timeout=5)
    assert done and t.cancelled() and tasks.closed


def test_backoff_doubles_with_jitter_up_to_its_ceiling() -> None:
    b = Backoff(0.1, 0.5)
    delays = [b.next_delay_s() for _ in range(6)]
    steps = [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
    assert all(s / 2 <= d <= s for d, s in zip(delays, steps, strict=True)), delays
    b.reset()
    assert 0.05 <= b.next_delay_s() <= 0.1


def test_logged_reports_what_it_swallowed(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="raycluster._tasks"), logged("closing z"):
        raise OSError("disk gone")
    assert "closing z failed: OSError: disk gone" in caplog.text
    with pytest.raises(KeyboardInterrupt), logged("closing z"):
        raise KeyboardInterrupt


async def test_race_ends_with_the_first_and_cancels_the_rest() -> None:
    cancelled: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    await asyncio.wait_for(race(asyncio.sleep(0.01), forever("a"), forever("b")), 5)
    assert sorted(cancelled) == ["a", "b"]


async def test_race_raises_the_first_error_itself_not_a_group() -> None:
    async def boom() -> None:
        await asyncio.sleep(0.01)
        raise OSError("gone")

    async def late() -> None:
        await asyncio.sleep(3600)

    with pytest.raises(OSError, match="gone"):
        await asyncio.wait_for(race(boom(), late()), 5)
    task = asyncio.current_task()
    assert task is not None and not task.cancelling()  # the caller is not left cancelling


async def test_cancelling_the_caller_of_race_cancels_its_tasks() -> None:
    started, ended = asyncio.Event(), asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            ended.set()

    outer = asyncio.create_task(race(forever(), forever()))
    await started.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert ended.is_set()
