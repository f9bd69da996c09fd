"""Helpers of the Ray tier: fast tier settings, running tiers, brute-force truth.

The truth is computed from scratch from what the test wrote, by the oracle of
`support.oracle` (written from docs/semantics.md), never with the engine's own
filter or order code.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import ray
from support import fast_tier, unique, wait_for
from support.oracle import o_top

from raycluster import Cursor, DeltaOp, EntitySpec, LiveQuery, Subscription
from raycluster.actors import Tier, controller_name, shard_name
from raycluster.client.fence import Fence
from raycluster.client.livelist import LiveList
from raycluster.cluster import PARTITIONS, GatewayDelta, owned_by, owner, partition_of
from raycluster.config import TierSettings
from raycluster.redis import RedisRegistry, Writer

ENTITY = "asset"
ASSET = EntitySpec(
    name=ENTITY,
    columns={"name": "str", "kind": "str", "site": "str", "temp": "int"},
    max_window=200,
)

GATEWAY_CHECK_INTERVAL_S = 0.5  # fast, as `support.fast_tier`'s cadences


# -- settings and tiers ------------------------------------------------------------


def tier_settings(name: str, namespace: str, **overrides: Any) -> TierSettings:
    """Fast settings for a test tier: its own name and key prefix, short TTLs; a section
    given in `overrides` as a dict is merged into the default one key by key."""
    base: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "shards": 3,
        "shard_num_cpus": 0.5,
        "gateway_num_cpus": 0,
        "redis": {"key_prefix": f"lqt-{name}"},
        "shard": {"gateway_check_interval_s": GATEWAY_CHECK_INTERVAL_S},
        "entities": [ASSET.model_dump()],
    }
    return TierSettings.load(**fast_tier(base, overrides))


def actor_exists(name: str, namespace: str) -> bool:
    """Whether Ray knows a (named, live or restarting) actor `name` in `namespace`."""
    try:
        ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    return True


def _force_stop(name: str, namespace: str) -> None:
    # A start that failed half-way leaves a detached controller (and maybe actors) behind.
    try:
        controller = ray.get_actor(controller_name(name), namespace=namespace)
    except ValueError:
        return
    with contextlib.suppress(Exception):
        ray.get(controller.stop.remote(), timeout=60)
    with contextlib.suppress(Exception):
        ray.kill(controller)


@asynccontextmanager
async def running_tier(settings: TierSettings, redis_url: str) -> AsyncIterator[Tier]:
    """A started, converged tier, always stopped on exit (blocking Ray calls run off the loop)."""
    try:
        tier = await asyncio.to_thread(Tier.start, settings, redis_url=redis_url)
    except BaseException:
        await asyncio.to_thread(_force_stop, settings.name, settings.namespace)
        raise
    try:
        # `Tier.start` returns once shards heartbeat; ownership settles a moment later.
        await wait_converged(tier, settings.shards)
        yield tier
    finally:
        try:
            await asyncio.wait_for(tier.aclose(), 90)
        except BaseException:
            await asyncio.to_thread(_force_stop, settings.name, settings.namespace)
            raise


async def status(tier: Tier) -> dict[str, Any]:
    """`tier.status()` without blocking the event loop (gateways heartbeat on it)."""
    return await asyncio.to_thread(tier.status)


def shard_handle(tier: Tier, shard_id: str) -> Any:
    """The actor handle of one shard of `tier`."""
    return ray.get_actor(shard_name(tier.name, shard_id), namespace=tier.namespace)


def shard_ids(n: int) -> list[str]:
    """The ids the controller gives the first `n` shards."""
    return [f"shard-{i}" for i in range(n)]


def converged(st: Mapping[str, Any], expected_live: list[str]) -> bool:
    """Exactly `expected_live` are live, and each owns exactly its HRW partitions."""
    if st["live_shards"] != expected_live or sorted(st["shards"]) != expected_live:
        return False
    for sid, s in st["shards"].items():
        if "error" in s or set(s["partitions"]) != owned_by(sid, expected_live):
            return False
    return True


async def wait_converged(tier: Tier, n: int, timeout_s: float = 60.0) -> dict[str, Any]:
    """Wait until the tier runs shards 0..n-1, each owning its HRW partitions; the status."""
    want = shard_ids(n)
    last: dict[str, Any] = {}

    async def ok() -> bool:
        nonlocal last
        last = await status(tier)
        return converged(last, want)

    await wait_for(ok, timeout_s, interval_s=0.25, what=lambda: f"tier converged on {want}: {last}")
    return last


def owner_of(tenant: str, live: Iterable[str]) -> str:
    """The shard that owns `tenant`'s assets among `live`."""
    return owner(partition_of(tenant, ENTITY), list(live))


def tenants_on(shard: str, live: list[str], n: int, label: str) -> list[str]:
    """`n` fresh tenants whose asset partition `shard` owns among `live`."""
    out: list[str] = []
    while len(out) < n:
        t = unique(label)
        if owner_of(t, live) == shard:
            out.append(t)
    return out


# -- brute-force truth -------------------------------------------------------------


def top_n(rows: Mapping[str, Mapping[str, Any]], query: LiveQuery) -> list[str]:
    """The ids the window must hold: filter, total order, strictly after the cursor, limit."""
    return [i for i, _ in o_top({i: (0, dict(r)) for i, r in rows.items()}, query)]


def cursor_at(row: Mapping[str, Any], agg_id: str, query: LiveQuery) -> Cursor:
    """The keyset cursor of a row under `query`'s order."""
    return Cursor(values=[row.get(k.column) for k in query.sort] + [agg_id])


class Shadow:
    """A writer that also keeps what it wrote: `rows[tenant][id]` is the truth."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.rows: dict[str, dict[str, dict[str, Any]]] = {}

    def of(self, tenant: str) -> dict[str, dict[str, Any]]:
        """The truth of one tenant's assets."""
        return self.rows.setdefault(tenant, {})

    async def upsert(self, tenant: str, agg_id: str, row: dict[str, Any]) -> None:
        await self.writer.upsert(tenant, ENTITY, agg_id, row)
        self.of(tenant)[agg_id] = dict(row)

    async def upsert_many(self, tenant: str, rows: Mapping[str, dict[str, Any]]) -> None:
        await self.writer.upsert_many(tenant, ENTITY, rows)
        self.of(tenant).update({k: dict(v) for k, v in rows.items()})

    async def delete(self, tenant: str, agg_id: str) -> None:
        await self.writer.delete(tenant, ENTITY, agg_id)
        self.of(tenant).pop(agg_id, None)

    def truth(self, tenant: str, query: LiveQuery) -> list[str]:
        return top_n(self.of(tenant), query)


@asynccontextmanager
async def shadow_writer(tier: Tier) -> AsyncIterator[Shadow]:
    """A `Shadow` over the tier's writer (closed on exit)."""
    writer = tier.writer()
    try:
        yield Shadow(writer)
    finally:
        await writer.aclose()


async def wait_exact(
    subs: Iterable[tuple[Subscription, str, LiveQuery]], shadow: Shadow, timeout_s: float = 20.0
) -> float:
    """Wait until every (sub, tenant, expected query) list equals the brute-force truth."""
    items = list(subs)

    def wrong() -> list[str]:
        return [
            f"{s.id[:8]} {t}: has {s.rows.ids}, truth {shadow.truth(t, q)}"
            for s, t, q in items
            if not s.rows.complete or s.rows.ids != shadow.truth(t, q)
        ]

    return await wait_for(
        lambda: not wrong(), timeout_s, what=lambda: "exact windows: " + "; ".join(wrong()[:5])
    )


async def close_all(subs: Iterable[Subscription]) -> None:
    """Close subscriptions, never failing a teardown."""
    for s in subs:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(s.close(), 10)


# -- workloads ---------------------------------------------------------------------

KINDS = ("pump", "valve", "fan")
SITES = ("north", "south", "east")


def random_row(rnd: random.Random) -> dict[str, Any]:
    """An asset with nulls now and then (null order is part of the contract)."""
    return {
        "name": f"n{rnd.randrange(1000):03}",
        "kind": rnd.choice(KINDS),
        "site": None if rnd.random() < 0.15 else rnd.choice(SITES),
        "temp": None if rnd.random() < 0.15 else rnd.randrange(100),
    }


def check_snapshot(frames: list[GatewayDelta], want: list[str]) -> None:
    """`frames` open with a reset announcing exactly the enters that follow: `want`, in order."""
    assert frames, "no frames"
    first = frames[0]
    assert first.delta.op is DeltaOp.RESET, [f.delta.op for f in frames]
    count = first.delta.count
    window = frames[1 : 1 + (count or 0)]
    assert count == len(want), (count, want)
    assert [f.delta.op for f in window] == [DeltaOp.ENTER] * len(want)
    assert [f.delta.agg_id for f in window] == want
    assert [f.delta.new_index for f in window] == list(range(len(want)))
    assert {f.epoch for f in frames[: 1 + len(want)]} == {first.epoch}
    seqs = [f.seq for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


# -- what a client sees ------------------------------------------------------------


class StreamCheck:
    """A client that only reads a subscription's frames, fenced, into a list of its own.

    `take` drains the frames queued so far: each must be in order (never a
    stale frame, never a gap in `seq`), and the list they build must equal
    the subscription's `rows`. Frames of a moved subscription carry its new
    id but continue its numbering, so a move passes only if it is seamless.
    """

    def __init__(self) -> None:
        self.fence = Fence()
        self.rows = LiveList()
        self.frames = 0
        self.resets = 0

    def take(self, sub: Subscription) -> None:
        for f in sub.drain():
            is_reset = f.delta.op is DeltaOp.RESET
            verdict = self.fence.check(f.seq, f.epoch, is_reset)
            assert verdict == "ok", (sub.id, verdict, f.seq, f.epoch, self.fence.next_seq)
            self.rows.apply(f.delta)
            self.frames += 1
            self.resets += is_reset
        assert self.rows.ids == sub.rows.ids, (self.rows.ids, sub.rows.ids)


async def registered_ids(registry: RedisRegistry, gateway_ids: Iterable[str]) -> set[str] | None:
    """The sub ids registered by `gateway_ids`; None if other registrations exist in the tier."""
    ids: set[str] = set()
    for g in gateway_ids:
        ids |= await registry.ids_by_gateway(g)
    total = sum([await registry.by_partition_num(p) for p in range(PARTITIONS)])
    return ids if total == len(ids) else None


async def served_total(tier: Tier) -> int:
    """How many subscriptions the shards serve, all together."""
    return int((await status(tier))["subscriptions"])


async def wait_nothing_leaked(
    tier: Tier,
    registry: RedisRegistry,
    gateway_ids: Iterable[str],
    live_ids: set[str],
    timeout_s: float = 30.0,
) -> None:
    """Wait until exactly `live_ids` are registered (by `gateway_ids`, nothing else) and served."""
    gws = list(gateway_ids)
    seen: dict[str, Any] = {}

    async def exact() -> bool:
        seen["registered"] = await registered_ids(registry, gws)
        seen["served"] = await served_total(tier)
        return seen["registered"] == live_ids and seen["served"] == len(live_ids)

    await wait_for(exact, timeout_s, interval_s=0.25,
                   what=lambda: f"registered/served == {len(live_ids)} live: {seen}")  # fmt: skip
