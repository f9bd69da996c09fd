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
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from raycluster._tasks import TaskSet
from raycluster.client import LiveList

from ._common import CommandError
from ._table import cell, format_table

if TYPE_CHECKING:
    from raycluster._connect import RemoteGateway
    from raycluster.client import Subscription
    from raycluster.livequery import LiveQuery
    from raycluster.wire import GatewayDelta

__all__ = ("REDRAWS_PER_S", "Screen", "WatchLimits", "watch")

REDRAWS_PER_S = 10.0
CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen
FIRST_WINDOW_NOTE_S = 1.0  # say what we are waiting for after this long


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


async def watch(sub: Subscription, screen: Screen, limits: WatchLimits) -> None:
    """Draw `sub`'s window until Ctrl-C/SIGTERM, `limits.frames` or `limits.seconds`.

    Redraws at most `REDRAWS_PER_S` times a second and only whole windows
    (never half-way through a reset); the last window is always drawn before
    returning. Raises `CommandError` if the gateway ends the subscription, or
    if `limits.seconds` passes before `limits.frames` (when both are given).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    view = LiveList()
    counted = 0  # frames applied after the first window
    started = False  # the first window is complete
    drawn_at = -1.0
    owed = True
    min_gap_s = 1.0 / REDRAWS_PER_S
    deadline = loop.time() + limits.seconds if limits.seconds is not None else None
    tasks = TaskSet("watch")
    stopper = tasks.spawn(stop.wait(), "watch-stop")
    batch: asyncio.Task[list[GatewayDelta]] | None = None
    reached = False
    try:
        while True:
            if batch is None:
                batch = tasks.spawn(sub.batch(), "watch-batch")
            waits: list[float] = []
            if deadline is not None:
                waits.append(max(0.0, deadline - loop.time()))
            if owed and view.complete and started:
                waits.append(max(0.0, drawn_at + min_gap_s - loop.time()))
            timeout = min(waits) if waits else None
            done, _ = await asyncio.wait(
                {batch, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if batch in done:
                frames = batch.result()
                batch = None
                if not frames and sub.closed:
                    raise CommandError("the gateway ended the subscription")
                # A whole batch: a shard sends the frames one change makes for a
                # subscription (a leave and the enter that refills the window) in
                # one batch, so stopping between batches stops between changes.
                for f in frames:
                    view.apply(f.delta)
                    owed = True
                    if started:
                        counted += 1
                    elif view.complete:  # the first window's reset and all its enters are in
                        started = True
                    if limits.frames is not None and started and counted >= limits.frames:
                        reached = True
            now = loop.time()
            ending = (
                stop.is_set()
                or (reached and view.complete)
                or (deadline is not None and now >= deadline)
            )
            if owed and started and view.complete and (ending or now - drawn_at >= min_gap_s):
                screen.draw(view, counted, sub.epoch)
                drawn_at, owed = now, False
            if ending:
                break
        if (
            not stop.is_set()
            and not reached
            and limits.frames is not None
            and limits.seconds is not None
        ):
            raise CommandError(
                f"{counted} of {limits.frames} frame(s) arrived within {limits.seconds:g}s"
            )
    finally:
        await tasks.aclose()
        for sig in installed:
            loop.remove_signal_handler(sig)
