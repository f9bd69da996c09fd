"""`Subscription`: what `subscribe` returns, whichever gateway served it.

It keeps `rows` (a `LiveList`) current as frames arrive, and queues the
frames for whoever iterates. The queue is bounded: a consumer that falls
behind finds a synthetic `reset` plus the current rows in place of its
backlog — correct, because `rows` itself never skipped a frame.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from raycluster._tasks import TaskSet
from raycluster.errors import ClosedError, DesyncError
from raycluster.livequery import Cursor, DeltaOp, LiveDelta, LiveQuery
from raycluster.wire import GatewayDelta, WireFrame, gateway_deltas

from .livelist import LiveList

__all__ = ("Subscription", "SubscriptionControl")

_WIRE_FIELDS = tuple(LiveDelta.model_fields)


class SubscriptionControl(Protocol):
    """Whoever can act on a subscription for its client (a gateway)."""

    async def reanchor(self, sub_id: str, cursor: Cursor | None, limit: int) -> None:
        """Move the window; returns once the new window has arrived."""
        ...

    async def unsubscribe(self, sub_id: str) -> None:
        """End the subscription everywhere."""
        ...

    async def resync(self, sub_id: str) -> None:
        """Ask the owner for a reset and the current window."""
        ...


class Subscription:
    """A live query's client end: `rows`, async iteration of frames, reanchor, close."""

    def __init__(
        self,
        sub_id: str,
        tenant: str,
        query: LiveQuery,
        control: SubscriptionControl,
        *,
        buffer: int = 10_000,
        queue_frames: bool = True,
    ) -> None:
        self.id = sub_id
        self.tenant = tenant
        self.query = query
        self.rows = LiveList()
        self.closed = False
        self.close_reason: str | None = None  # why it ended, once it has
        self.dropped_frames = 0
        self.frames_in = 0  # frames delivered to this subscription
        self.on_change: Callable[[Subscription], None] | None = None
        self._control = control
        self._queue: deque[GatewayDelta] = deque()
        self._cap = buffer
        self._queue_frames = queue_frames  # False: only `rows` is kept (frames go elsewhere)
        self._arrived = asyncio.Event()
        self._reset_waiters: list[asyncio.Future[None]] = []
        self._reset_pending = False
        self._epoch = 0
        self._seq = 0
        self._tasks: TaskSet | None = None  # resyncs asked for (made on first need)

    def __repr__(self) -> str:
        return f"<Subscription {self.id} {self.tenant}/{self.query.entity} rows={len(self.rows)}>"

    @property
    def epoch(self) -> int:
        """Epoch of the last frame applied."""
        return self._epoch

    @property
    def seq(self) -> int:
        """`seq` of the last frame applied."""
        return self._seq

    def rebind(self, sub_id: str) -> None:
        """Continue under `sub_id` (the tier moved this subscription to another gateway).

        `rows` stay as they are until the `reset` and window of the new id
        arrive; whoever delivers them numbers them on from `seq`.
        """
        self.id = sub_id

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> GatewayDelta:
        while not self._queue:
            if self.closed:
                raise StopAsyncIteration
            self._arrived.clear()
            await self._arrived.wait()
        return self._queue.popleft()

    async def batch(self) -> list[GatewayDelta]:
        """Wait for at least one frame, then take every frame queued ([] once closed)."""
        while not self._queue:
            if self.closed:
                return []
            self._arrived.clear()
            await self._arrived.wait()
        return self.drain()

    def drain(self) -> list[GatewayDelta]:
        """Every frame queued now, without waiting."""
        out = list(self._queue)
        self._queue.clear()
        return out

    async def reanchor(self, cursor: Cursor | None, limit: int) -> list[dict[str, Any]]:
        """Slide the window; returns the new window's rows once they arrived."""
        if self.closed:
            raise ClosedError(f"subscription {self.id} is closed")
        arrived = self.next_reset()
        await self._control.reanchor(self.id, cursor, limit)
        await arrived  # already done when the control waits for it itself
        self.query = self.query.moved(cursor, limit)
        return self.rows.rows

    async def close(self) -> None:
        """End the subscription; iteration stops after the frames already queued."""
        if self.closed:
            return
        self._end("closed by its client")
        await self._control.unsubscribe(self.id)

    # -- gateway side ------------------------------------------------------------

    def deliver_wire(self, entries: list[WireFrame]) -> None:
        """`deliver` for wire entries `[sub_id, seq, epoch, delta-dict, ...]` (already fenced)."""
        self.deliver(gateway_deltas(entries))

    def deliver(self, frames: list[GatewayDelta]) -> None:
        """Apply accepted frames to `rows` and queue them for iteration."""
        queue = self._queue
        keep = self._queue_frames
        self.frames_in += len(frames)
        for f in frames:
            try:
                self.rows.apply(f.delta)
            except DesyncError:
                # Cannot happen with a correct stream; recover rather than serve a wrong list.
                self._resync()
                continue
            self._epoch, self._seq = f.epoch, f.seq
            if keep:
                queue.append(f)
            if f.delta.op is DeltaOp.RESET:
                self._reset_pending = True
        if self._reset_pending and self.rows.complete:
            self._reset_pending = False
            self._complete()
        if len(queue) > self._cap:
            self.dropped_frames += len(queue)
            queue.clear()
            queue.extend(self._synthetic_reset())
        if self.on_change is not None:
            self.on_change(self)
        self._wake()

    def mark_closed(self, reason: str = "ended by its gateway") -> None:
        """The gateway (or the tier) ended this subscription; `reason` says why.

        Iteration ends after the frames already queued; `close_reason` keeps
        the reason.
        """
        self._end(reason)

    def _end(self, reason: str) -> None:
        if not self.closed:
            self.close_reason = reason
        self.closed = True
        if self._tasks is not None:
            self._tasks.cancel()
        self._wake()

    def _resync(self) -> None:
        if self.closed:
            return
        if self._tasks is None:
            self._tasks = TaskSet(f"subscription {self.id}")
        self._tasks.spawn(self._control.resync(self.id), "subscription-resync")

    def next_reset(self) -> asyncio.Future[None]:
        """A future resolved when the next complete window (reset + its enters) has arrived."""
        fut = asyncio.get_running_loop().create_future()
        self._reset_waiters.append(fut)
        return fut

    def _complete(self) -> None:
        waiters, self._reset_waiters = self._reset_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def window_wire(self) -> list[WireFrame]:
        """Wire entries for a `reset` plus the current rows (what a lagging reader gets).

        They are numbered to end at the last `seq` applied, so a reader that
        checks `seq` sees the next live frame follow on without a gap.
        """
        sid, epoch, items = self.id, self._epoch, self.rows.items
        first = self._seq - len(items)
        none = dict.fromkeys(_WIRE_FIELDS)
        out: list[WireFrame] = [
            [sid, first, epoch, {**none, "op": "reset", "version": 0, "count": len(items)}]
        ]
        out += [
            [sid, first + k + 1, epoch, {**none, "op": "enter", "agg_id": i.agg_id,
                                         "version": i.version, "row": i.row, "new_index": k}]
            for k, i in enumerate(items)
        ]  # fmt: skip
        return out

    def _synthetic_reset(self) -> list[GatewayDelta]:
        return gateway_deltas(self.window_wire())

    def _wake(self) -> None:
        self._arrived.set()
