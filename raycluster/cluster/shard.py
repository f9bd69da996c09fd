"""The shard runtime: one matcher node of the tier (engine-neutral: no Ray, no Redis).

A shard heartbeats, owns the partitions that rendezvous hashing gives it over
the live set, serves the subscriptions of those partitions with one live-query
`Engine`, and forwards frames to gateways in batches. On gaining a partition
it claims a fencing epoch, rebuilds every registration of the partition from
the registry and sends each a `reset` (new epoch) plus its window; on losing
one it stops serving it at once. Gateways drop frames older than the newest
epoch they have seen, so two shards that briefly both believe they own a
partition never interleave in a client's stream.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypedDict

from raycluster._tasks import TaskSet, cancel_and_wait, checkpoint, every, logged
from raycluster.livequery import (
    Engine,
    EngineSubscription,
    EntitySpec,
    Frame,
    Refiller,
    Snapshotter,
)

from ._rwlock import KeyedLock, RWLock
from .options import ShardOptions
from .ports import ControlBus, DeltaBus, Fencing, Membership, PartitionFeed, SubscriptionRegistry
from .protocol import (
    OP_REANCHOR,
    OP_RESYNC,
    OP_SUBSCRIBE,
    OP_UNSUBSCRIBE,
    Control,
    Registration,
    WireFrame,
)
from .routing import owned_by, owner

__all__ = (
    "Shard",
    "ShardCounters",
    "ShardDeps",
    "ShardOptions",
    "ShardStatus",
    "Store",
    "owned_partitions",
)

log = logging.getLogger(__name__)

CLAIM_CONCURRENCY = 8  # partitions rebuilt at once (bounded: each holds Redis connections)
MAX_FORWARDS = 1  # a control misrouted on a stale live set is forwarded at most once
CONTROL_CONCURRENCY = 64  # controls handled at once (each mostly waits on one store read)
FLUSH_RETRY_S = 0.2  # a failed delta send (or flush step) is retried after this pause


class Store(Snapshotter, Refiller, Protocol):
    """A row store that answers both snapshots and refills."""


@dataclass
class ShardDeps:
    """What a shard runs against."""

    store: Store
    feed: PartitionFeed
    registry: SubscriptionRegistry
    members: Membership
    control: ControlBus
    fencing: Fencing
    delta: Mapping[str, DeltaBus]  # transport name → bus
    entities: Iterable[EntitySpec] = ()


def owned_partitions(shard_id: str, live: list[str]) -> set[int]:
    """The partitions `shard_id` owns among `live` (none if it is not live)."""
    return set(_owned(shard_id, tuple(live)))


@functools.lru_cache(maxsize=64)
def _owned(shard_id: str, live: tuple[str, ...]) -> frozenset[int]:
    # 256 x len(live) hashes: worth caching, the live set rarely changes
    # and every shard recomputes it each ownership interval.
    return owned_by(shard_id, live) if shard_id in live else frozenset()


class ShardCounters(TypedDict):
    """A shard's event counters (since it started)."""

    claims: int
    releases: int
    controls: int
    control_errors: int
    dropped_controls: int
    forwarded_controls: int
    overflow_resyncs: int
    send_errors: int
    gateway_sweeps: int
    conflicts: int  # a control or registration disagreed with what is served
    handovers: int  # a sub moved to the gateway that took it over (a resume)
    flush_errors: int  # a flusher step failed outside its send (logged; resynced)
    feed_gaps: int  # events lost between writes and this shard (trim, Redis failover)
    gap_repairs: int  # re-reads of every view after feed gaps
    flusher_restarts: int  # a flusher task ended unexpectedly and was started again


class ShardStatus(ShardCounters):
    """What `Shard.status()` reports (a plain dict: it crosses Ray and JSON as one)."""

    shard: str
    partitions: list[int]  # owned now
    epochs: dict[int, int]  # fencing epoch of each owned partition
    subscriptions: int
    views: int  # distinct live views (shared by identical queries)
    changes: int  # changes matched so far
    frames: int  # frames produced so far
    resets: dict[str, int]  # resets sent, by cause
    lag_ms: int  # write → match delay of the newest change matched
    pending_frames: int  # queued for gateways
    batches_sent: int
    uptime_s: float


class _Served:
    """A subscription this shard serves."""

    __slots__ = ("epoch", "reg", "rev", "seq", "sort", "sub")

    def __init__(self, reg: Registration, epoch: int) -> None:
        self.reg = reg
        self.rev = reg.rev  # the query revision its frames show
        self.epoch = epoch
        self.seq = 0
        self.sort = list(reg.query.sort)
        self.sub: EngineSubscription | None = None


@dataclass
class _Outbox:
    """Frames waiting for one gateway, and its flusher."""

    gateway_id: str
    transport: str
    frames: list[WireFrame] = field(default_factory=list)
    resync: set[str] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    sent_batches: int = 0


class Shard:
    """One matcher node. `await run()` drives it until cancelled; `stop()` leaves gracefully."""

    def __init__(self, shard_id: str, deps: ShardDeps, options: ShardOptions | None = None) -> None:
        self.id = shard_id
        self.deps = deps
        self.opts = options or ShardOptions()
        self.engine = Engine(
            deps.store, deps.store, deps.feed, cushion=self.opts.cushion, entities=deps.entities
        )
        self.owned: set[int] = set()
        self.epochs: dict[int, int] = {}
        self.served: dict[str, _Served] = {}
        self._outboxes: dict[str, _Outbox] = {}
        self._flushers = TaskSet(f"shard {shard_id}: flushers")  # one per outbox
        # Ownership changes run alone; controls run together (ordered per subscription).
        self._lock = RWLock()
        self._per_sub = KeyedLock()  # one subscription's serves and unserves take turns
        self._missing_gateways: set[str] = set()
        self._live: list[str] = []  # the live set of the last reconcile
        self._gap = asyncio.Event()  # set by `feed_gap`
        self._started = time.monotonic()
        self.counters: ShardCounters = {
            "claims": 0,
            "releases": 0,
            "controls": 0,
            "control_errors": 0,
            "dropped_controls": 0,
            "forwarded_controls": 0,
            "overflow_resyncs": 0,
            "send_errors": 0,
            "gateway_sweeps": 0,
            "conflicts": 0,  # a control or registration disagreed with what is served
            "handovers": 0,  # a sub moved to the gateway that took it over (a resume)
            "flush_errors": 0,  # a flusher step failed outside its send (logged; resynced)
            "feed_gaps": 0,  # events lost between writes and this shard (trim, Redis failover)
            "gap_repairs": 0,  # re-reads of every view after feed gaps
            "flusher_restarts": 0,  # a flusher task ended unexpectedly and was started again
        }
        self._closing = False
        # Partitions being claimed: controls for one wait for its claim, not for all.
        self._claiming: dict[int, asyncio.Event] = {}

    # -- lifecycle ---------------------------------------------------------------

    async def run(self) -> None:
        """Heartbeat, reconcile ownership and serve controls until cancelled."""
        await self.deps.members.heartbeat(self.id)
        await self.engine.start()
        try:
            who, o = f"shard {self.id}", self.opts
            async with asyncio.TaskGroup() as tg:  # controls and gap repairs end it if they fail
                tg.create_task(every(o.heartbeat_interval_s, self._heartbeat, f"{who}: heartbeat"))
                tg.create_task(every(o.ownership_interval_s, self.reconcile, f"{who}: reconcile"))
                tg.create_task(every(o.gateway_check_interval_s, self._sweep, f"{who}: sweep"))
                tg.create_task(self._serve_controls())
                tg.create_task(self._repair_gaps())
        finally:
            await self._shutdown()

    async def stop(self) -> None:
        """Leave the live set now so other shards take over without waiting for the TTL."""
        with logged(f"shard {self.id}: leaving the live set"):
            await asyncio.wait_for(self.deps.members.leave(self.id), 5)

    async def _shutdown(self) -> None:
        self._closing = True  # flushers are not restarted from here on
        await self._flushers.aclose()
        await self.engine.aclose()

    def feed_gap(self, stream: str, position: str) -> None:
        """The feed found events missing from `stream` (trimmed unread, or lost by a
        Redis failover): every view is re-read from the store soon (`_repair_gaps`)."""
        self.counters["feed_gaps"] += 1
        self._gap.set()

    async def _repair_gaps(self) -> None:
        while True:
            checkpoint()
            await self._gap.wait()
            self._gap.clear()
            try:
                resets = await self.engine.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("shard %s: re-reading the views after a feed gap failed", self.id)
                self._gap.set()  # try again
                await asyncio.sleep(self.opts.ownership_interval_s)
                continue
            self.counters["gap_repairs"] += 1
            log.warning("shard %s: views re-read after a feed gap; %d reset", self.id, resets)

    async def _heartbeat(self) -> None:
        await self.deps.members.heartbeat(self.id)

    # -- ownership ---------------------------------------------------------------

    async def reconcile(self) -> None:
        """Recompute owned partitions: claim gained, release lost, re-claim fenced ones.

        Only the bookkeeping (which partitions are lost, kept or gained) holds
        the write lock; each gained partition is then claimed and rebuilt
        under the read lock, so controls keep flowing during a rebuild and a
        control for a partition being claimed waits for that claim alone.
        """
        live = await self.deps.members.live_shards()
        self._live = live
        want = owned_partitions(self.id, live)
        async with self._lock.write():
            lost = self.owned - want
            kept = self.owned & want
            if kept:
                # Someone claimed a partition we still hold (we were thought dead):
                # our epoch is stale, so claim again and resend every window.
                current = await self.deps.fencing.current(kept)
                stale = {p for p in kept if current.get(p, 0) != self.epochs.get(p)}
                lost |= stale
            gained = want - (self.owned - lost)
            if lost:
                await self._release(lost)
            if lost or gained:
                await self.deps.feed.set_partitions(want)
            for p in gained:
                self._claiming[p] = asyncio.Event()
        try:
            if gained:
                limit = asyncio.Semaphore(CLAIM_CONCURRENCY)
                await asyncio.gather(*(self._claim(p, limit) for p in sorted(gained)))
        finally:
            for p in gained:  # (a cancelled reconcile must not leave controls waiting)
                self._claim_over(p)

    async def _claimed(self, p: int) -> None:
        """Return once partition `p` is not being claimed (at once if it is not)."""
        claim = self._claiming.get(p)
        if claim is not None:
            await claim.wait()

    def _claim_over(self, p: int) -> None:
        claim = self._claiming.pop(p, None)
        if claim is not None:
            claim.set()

    async def _claim(self, p: int, limit: asyncio.Semaphore) -> None:
        try:
            async with limit, self._lock.read():
                await self._claim_one(p)
        finally:
            self._claim_over(p)

    async def _claim_one(self, p: int) -> None:
        try:
            epoch = await self.deps.fencing.claim(p)
            self.owned.add(p)
            self.epochs[p] = epoch
            self.counters["claims"] += 1
            # Every registration is served; a gateway that is really gone
            # is removed by the sweep, which needs two observations.
            for reg in await self.deps.registry.by_partition(p):
                await self._serve(reg)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Not (fully) claimed: give it up; the next reconcile claims it again.
            log.exception("shard %s: claiming partition %d failed", self.id, p)
            await self._release({p})

    async def _release(self, partitions: set[int]) -> None:
        """Stop serving `partitions` (one pass over the served subscriptions)."""
        for p in partitions:
            self.owned.discard(p)
            self.epochs.pop(p, None)
        self.counters["releases"] += len(partitions)
        for sid in [sid for sid, s in self.served.items() if s.reg.partition in partitions]:
            await self._unserve(sid)

    # -- serving -----------------------------------------------------------------

    async def _serve(self, reg: Registration) -> None:
        """Serve `reg` as the registry has it now.

        Not served yet (or served for another gateway, tenant or claim):
        subscribe afresh, a `reset` and the window follow. Served at an older
        revision: reanchor (a `reset` and the new window). Served as is:
        resend the window. A claim's rebuild and a control can reach one
        subscription together, so its serves and unserves take turns.
        """
        async with self._per_sub.hold(reg.sub_id):
            p = reg.partition
            if p not in self.owned:
                return  # released meanwhile: its owner serves it
            served = self.served.get(reg.sub_id)
            if served is not None and (
                served.reg.gateway_id != reg.gateway_id
                or served.reg.tenant != reg.tenant
                or served.epoch != self.epochs[p]
            ):
                await self._unserve_now(reg.sub_id)
                served = None
            if served is not None and served.sub is not None:
                if reg.rev > served.rev:
                    served.reg, served.rev = reg, reg.rev
                    await served.sub.reanchor(reg.query.cursor, reg.query.limit)
                else:
                    self._emit(served, served.sub.current_frames())
                return
            served = _Served(reg, self.epochs[p])
            self.served[reg.sub_id] = served  # (so a release in the meantime sees it)
            try:
                sub = await self.engine.subscribe(
                    reg.tenant, reg.query, sub_id=reg.sub_id, sink=self._sink
                )
            except Exception:
                self.served.pop(reg.sub_id, None)
                log.exception("shard %s: cannot serve %s", self.id, reg.sub_id)
                return
            except BaseException:  # cancelled: nothing half-served stays behind
                self.served.pop(reg.sub_id, None)
                raise
            served.sub = sub
            self._emit(served, sub.current_frames())

    async def _unserve(self, sub_id: str) -> None:
        async with self._per_sub.hold(sub_id):
            await self._unserve_now(sub_id)

    async def _unserve_now(self, sub_id: str) -> None:
        served = self.served.pop(sub_id, None)
        if served is not None and served.sub is not None:
            await served.sub.close()

    def _sink(self, sub: EngineSubscription, frames: list[Frame]) -> None:
        served = self.served.get(sub.id)
        if served is not None and served.sub is sub:
            self._emit(served, frames)

    def _emit(self, served: _Served, frames: list[Frame]) -> None:
        ob = self._append(served, frames)
        if len(ob.frames) > self.opts.max_pending_frames:
            # The gateway cannot keep up: drop its backlog; each of its
            # subscriptions gets a reset and its current window instead.
            self._resync_gateway(ob)
            self.counters["overflow_resyncs"] += 1
        ob.ready.set()

    def _append(self, served: _Served, frames: list[Frame]) -> _Outbox:
        reg = served.reg
        ob = self._outbox(reg.gateway_id, reg.transport)
        sid, epoch, sort, seq, rev = reg.sub_id, served.epoch, served.sort, served.seq, served.rev
        out = ob.frames
        for f in frames:
            seq += 1
            out.append([sid, seq, epoch, f.wire(sort), rev])
        served.seq = seq
        return ob

    def _outbox(self, gateway_id: str, transport: str) -> _Outbox:
        ob = self._outboxes.get(gateway_id)
        if ob is None:
            ob = self._outboxes[gateway_id] = _Outbox(gateway_id, transport)
            self._start_flusher(ob)
        return ob

    def _start_flusher(self, ob: _Outbox) -> None:
        ob.task = self._flushers.spawn(self._flush_loop(ob), f"flush-{ob.gateway_id}")
        ob.task.add_done_callback(functools.partial(self._flusher_done, ob))

    def _flusher_done(self, ob: _Outbox, task: asyncio.Task[None]) -> None:
        # A flusher only ends by cancellation; if it ended otherwise (its task set
        # logged why), delivery to its gateway would stop for good: count and restart.
        if task.cancelled() or self._closing or self._outboxes.get(ob.gateway_id) is not ob:
            return
        self.counters["flusher_restarts"] += 1
        log.error("shard %s: flusher of %s ended; restarting it", self.id, ob.gateway_id)
        self._resync_gateway(ob)
        self._start_flusher(ob)

    def _resync_gateway(self, ob: _Outbox) -> None:
        """Frames for `ob`'s gateway may be lost: each of its subscriptions gets its window."""
        ob.frames.clear()
        ob.resync.update(s for s, x in self.served.items() if x.reg.gateway_id == ob.gateway_id)
        ob.ready.set()

    async def _flush_loop(self, ob: _Outbox) -> None:
        delay_s = self.opts.flush_interval_ms / 1000
        while True:
            checkpoint()
            await ob.ready.wait()
            ob.ready.clear()
            if delay_s and len(ob.frames) < self.opts.max_batch_frames:
                await asyncio.sleep(delay_s)  # let more frames join this batch
            try:
                await self._flush(ob)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.counters["flush_errors"] += 1
                log.exception("shard %s: flushing to %s failed", self.id, ob.gateway_id)
                self._resync_gateway(ob)
                await asyncio.sleep(FLUSH_RETRY_S)

    async def _flush(self, ob: _Outbox) -> None:
        """Send what `ob` holds, a batch at a time, until it is empty."""
        bus = self.deps.delta[ob.transport]
        while ob.frames or ob.resync:
            # Windows that replace a dropped backlog go out whatever their
            # size (they are the bound), a batch at a time like any frames.
            resync, ob.resync = ob.resync, set()
            for sid in sorted(resync):
                served = self.served.get(sid)
                if served is not None and served.sub is not None:
                    self._append(served, served.sub.current_frames())
            n = self.opts.max_batch_frames
            batch, ob.frames[:n] = ob.frames[:n], []
            try:
                await bus.send(ob.gateway_id, batch)
                ob.sent_batches += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                # Frames are lost: every subscription in the batch resyncs.
                self.counters["send_errors"] += 1
                log.exception("shard %s: delta send to %s failed", self.id, ob.gateway_id)
                ob.resync.update(f[0] for f in batch)
                await asyncio.sleep(FLUSH_RETRY_S)

    # -- control -----------------------------------------------------------------

    async def _serve_controls(self) -> None:
        bus = self.deps.control
        slots = asyncio.Semaphore(CONTROL_CONCURRENCY)
        last: dict[str, asyncio.Task[None]] = {}  # per subscription: its latest control
        running = TaskSet(f"shard {self.id}: controls")

        def done(task: asyncio.Task[None], sub_id: str) -> None:
            slots.release()
            if last.get(sub_id) is task:
                del last[sub_id]

        try:
            async for msg_id, control in bus.controls(self.id):
                await slots.acquire()
                before = last.get(control.sub_id)
                task = running.spawn(self._one_control(msg_id, control, before), "control")
                last[control.sub_id] = task
                task.add_done_callback(functools.partial(done, sub_id=control.sub_id))
        finally:
            await running.aclose()

    async def _one_control(
        self, msg_id: str, control: Control, before: asyncio.Task[None] | None
    ) -> None:
        if before is not None:
            await asyncio.wait([before])  # controls of one subscription apply in order
        try:
            # Outside the lock: a claim needs the read lock, which a waiting
            # writer (the sweep) would deny it while this control held it.
            await self._claimed(control.partition)
            async with self._lock.read():
                await self.handle(control)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.counters["control_errors"] += 1
            log.exception("shard %s: control %s failed", self.id, control)
        await self.deps.control.ack(self.id, msg_id)

    async def handle(self, c: Control) -> None:
        """Apply one control (the caller holds the shard lock for reading).

        A subscription keeps the tenant and gateway it is served for: a
        control or registration that disagrees is a conflict (logged,
        counted, not applied). The one legitimate change of gateway is a
        takeover: a `subscribe` from the gateway the registry now names.
        """
        self.counters["controls"] += 1
        served = self.served.get(c.sub_id)
        if c.op == OP_UNSUBSCRIBE:
            if served is None or served.reg.gateway_id == c.gateway_id:
                await self._unserve(c.sub_id)
            return
        reg = await self.deps.registry.get(c.sub_id)
        if reg is None:  # closed before we got here
            await self._unserve(c.sub_id)
            return
        if (c.tenant and c.tenant != reg.tenant) or (
            served is not None and served.reg.tenant != reg.tenant
        ):
            self._conflict(c, reg, "tenant")
            return
        if served is not None and served.reg.gateway_id != reg.gateway_id:
            if c.op != OP_SUBSCRIBE or c.gateway_id != reg.gateway_id:
                self._conflict(c, reg, "gateway")
                return
            self.counters["handovers"] += 1  # a resume moved it: `_serve` serves it afresh there
        elif c.gateway_id != reg.gateway_id:
            return  # from a gateway that no longer holds it (taken over): nothing to do
        if reg.partition not in self.owned:
            # Routed on a different view of the live set: hand it to the owner
            # this shard sees (once; the gateway also re-routes on silence, and
            # the registry lets the real owner rebuild it).
            target = owner(reg.partition, self._live)
            if target and target != self.id and c.hops < MAX_FORWARDS:
                self.counters["forwarded_controls"] += 1
                forwarded = c.model_copy(update={"hops": c.hops + 1})
                await self.deps.control.send_control(target, forwarded)
            else:
                self.counters["dropped_controls"] += 1
            return
        if c.op in (OP_SUBSCRIBE, OP_REANCHOR, OP_RESYNC):
            await self._serve(reg)  # (a reanchor already applied resends the window)

    def _conflict(self, c: Control, reg: Registration, what: str) -> None:
        self.counters["conflicts"] += 1
        log.warning(
            "shard %s: %s conflict on %s: control %s from gateway %s (tenant %r), registry "
            "names gateway %s (tenant %r); not applied",
            self.id, what, c.sub_id, c.op, c.gateway_id, c.tenant, reg.gateway_id, reg.tenant,
        )  # fmt: skip

    async def _sweep(self) -> None:
        """Remove subscriptions whose gateway has been gone for two sweeps in a row."""
        live = set(await self.deps.members.live_gateways())
        gws = {s.reg.gateway_id for s in self.served.values()}
        gone = {g for g in gws if g not in live}
        confirmed = gone & self._missing_gateways
        self._missing_gateways = gone - confirmed
        if not confirmed:
            return
        self.counters["gateway_sweeps"] += 1
        async with self._lock.write():
            for sid, s in list(self.served.items()):
                if s.reg.gateway_id in confirmed:
                    await self.deps.registry.delete(sid, s.reg.gateway_id)
                    await self._unserve(sid)
            for g in confirmed:
                ob = self._outboxes.pop(g, None)
                if ob is not None:
                    await cancel_and_wait([ob.task])
                    with logged(f"shard {self.id}: dropping the delta channel of {g}"):
                        await self.deps.delta[ob.transport].drop(g)

    # -- status ------------------------------------------------------------------

    def status(self) -> ShardStatus:
        """What an operator sees: partitions, subscriptions, views, counters."""
        st = self.engine.stats
        return {
            "shard": self.id,
            "partitions": sorted(self.owned),
            "epochs": {p: self.epochs[p] for p in sorted(self.epochs)},
            "subscriptions": len(self.served),
            "views": self.engine.view_count(),
            "changes": st.changes,
            "frames": st.frames,
            "resets": dict(st.resets),
            "lag_ms": st.lag_ms,
            "pending_frames": sum(len(o.frames) for o in self._outboxes.values()),
            "batches_sent": sum(o.sent_batches for o in self._outboxes.values()),
            "uptime_s": round(time.monotonic() - self._started, 1),
            **self.counters,
        }
