"""The single-node live-query engine: shared views over one ordered feed.

One task pumps the feed and dispatches each change synchronously, so every
view sees changes in stream order and never mid-way through another. Store
reads (initial snapshots, cushion refills, reconciles) run as their own
tasks; while one is in flight its view *parks* the changes it receives, and
when the read returns the view waits until the feed has delivered everything
up to the read's watermark before merging. Then:

* parked changes at or before the watermark are applied to the rows the view
  already knew (bringing them to the watermark's moment),
* the read's rows (all strictly after the known range) are appended,
* parked changes after the watermark are applied on top.

Both sides then describe the same moment, which is what makes the handoff
gapless and the window exact no matter how writes and reads interleave.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Literal

from raycluster._resources import Service
from raycluster._tasks import Backoff, TaskSet, checkpoint
from raycluster.errors import ClosedError, InvalidQuery

from .filter import compile_predicate, indexable_terms
from .index import PredicateIndex
from .models import (
    Change,
    Cursor,
    DeltaOp,
    EntitySpec,
    LiveDelta,
    LiveQuery,
    Row,
    Snapshot,
    check_against,
    check_depth,
    check_name,
)
from .order import cursor_key, key_fn
from .ports import Feed, Refiller, Snapshotter, pos_key
from .window import Entry, Frame, StreamSet, Window

__all__ = ("Engine", "EngineStats", "EngineSubscription")

log = logging.getLogger(__name__)

LoadKind = Literal["initial", "refill", "reconcile", "reset"]
Sink = Callable[["EngineSubscription", list[Frame]], None]
_ZERO = (0, 0)
_RETRY_MIN_S = 0.05  # first backoff after a failed read (or a failed reset)
_RETRY_MAX_S = 2.0  # ceiling of the backoff between failed reads


class EngineStats:
    """Counters an operator (and the metrics exporter) reads."""

    def __init__(self) -> None:
        self.changes = 0
        self.frames = 0
        self.loads = 0
        self.load_errors = 0
        # Changes a view (or a subscriber's sink) failed on: each such view is
        # reset from the store (`resets["error"]`), the others got the change.
        self.dispatch_errors = 0
        self.lag_ms = 0  # write → dispatch delay of the last change of the last batch
        self.resets: dict[str, int] = {"overflow": 0, "reanchor": 0, "reconcile": 0, "error": 0}


class EngineSubscription:
    """One subscriber's live window.

    `snapshot` is the window when it was (re)anchored; iterating yields every
    frame after it, in order. With a `sink`, frames are handed to the sink as
    they are produced instead of being buffered (how a shard forwards them).
    """

    def __init__(
        self,
        engine: Engine,
        sub_id: str,
        tenant: str,
        query: LiveQuery,
        buffer: int,
        sink: Sink | None,
    ) -> None:
        self.id = sub_id
        self.tenant = tenant
        self.query = query
        self.snapshot: list[Row] = []
        self.closed = False
        self.overflows = 0
        self.sink = sink
        self._engine = engine
        self._buf: deque[Frame] = deque()
        self._sort = list(query.sort)
        self._cap = buffer
        self._arrived = asyncio.Event()
        self._view: _View | None = None

    def __repr__(self) -> str:
        return f"<EngineSubscription {self.id} {self.tenant}/{self.query.entity}>"

    def __aiter__(self) -> EngineSubscription:
        return self

    async def __anext__(self) -> LiveDelta:
        while not self._buf:
            if self.closed:
                raise StopAsyncIteration
            self._arrived.clear()
            await self._arrived.wait()
        return self._buf.popleft().delta(self._sort)

    def drain(self) -> list[LiveDelta]:
        """Every frame queued now, without waiting."""
        sort = self._sort
        out = [f.delta(sort) for f in self._buf]
        self._buf.clear()
        return out

    async def reanchor(self, cursor: Cursor | None, limit: int) -> list[Row]:
        """Slide the window: a `reset` and the new window follow on the stream."""
        return await self._engine._reanchor(self, cursor, limit)

    async def close(self) -> None:
        """Stop the subscription; iteration ends after the frames already queued."""
        self._engine._close_sub(self)

    # -- engine side -------------------------------------------------------------

    def _push(self, frames: list[Frame]) -> None:
        if self.sink is not None:
            self.sink(self, frames)
            return
        if len(self._buf) + len(frames) > self._cap:
            # Fell behind: drop the backlog, resend the current window instead.
            self.overflows += 1
            self._engine.stats.resets["overflow"] += 1
            self._buf.clear()
            frames = self.current_frames()
        self._buf.extend(frames)
        self._arrived.set()

    def current_frames(self) -> list[Frame]:
        """`reset` plus the current window as `enter` frames (what a resync sends)."""
        view = self._view
        ents = view.state.visible_entries() if view is not None else []
        frames = [Frame(DeltaOp.RESET, None, count=len(ents))]
        frames += [Frame(DeltaOp.ENTER, e, None, i) for i, e in enumerate(ents)]
        return frames

    def _send_reset(self) -> None:
        """Queue `reset` + the current window, past the buffer bound (it replaces history)."""
        frames = self.current_frames()
        if self.sink is not None:
            self.sink(self, frames)
            return
        self._buf.extend(frames)
        self._wake()

    def _wake(self) -> None:
        self._arrived.set()


class _View:
    """One window shared by every subscriber of an identical query shape."""

    def __init__(self, engine: Engine, tenant: str, query: LiveQuery, cushion: int) -> None:
        self.engine = engine
        self.tenant = tenant
        self.query = query
        self.shape = query.shape()
        self.subs: list[EngineSubscription] = []
        self.waiting = 0  # subscribers waiting for the initial load
        self.loading = False
        self.dropped = False
        self.pending: list[Change] = []
        self.loaded: tuple[Snapshot, int, LoadKind] | None = None
        self.ready = asyncio.Event()
        self.failed: BaseException | None = None
        self.errors = 0  # consecutive failed resets (their backoff grows)
        group = engine._groups[(tenant, query.entity)]
        self.index = group.index
        sort = list(query.sort)
        pred = compile_predicate(query.where)
        anchor = cursor_key(query.cursor, sort) if query.cursor is not None else ()
        hold, release = self.index.hold, self.index.release
        common: dict[str, Any] = {
            "limit": query.limit,
            "pred": pred,
            "keyfn": key_fn(sort),
            "sort": sort,
            "anchor": anchor,
            "on_add": lambda agg_id: hold(agg_id, self),
            "on_drop": lambda agg_id: release(agg_id, self),
        }
        self.state: Window | StreamSet
        if query.mode == "streamed":
            self.state = StreamSet(**common)
        else:
            self.state = Window(cushion=cushion, **common)

    def on_change(self, ch: Change) -> None:
        if self.loading:
            self.pending.append(ch)
            return
        out: list[Frame] = []
        state = self.state
        state.apply(ch.agg_id, ch.version, ch.row, ch.stream_id, ch.at, out)
        if out:
            self.emit(out)
        if state.wants_refill():
            self.engine._start_load(self, "refill")

    def emit(self, out: list[Frame]) -> None:
        subs = self.subs
        self.engine.stats.frames += len(out) * len(subs)
        for sub in subs:
            try:
                sub._push(out)
            except Exception:
                # One subscriber's sink failing must not keep the frames from the others.
                self.engine._sink_failed(sub)


class _Group:
    """The views of one (tenant, entity) and their index."""

    __slots__ = ("index", "views")

    def __init__(self) -> None:
        self.views: dict[str, _View] = {}
        self.index: PredicateIndex[_View] = PredicateIndex()


class Engine(Service):
    """Live queries over a row store and its feed, with shared views.

    `cushion` rows are kept past each window so most leaves are answered
    without a store read; `buffer` bounds each subscriber's queued frames (on
    overflow it gets a `reset` and the current window). `entities`, when
    given, are the only entities accepted, and queries are checked against
    them. The engine starts on first use; close it with `aclose()`.
    """

    def __init__(
        self,
        snapshotter: Snapshotter,
        refiller: Refiller,
        feed: Feed,
        *,
        cushion: int = 8,
        buffer: int = 1024,
        entities: Iterable[EntitySpec] = (),
    ) -> None:
        if cushion < 0:
            raise InvalidQuery("cushion", cushion, "must be 0 or more")
        if buffer < 1:
            raise InvalidQuery("buffer", buffer, "must be at least 1")
        self.snapshotter = snapshotter
        self.refiller = refiller
        self.feed = feed
        self.cushion = cushion
        self.buffer = buffer
        self.specs = {e.name: e for e in entities}
        self.stats = EngineStats()
        self._groups: dict[tuple[str, str], _Group] = {}
        self._pos: dict[str, tuple[int, int]] = {}
        self._seen_pos: dict[str, str] = {}  # the raw position each source last reported
        self._loading: set[_View] = set()
        self._parked: list[_View] = []
        self._tasks = TaskSet("live-query engine")  # the feed pump and the store reads
        self._subs: dict[str, EngineSubscription] = {}
        self._ids = itertools.count(1)
        self._tick: asyncio.Future[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._closed = False
        self._fed = False  # the feed reported its starting positions

    # -- public ------------------------------------------------------------------

    async def start(self) -> None:
        """Start pumping the feed (idempotent)."""
        if self._closed:
            raise ClosedError("engine is closed")
        if self._pump is None:
            self._pump = self._tasks.spawn(self._run_pump(), "livequery-pump")
            self._pump.add_done_callback(lambda _: self._notify())
        # Return once the feed reported where it starts: every write after
        # start() returns is then delivered.
        while not self._fed and not self._pump.done():
            await self._wait_tick()
        self._raise_if_pump_died()

    def check_query(self, query: LiveQuery) -> None:
        """Raise `InvalidQuery` if `query` is not a `LiveQuery` or does not fit the
        declared entities (groups nested deeper than `MAX_DEPTH` included)."""
        if not isinstance(query, LiveQuery):
            raise InvalidQuery("query", query, "must be a LiveQuery")
        check_depth(query.where)
        check_against(self.specs, query)

    async def subscribe(
        self,
        tenant: str,
        query: LiveQuery,
        *,
        sub_id: str | None = None,
        sink: Sink | None = None,
    ) -> EngineSubscription:
        """Register a live query; returns once its snapshot is ready.

        Raises `InvalidQuery` (nothing registered) for a query that does not
        fit, and the store's error if the initial read fails.
        """
        check_name("tenant", tenant, InvalidQuery)
        if sub_id is not None:
            check_name("sub_id", sub_id, InvalidQuery)
        self.check_query(query)
        await self.start()
        sid = sub_id if sub_id is not None else f"sub-{next(self._ids)}"
        if sid in self._subs:
            raise InvalidQuery("sub_id", sid, "already subscribed")
        sub = EngineSubscription(self, sid, tenant, query, self.buffer, sink)
        self._subs[sid] = sub
        try:
            await self._attach(sub)
        except BaseException:
            self._subs.pop(sid, None)
            raise
        return sub

    def subscriptions(self) -> list[EngineSubscription]:
        """Every open subscription."""
        return list(self._subs.values())

    def view_count(self) -> int:
        """How many distinct views are live."""
        return sum(len(g.views) for g in self._groups.values())

    async def settle(self, timeout_s: float | None = 60.0) -> None:
        """Return once every change published so far is dispatched and no read is in flight."""
        await self.start()
        head = {s: pos_key(p) for s, p in (await self.feed.head()).items()}
        async with asyncio.timeout(timeout_s):
            while True:
                self._raise_if_pump_died()
                caught_up = all(self._pos.get(s, _ZERO) >= p for s, p in head.items())
                if caught_up and not self._loading:
                    return
                await self._wait_tick()

    async def reconcile(self) -> int:
        """Re-read every maintained view; reset subscribers of those that drifted.

        Returns how many views were reset. A correct engine returns 0; this is
        the safety net after a feed gap (e.g. a trimmed stream).
        """
        before = self.stats.resets["reconcile"]
        for group in list(self._groups.values()):
            for view in list(group.views.values()):
                if isinstance(view.state, Window) and not view.loading and not view.dropped:
                    self._start_load(view, "reconcile")
        await self.settle()
        return self.stats.resets["reconcile"] - before

    async def aclose(self) -> None:
        """Stop the pump and every read; end every subscription."""
        self._closed = True
        for sub in list(self._subs.values()):
            self._close_sub(sub)
        await self._tasks.aclose()

    # -- feed --------------------------------------------------------------------

    async def _run_pump(self) -> None:
        dispatch = self._dispatch
        async for batch in self.feed.batches():
            checkpoint()
            for ch in batch.changes:
                try:
                    dispatch(ch)
                except Exception:
                    self.stats.dispatch_errors += 1
                    log.exception("dispatch of %s/%s %s failed", ch.tenant, ch.entity, ch.agg_id)
            if batch.changes:
                self.stats.changes += len(batch.changes)
                at = batch.changes[-1].at
                self.stats.lag_ms = max(0, int(time.time() * 1000) - at) if at else 0
            pos, seen = self._pos, self._seen_pos
            for source, p in batch.positions.items():
                # A feed reports every source each batch; most did not move (a string
                # compare is far cheaper than parsing 256 positions per batch).
                if seen.get(source) != p:
                    seen[source] = p
                    k = pos_key(p)
                    if k > pos.get(source, _ZERO):
                        pos[source] = k
            self._fed = True
            if self._parked:
                self._unpark()
            self._notify()

    def _dispatch(self, ch: Change) -> None:
        group = self._groups.get((ch.tenant, ch.entity))
        if group is None:
            return
        try:
            views = group.index.candidates(ch.agg_id, ch.row)
        except Exception:
            log.exception("candidate lookup of %s failed; trying every view", ch.agg_id)
            views = list(group.views.values())  # a view ignores a change that is not its
        for view in views:
            try:
                view.on_change(ch)
            except Exception:
                # Every other view still gets the change; this one is re-read.
                self.stats.dispatch_errors += 1
                log.exception(
                    "view %s failed on %s/%s %s; resetting it from the store",
                    view.shape, ch.tenant, ch.entity, ch.agg_id,
                )  # fmt: skip
                self._reset(view)

    def _reset(self, view: _View) -> None:
        """Re-read a view that failed: its subscribers get a `reset` and the true window.

        Until the read is merged the view parks changes as for any read, so
        nothing written meanwhile is lost. Repeated failures back off.
        """
        if view.dropped:
            return
        self.stats.resets["error"] += 1
        view.errors += 1
        if view in self._parked:
            self._parked.remove(view)
        view.loaded = None
        delay_s = min(_RETRY_MIN_S * 2 ** (view.errors - 1), _RETRY_MAX_S)
        self._start_load(view, "reset", delay_s if view.errors > 1 else 0.0)

    def _sink_failed(self, sub: EngineSubscription) -> None:
        self.stats.dispatch_errors += 1
        log.exception("delivering to %s failed; resending its window", sub.id)
        try:
            sub._send_reset()
        except Exception:
            log.exception("resending the window of %s failed", sub.id)

    def _raise_if_pump_died(self) -> None:
        p = self._pump
        if p is not None and p.done():
            if p.cancelled():
                raise ClosedError("engine is closed")
            exc = p.exception()
            raise ClosedError("the feed ended") from exc

    def _notify(self) -> None:
        t = self._tick
        if t is not None:
            self._tick = None
            if not t.done():
                t.set_result(None)

    async def _wait_tick(self) -> None:
        if self._tick is None:
            self._tick = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._tick)

    # -- views -------------------------------------------------------------------

    async def _attach(self, sub: EngineSubscription) -> None:
        key = (sub.tenant, sub.query.entity)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
        shape = sub.query.shape()
        view = group.views.get(shape)
        if view is None:
            view = _View(self, sub.tenant, sub.query, self.cushion)
            group.views[shape] = view
            group.index.add(view, indexable_terms(sub.query.where))
            self._start_load(view, "initial")
        view.waiting += 1
        try:
            await view.ready.wait()
        finally:
            view.waiting -= 1
        if view.failed is not None:
            if not view.subs and not view.waiting:
                self._drop_view(view)
            raise view.failed
        if sub.closed:
            if not view.subs and not view.waiting:
                self._drop_view(view)
            raise ClosedError(f"subscription {sub.id} closed while subscribing")
        view.subs.append(sub)
        sub._view = view
        sub.snapshot = view.state.visible()

    def _detach(self, sub: EngineSubscription) -> None:
        view = sub._view
        sub._view = None
        if view is None:
            return
        view.subs.remove(sub)
        if not view.subs and not view.waiting:
            self._drop_view(view)

    def _drop_view(self, view: _View) -> None:
        if view.dropped:
            return
        view.dropped = True
        key = (view.tenant, view.query.entity)
        group = self._groups.get(key)
        if group is not None and group.views.get(view.shape) is view:
            del group.views[view.shape]
            group.index.remove(view)
            view.state.clear()
            if not group.views:
                del self._groups[key]
        self._loading.discard(view)
        if view in self._parked:
            self._parked.remove(view)
        self._notify()

    async def _reanchor(
        self, sub: EngineSubscription, cursor: Cursor | None, limit: int
    ) -> list[Row]:
        if sub.closed:
            raise ClosedError(f"subscription {sub.id} is closed")
        query = sub.query.moved(cursor, limit)
        self.check_query(query)
        old = sub.query
        self._detach(sub)
        sub.query = query
        try:
            await self._attach(sub)
        except BaseException:
            sub.query = old
            if not sub.closed:
                await self._attach(sub)
            raise
        self.stats.resets["reanchor"] += 1
        sub._send_reset()
        return sub.snapshot

    def _close_sub(self, sub: EngineSubscription) -> None:
        if sub.closed:
            return
        sub.closed = True
        self._subs.pop(sub.id, None)
        self._detach(sub)
        sub._wake()

    # -- store reads -------------------------------------------------------------

    def _start_load(self, view: _View, kind: LoadKind, delay_s: float = 0.0) -> None:
        view.loading = True
        view.pending = []
        self._loading.add(view)
        view.index.loading.add(view)
        self._tasks.spawn(self._load(view, kind, delay_s), f"livequery-{kind}")

    async def _load(self, view: _View, kind: LoadKind, wait_s: float = 0.0) -> None:
        q, state = view.query, view.state
        if wait_s:
            await asyncio.sleep(wait_s)
        backoff = Backoff(_RETRY_MIN_S, _RETRY_MAX_S)
        while not view.dropped:
            checkpoint()
            try:
                if kind == "refill":
                    assert isinstance(state, Window)
                    want = state.refill_size()
                    snap = await self.refiller.refill(view.tenant, q, state.after(), want)
                elif kind == "reconcile":
                    assert isinstance(state, Window)
                    want = len(state.keys) + 1
                    snap = await self.snapshotter.snapshot(view.tenant, q, want)
                else:
                    want = q.limit + (self.cushion if isinstance(state, Window) else 0)
                    snap = await self.snapshotter.snapshot(view.tenant, q, want)
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.stats.load_errors += 1
                if kind == "initial":
                    self._fail(view, e)
                    return
                log.warning("%s read for %s failed (%r); retrying", kind, view.shape, e)
                await backoff.sleep()
        else:
            return
        if view.dropped:
            return
        self.stats.loads += 1
        view.loaded = (snap, want, kind)
        self._parked.append(view)
        self._unpark()

    def _fail(self, view: _View, e: BaseException) -> None:
        view.failed = e
        view.loading = False
        self._loading.discard(view)
        view.index.loading.discard(view)
        view.ready.set()
        if not view.subs and not view.waiting:
            self._drop_view(view)
        self._notify()

    def _unpark(self) -> None:
        parked, self._parked = self._parked, []
        for view in parked:
            if view.loaded is None or view.dropped:  # reset or dropped meanwhile
                continue
            snap, _, kind = view.loaded
            if self._pos.get(snap.source, _ZERO) < pos_key(snap.watermark):
                self._parked.append(view)
                continue
            try:
                self._finish(view)
            except Exception as e:
                self.stats.dispatch_errors += 1
                if kind == "initial":
                    log.exception("view %s failed on its first read", view.shape)
                    view.state.clear()
                    self._fail(view, e)
                else:
                    log.exception("view %s failed merging a read; resetting it", view.shape)
                    self._reset(view)

    def _finish(self, view: _View) -> None:
        assert view.loaded is not None
        snap, want, kind = view.loaded
        view.loaded = None
        state = view.state
        mark = pos_key(snap.watermark)
        pending, view.pending = view.pending, []
        view.loading = False
        self._loading.discard(view)
        view.index.loading.discard(view)
        out: list[Frame] = []
        later: list[Change] = []
        if kind == "reset":
            state.clear()  # what it held is suspect: start again from the read alone
        state.trimming = False  # the read starts at the horizon it was asked for
        for ch in pending:
            if pos_key(ch.stream_id) <= mark:
                state.apply(ch.agg_id, ch.version, ch.row, ch.stream_id, ch.at, out)
            else:
                later.append(ch)
        keyfn = state.keyfn
        rows = [Entry(keyfn(r.vals, r.agg_id), r.agg_id, r.version, r.vals) for r in snap.rows]
        complete = len(rows) < want
        if kind == "reconcile":
            assert isinstance(state, Window)
            if _drifted(state, rows, complete):
                self.stats.resets["reconcile"] += 1
                log.warning("view %s drifted from the store; resetting it", view.shape)
                state.clear()
                state.merge(rows, complete, [])
                out = []
                for sub in view.subs:
                    sub._send_reset()
        else:
            state.merge(rows, complete, out)
        state.trimming = True
        state.trim()
        for ch in later:
            state.apply(ch.agg_id, ch.version, ch.row, ch.stream_id, ch.at, out)
        view.errors = 0
        if kind == "initial":
            view.ready.set()
        elif kind == "reset":
            for sub in list(view.subs):
                try:
                    sub._send_reset()  # the window as it is now, later changes included
                except Exception:
                    self._sink_failed(sub)
        elif out:
            view.emit(out)
        if state.wants_refill():
            self._start_load(view, "refill")
        self._notify()


def _drifted(w: Window, truth: list[Entry], complete: bool) -> bool:
    """Whether the window's known range disagrees with a fresh read of the store."""
    mine = [(k, w.entries[k[-1]].version) for k in w.keys]
    theirs = [(e.key, e.version) for e in truth]
    h = w.horizon
    if h is not None:
        theirs = [t for t in theirs if t[0] <= h]
    if not complete and len(theirs) == len(truth):
        # The read ended inside the known range: only its span can be checked.
        return mine[: len(theirs)] != theirs
    return mine != theirs
