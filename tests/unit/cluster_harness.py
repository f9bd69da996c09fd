"""An in-memory cluster for the unit tier: shards, gateways and fault injection.

Everything runs on the in-memory Protocol implementations of
`raycluster.cluster.memory`: no Ray, no Redis. Faults are injected by thin
wrappers around the real fakes (a membership view that can lose heartbeats or
fail reads, a delta bus that can drop a batch), never by patching the runtimes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from support import wait_for
from support.oracle import apply_maintained, o_top

from raycluster.client import Subscription
from raycluster.cluster import (
    Control,
    Gateway,
    GatewayDelta,
    GatewayDeps,
    GatewayOptions,
    Shard,
    ShardDeps,
    ShardOptions,
    WireFrame,
)
from raycluster.cluster.memory import (
    MemoryControlBus,
    MemoryDeltaBus,
    MemoryFencing,
    MemoryMembership,
    MemoryPartitionFeed,
    MemoryRegistry,
    partitioned_store,
)
from raycluster.cluster.shard import owned_partitions
from raycluster.livequery import (
    Cursor,
    DeltaOp,
    EntitySpec,
    LiveQuery,
    MemoryStore,
    QueryLimits,
    Snapshot,
)

__all__ = (
    "FAST_GATEWAY",
    "FAST_SHARD",
    "TTL_S",
    "Cluster",
    "DroppingDeltaBus",
    "MembershipView",
    "RecordingControlBus",
    "SlowStore",
    "StrictClient",
    "in_sync",
    "truth",
)

TTL_S = 0.5  # membership TTL of every test cluster
FAST_SHARD = ShardOptions(
    heartbeat_interval_s=0.1, ownership_interval_s=0.05, gateway_check_interval_s=0.2
)
FAST_GATEWAY = GatewayOptions(
    heartbeat_interval_s=0.1, attempt_timeout_s=0.5, request_deadline_s=10.0, audit_interval_s=0.3
)


def truth(store: MemoryStore, sub: Subscription) -> list[tuple[str, dict[str, Any]]]:
    """The brute-force window `sub` must hold: (id, row) pairs of its current query."""
    return o_top(store.rows(sub.tenant, sub.query.entity), sub.query)


def in_sync(store: MemoryStore, sub: Subscription) -> bool:
    """Whether the client's list (ids and payloads) equals the truth, with no window pending."""
    want = truth(store, sub)
    return (
        sub.rows.complete
        and sub.rows.ids == [i for i, _ in want]
        and sub.rows.rows == [r for _, r in want]
    )


class MembershipView:
    """One node's view of a shared membership, with faults.

    `drop_heartbeats`: this node's heartbeats silently fail to arrive (it
    expires after the TTL). `fail_reads`: every call raises `ConnectionError`
    (the node cannot reach membership at all, so it keeps its last decisions).
    `phantoms` (id -> until, on the membership clock) are shards this node
    alone believes live; `hidden` ones it alone believes gone (its read of the
    live set raced a heartbeat). `reads` counts `live_shards` calls: for a
    shard, one per reconcile. Gateway heartbeats go to `gateways` (default:
    the same membership).
    """

    def __init__(self, inner: MemoryMembership, gateways: MemoryMembership | None = None) -> None:
        self.inner = inner
        self.gateways = gateways or inner
        self.drop_heartbeats = False
        self.fail_reads = False
        self.phantoms: dict[str, float] = {}
        self.hidden: set[str] = set()
        self.reads = 0

    def _check(self) -> None:
        if self.fail_reads:
            raise ConnectionError("membership unreachable (injected)")

    async def heartbeat(self, shard_id: str) -> None:
        self._check()
        if not self.drop_heartbeats:
            await self.inner.heartbeat(shard_id)

    async def live_shards(self) -> list[str]:
        self._check()
        self.reads += 1
        live = await self.inner.live_shards()
        now = self.inner.clock()
        phantoms = {s for s, until in self.phantoms.items() if until > now}
        return sorted({*live, *phantoms} - self.hidden)

    async def leave(self, shard_id: str) -> None:
        await self.inner.leave(shard_id)

    async def heartbeat_gateway(self, gateway_id: str) -> None:
        self._check()
        if not self.drop_heartbeats:
            await self.gateways.heartbeat_gateway(gateway_id)

    async def live_gateways(self) -> list[str]:
        self._check()
        return await self.gateways.live_gateways()

    async def leave_gateway(self, gateway_id: str) -> None:
        await self.gateways.leave_gateway(gateway_id)


class DroppingDeltaBus:
    """A `DeltaBus` that can lose batches: `drop(pred)` discards the next batch matching it."""

    def __init__(self, inner: MemoryDeltaBus) -> None:
        self.inner = inner
        self._drop: Callable[[list[WireFrame]], bool] | None = None
        self.dropped: list[list[WireFrame]] = []

    def drop_next(self, pred: Callable[[list[WireFrame]], bool]) -> None:
        """Lose the next batch for which `pred` is true (once)."""
        self._drop = pred

    async def send(self, gateway_id: str, frames: list[WireFrame]) -> None:
        pred = self._drop
        if pred is not None and pred(frames):
            self._drop = None
            self.dropped.append(frames)
            return
        await self.inner.send(gateway_id, frames)

    def deltas(self, gateway_id: str) -> AsyncIterator[list[WireFrame]]:
        return self.inner.deltas(gateway_id)


class RecordingControlBus:
    """A `ControlBus` that remembers every control sent (shard id, control)."""

    def __init__(self, inner: MemoryControlBus) -> None:
        self.inner = inner
        self.sent: list[tuple[str, Control]] = []

    async def send_control(self, shard_id: str, control: Control) -> None:
        self.sent.append((shard_id, control))
        await self.inner.send_control(shard_id, control)

    def controls(self, shard_id: str) -> AsyncIterator[tuple[str, Control]]:
        return self.inner.controls(shard_id)

    async def ack(self, shard_id: str, msg_id: str) -> None:
        await self.inner.ack(shard_id, msg_id)

    def unacked(self, shard_id: str) -> int:
        return self.inner.unacked(shard_id)

    def ops(self, sub_id: str) -> list[str]:
        """The ops sent about one subscription, in order."""
        return [c.op for _, c in self.sent if c.sub_id == sub_id]


class StrictClient:
    """A second client that checks every frame a subscription delivered.

    Frames must fit (`support.oracle`'s maintained client), a `reset` must be followed
    by exactly its `count` enters in order, and epochs never go back.
    """

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.pending = 0
        self.epoch = 0
        self.frames = 0
        self.resets: list[int] = []  # epoch of every reset seen

    def feed(self, frames: Iterable[GatewayDelta]) -> None:
        for f in frames:
            self.frames += 1
            assert f.epoch >= self.epoch, f"epoch went back: {f.epoch} after {self.epoch}"
            self.epoch = f.epoch
            d = f.delta
            if self.pending:
                assert d.op is DeltaOp.ENTER and d.new_index == len(self.items), d
                self.pending -= 1
            if d.op is DeltaOp.RESET:
                self.items.clear()
                self.pending = d.count or 0
                self.resets.append(f.epoch)
            else:
                apply_maintained(self.items, [d])

    def drain(self, sub: Subscription) -> list[GatewayDelta]:
        """Check every frame `sub` has queued; return them."""
        frames = sub.drain()
        self.feed(frames)
        return frames


class SlowStore:
    """A shard's view of the row store whose reads take `delay_s` (a store under load)."""

    def __init__(self, inner: MemoryStore, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s

    async def snapshot(self, tenant: str, query: LiveQuery, limit: int) -> Snapshot:
        await asyncio.sleep(self.delay_s)
        return await self.inner.snapshot(tenant, query, limit)

    async def refill(
        self, tenant: str, query: LiveQuery, after: Cursor | None, limit: int
    ) -> Snapshot:
        await asyncio.sleep(self.delay_s)
        return await self.inner.refill(tenant, query, after, limit)


class Cluster:
    """Shards and gateways over one set of in-memory buses; `aclose()` stops them all.

    `gateway_ttl_s`, when given, is the gateways' heartbeat TTL (default: the
    shards' TTL, on the same membership). `read_delay_s` slows every store
    read of the shards started afterwards.
    """

    def __init__(
        self,
        *,
        ttl_s: float = TTL_S,
        shard_options: ShardOptions = FAST_SHARD,
        gateway_options: GatewayOptions = FAST_GATEWAY,
        entities: Iterable[EntitySpec] = (),
        gateway_ttl_s: float | None = None,
    ) -> None:
        self.entities = list(entities)
        self.store = partitioned_store(self.entities)
        self.members = MemoryMembership(ttl_s=ttl_s)
        self.gateway_members = (
            self.members if gateway_ttl_s is None else MemoryMembership(ttl_s=gateway_ttl_s)
        )
        self.control = RecordingControlBus(MemoryControlBus())
        self.delta = DroppingDeltaBus(MemoryDeltaBus())
        self.registry = MemoryRegistry()
        self.fencing = MemoryFencing()
        self.shard_options = shard_options
        self.gateway_options = gateway_options
        self.shards: dict[str, Shard] = {}
        self.views: dict[str, MembershipView] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.gateways: list[Gateway] = []
        self.read_delay_s = 0.0

    # -- shards --------------------------------------------------------------------

    def start_shard(self, shard_id: str) -> Shard:
        """Start (or restart, with a fresh runtime) the shard `shard_id`."""
        old = self.tasks.get(shard_id)
        assert old is None or old.done(), f"{shard_id} is still running"
        view = self.views[shard_id] = MembershipView(self.members, self.gateway_members)
        deps = ShardDeps(
            store=SlowStore(self.store, self.read_delay_s) if self.read_delay_s else self.store,
            feed=MemoryPartitionFeed(self.store),
            registry=self.registry,
            members=view,
            control=self.control,
            fencing=self.fencing,
            delta={"memory": self.delta},
            entities=self.entities,
        )
        shard = self.shards[shard_id] = Shard(shard_id, deps, self.shard_options)
        self.tasks[shard_id] = asyncio.create_task(shard.run(), name=f"shard-{shard_id}")
        return shard

    async def kill(self, shard_id: str) -> None:
        """Crash a shard: its task is cancelled, it never leaves (its heartbeat expires)."""
        task = self.tasks[shard_id]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def running(self) -> list[str]:
        """Ids of the shards whose task is alive."""
        return sorted(s for s, t in self.tasks.items() if not t.done())

    async def reconciles(self, rounds: int = 2, timeout_s: float = 5.0) -> None:
        """Wait until every running shard has reconciled `rounds` more times."""
        targets = {s: self.views[s].reads + rounds for s in self.running()}
        await wait_for(
            lambda: all(self.views[s].reads >= n for s, n in targets.items()),
            timeout_s,
            what=f"{rounds} reconciles of {sorted(targets)}",
        )

    async def settled(self, timeout_s: float = 15.0) -> None:
        """Wait until ownership is stable: every live owner serves exactly its partitions."""

        async def stable() -> bool:
            live = await self.members.live_shards()
            if live != self.running():
                return False
            return all(self.shards[s].owned == owned_partitions(s, live) for s in live)

        await wait_for(stable, timeout_s, what="stable ownership")

    # -- gateways ------------------------------------------------------------------

    async def gateway(
        self,
        gateway_id: str | None = None,
        *,
        options: GatewayOptions | None = None,
        entities: Iterable[EntitySpec] | None = None,
        limits: QueryLimits | None = None,
    ) -> tuple[Gateway, MembershipView]:
        """A started gateway (closed by `aclose`) and its membership view."""
        view = MembershipView(self.members, self.gateway_members)
        deps = GatewayDeps(
            registry=self.registry,
            members=view,
            control=self.control,
            delta=self.delta,
            transport="memory",
            entities=self.entities if entities is None else list(entities),
            limits=limits or QueryLimits(),
        )
        gw = Gateway(gateway_id, deps, options or self.gateway_options)
        await gw.start()
        self.gateways.append(gw)
        return gw, view

    # -- teardown ------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close every gateway, then stop every shard task."""
        for gw in self.gateways:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(gw.aclose(), 5)
        tasks = list(self.tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 5)
