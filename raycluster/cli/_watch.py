"""`raycluster watch`: a live window in the terminal, redrawn as frames arrive.

The command keeps its own `LiveList`, applying the subscription's frames a
batch at a time, so `--frames N` stops at the first change boundary after N
frames following the first window: never between the leave and the enter of
one change (which would show a window one row short), and extended to the
end of a reset's window if one is being rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO, TypeVar

from raycluster._tasks import TaskSet
from raycluster.client import LiveList

from ._common import CommandError
from ._table import cell, format_table

if TYPE_CHECKING:
    from raycluster._connect import RemoteGateway
    from raycluster.client import Subscription
    from raycluster.config import TierSettings
    from raycluster.livequery import LiveQuery
    from raycluster.wire import GatewayDelta

__all__ = ("CLOSE_TIMEOUT_S", "REDRAWS_PER_S", "Screen", "WatchLimits", "run_watch", "watch")

log = logging.getLogger("raycluster.cli")
T = TypeVar("T")

REDRAWS_PER_S = 10.0
CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen
FIRST_WINDOW_NOTE_S = 1.0  # say what we are waiting for after this long
CLOSE_TIMEOUT_S = 5.0  # unsubscribing, then closing the connection: each at most this long


@dataclass
class WatchLimits:
    """When `watch` stops by itself: after `frames` frames (at the end of the change that
    reaches it) and/or `seconds` seconds."""

    frames: int | None = None
    seconds: float | None = None


@dataclass
class Screen:
    """How the window is drawn: columns, title, and the output mode.

    Modes: `tty` (clear and redraw in place), `plain` (snapshots appended,
    separated by a blank line), `json` (one JSON object per snapshot).
    """

    title: str
    columns: list[str] | None = None
    mode: str = "plain"
    declared: list[str] = field(default_factory=list)
    out: TextIO = field(default_factory=lambda: sys.stdout)

    def columns_of(self, view: LiveList) -> list[str]:
        """The columns shown: `--columns`, else the declared ones, then any others seen."""
        if self.columns is not None:
            return self.columns
        cols = list(self.declared)
        seen = set(cols)
        for item in view.items:
            for k in item.row:
                if k not in seen:
                    seen.add(k)
                    cols.append(k)
        return cols

    def draw(self, view: LiveList, frames: int, epoch: int) -> None:
        """One snapshot of `view`."""
        if self.mode == "json":
            snap = {
                "frames": frames,
                "epoch": epoch,
                "rows": [{"id": i.agg_id, "version": i.version, "row": i.row} for i in view],
            }
            self.out.write(json.dumps(snap, separators=(",", ":")) + "\n")
            self.out.flush()
            return
        cols = self.columns_of(view)
        stamp = time.strftime("%H:%M:%S")
        head = f"{self.title} | {len(view)} row(s), {frames} frame(s), epoch {epoch}, {stamp}"
        rows: Sequence[Sequence[str]] = [
            [str(k + 1), item.agg_id, *(cell(item.row.get(c)) for c in cols)]
            for k, item in enumerate(view)
        ]
        table = format_table(["#", "id", *cols], rows)
        text = "\n".join([head, *table]) + "\n"
        if self.mode == "tty":
            self.out.write(CLEAR + text)
        else:
            self.out.write(text + "\n")
        self.out.flush()


async def _note_slow_first_window() -> None:
    await asyncio.sleep(FIRST_WINDOW_NOTE_S)
    print("raycluster: waiting for the first window (is a shard running?)", file=sys.stderr)


async def first_window(gateway: RemoteGateway, tenant: str, query: LiveQuery) -> Subscription:
    """Subscribe, saying on stderr if the first window takes more than a second."""
    tasks = TaskSet("watch")
    tasks.spawn(_note_slow_first_window(), "watch-note")
    try:
        sub = await gateway.subscribe(tenant, query)
    finally:
        await tasks.aclose()
    return sub


async def run_watch(
    url: str,
    settings: TierSettings,
    tenant: str,
    query: LiveQuery,
    screen: Screen,
    limits: WatchLimits,
) -> None:
    """The whole command: connect, subscribe, draw until a limit or a signal, unsubscribe.

    `limits.seconds` bounds all of it, connecting and the first window
    included (`CommandError` if it passes before the first window);
    unsubscribing and closing afterwards take at most `CLOSE_TIMEOUT_S` each.
    """
    from raycluster._connect import connect

    deadline = None
    if limits.seconds is not None:
        deadline = asyncio.get_running_loop().time() + limits.seconds
    gateway = await _within(deadline, limits, connect(url, settings), "Redis answered")
    try:
        first = first_window(gateway, tenant, query)
        sub = await _within(deadline, limits, first, "the first window (is a shard running?)")
        try:
            await watch(sub, screen, limits, deadline)
        finally:
            await _bounded(sub.close(), "unsubscribing")
    finally:
        await _bounded(gateway.aclose(), "closing the connection to Redis")


async def _within(deadline: float | None, limits: WatchLimits, step: Awaitable[T], what: str) -> T:
    """`await step`, a `CommandError` if `--seconds` runs out first."""
    timeout = asyncio.timeout_at(deadline)
    try:
        async with timeout:
            return await step
    except TimeoutError:
        if not timeout.expired():
            raise
        raise CommandError(f"--seconds {limits.seconds:g} passed before {what}") from None


async def _bounded(step: Awaitable[object], what: str) -> None:
    """Teardown bounded by `CLOSE_TIMEOUT_S`: past it, a warning, and the command goes on."""
    try:
        await asyncio.wait_for(step, CLOSE_TIMEOUT_S)
    except TimeoutError:
        log.warning("%s took more than %g s; gave up on it", what, CLOSE_TIMEOUT_S)


class _Window:
    """The window `watch` draws: the frames applied, those counted after the first
    window, and whether a redraw is owed."""

    def __init__(self, frames: int | None) -> None:
        self.view = LiveList()
        self.limit = frames
        self.counted = 0  # frames applied after the first window
        self.started = False  # the first window is complete
        self.reached = False  # `limit` frames were counted
        self.owed = True  # a change not drawn yet
        self.drawn_at = -float("inf")

    def apply(self, frames: list[GatewayDelta]) -> None:
        """Apply one batch. A shard sends the frames one change makes for a subscription
        (a leave and the enter that refills the window) in one batch, so stopping
        between batches stops between changes."""
        for f in frames:
            self.view.apply(f.delta)
            self.owed = True
            if self.started:
                self.counted += 1
            elif self.view.complete:  # the first window's reset and all its enters are in
                self.started = True
            if self.limit is not None and self.started and self.counted >= self.limit:
                self.reached = True

    @property
    def drawable(self) -> bool:
        """A change is owed and the window is whole (never half-way through a reset)."""
        return self.owed and self.started and self.view.complete

    def redraw_in(self, now: float) -> float | None:
        """Seconds until the owed redraw may happen (None: nothing to draw)."""
        return max(0.0, self.drawn_at + 1.0 / REDRAWS_PER_S - now) if self.drawable else None

    def done(self) -> bool:
        """`limit` frames arrived and the window is whole again."""
        return self.reached and self.view.complete


@contextlib.contextmanager
def _signals_set(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set `stop` meanwhile (where the loop supports signal handlers)."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def watch(
    sub: Subscription, screen: Screen, limits: WatchLimits, deadline: float | None = None
) -> None:
    """Draw `sub`'s window until Ctrl-C/SIGTERM, `limits.frames` or the deadline.

    The deadline is `deadline` (loop time), else `limits.seconds` from now.
    Redraws at most `REDRAWS_PER_S` times a second and only whole windows;
    the last window is always drawn before returning. Raises `CommandError`
    if the gateway ends the subscription, or if the deadline passes before
    `limits.frames` (when both are given).
    """
    loop = asyncio.get_running_loop()
    if deadline is None and limits.seconds is not None:
        deadline = loop.time() + limits.seconds
    window = _Window(limits.frames)
    stop = asyncio.Event()
    tasks = TaskSet("watch")
    try:
        with _signals_set(stop):
            stopper = tasks.spawn(stop.wait(), "watch-stop")
            batch: asyncio.Task[list[GatewayDelta]] | None = None
            while True:
                batch = batch or tasks.spawn(sub.batch(), "watch-batch")
                now = loop.time()
                waits = [w for w in (window.redraw_in(now), _left(deadline, now)) if w is not None]
                done, _ = await asyncio.wait(
                    {batch, stopper}, timeout=min(waits, default=None),
                    return_when=asyncio.FIRST_COMPLETED,
                )  # fmt: skip
                if batch in done:
                    frames, batch = batch.result(), None
                    if not frames and sub.closed:
                        raise CommandError("the gateway ended the subscription")
                    window.apply(frames)
                now = loop.time()
                ending = stop.is_set() or window.done() or _left(deadline, now) == 0
                if window.drawable and (ending or window.redraw_in(now) == 0):
                    screen.draw(window.view, window.counted, sub.epoch)
                    window.drawn_at, window.owed = now, False
                if ending:
                    break
    finally:
        await tasks.aclose()
    timed_out = not stop.is_set() and not window.reached and limits.seconds is not None
    if limits.frames is not None and timed_out:
        raise CommandError(
            f"{window.counted} of {limits.frames} frame(s) arrived within {limits.seconds:g}s"
        )


def _left(deadline: float | None, now: float) -> float | None:
    """Seconds to `deadline` (0 once past it; None: no deadline)."""
    return None if deadline is None else max(0.0, deadline - now)
