"""Shard and Gateway runtimes in memory: snapshot, failover, fencing, liveness.

What is expected: docs/architecture.md (data path; control, ownership and failover).

Every test runs a small cluster on the in-memory buses (`cluster_harness`),
injects one fault, waits on conditions (never fixed sleeps) and checks each
client's list against a brute-force top-N of the store.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from cluster_harness import FAST_SHARD, TTL_S, Cluster, StrictClient, in_sync, truth, wait_for

from raycluster.client import Subscription
from raycluster.cluster import GatewayOptions, owner, partition_of
from raycluster.errors import InvalidQuery
from raycluster.livequery import (
    Cursor,
    DeltaOp,
    EntitySpec,
    LiveQuery,
    SortKey,
    eq,
    gt,
    is_null,
)

pytestmark = pytest.mark.timeout(60)

SHARDS = ("shard-a", "shard-b", "shard-c")
PUMPS_BY_TEMP = LiveQuery(
    entity="asset",
    where=[eq("kind", "pump")],
    sort=[SortKey(column="temp", desc=True)],  # nulls first
    limit=5,
)
BY_NAME = LiveQuery(entity="asset", sort=[SortKey(column="name")], limit=10)
# Failover bound: the dead owner's heartbeat expires, the next reconcile claims.
FAILOVER_S = TTL_S + FAST_SHARD.ownership_interval_s + 1.5
# Tests that need no heartbeat to expire use this TTL, so that a loaded machine
# (a stalled event loop) cannot add spurious failovers to what they count.
STEADY_TTL_S = 5.0


@pytest.fixture
async def make_cluster() -> AsyncIterator[Callable[..., Cluster]]:
    """Build clusters (`Cluster(**kw)`); every one is closed after the test."""
    made: list[Cluster] = []

    def make(**kw: Any) -> Cluster:
        made.append(Cluster(**kw))
        return made[-1]

    yield make
    for c in made:
        await c.aclose()


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    """A cluster whose heartbeats do not expire during the test."""
    return make_cluster(ttl_s=STEADY_TTL_S)


@pytest.fixture
def fragile(make_cluster: Callable[..., Cluster]) -> Cluster:
    """A cluster whose shards expire after `TTL_S` without heartbeats."""
    return make_cluster()


def tenant_owned_by(shard: str, live: list[str], entity: str = "asset", prefix: str = "t") -> str:
    """A tenant whose (tenant, entity) partition `shard` owns among `live`."""
    for i in range(10_000):
        tenant = f"{prefix}{i}"
        if owner(partition_of(tenant, entity), live) == shard:
            return tenant
    raise AssertionError(f"no tenant owned by {shard}")


def seed(c: Cluster, tenant: str, n: int = 30, rng: random.Random | None = None) -> None:
    """`n` assets: pumps and fans, some without a temperature."""
    rng = rng or random.Random(n)
    for i in range(n):
        c.store.upsert(tenant, "asset", f"a{i:03}", random_asset(rng, i))


def random_asset(rng: random.Random, i: int) -> dict[str, Any]:
    return {
        "name": f"n{rng.randrange(1000):03}",
        "kind": rng.choice(["pump", "fan"]),
        "temp": None if rng.random() < 0.15 else rng.randrange(100),
        "n": i,
    }


async def start(c: Cluster, shards: tuple[str, ...] = SHARDS) -> None:
    for s in shards:
        c.start_shard(s)
    await c.settled()


async def next_frames(sub: Subscription, n: int, timeout_s: float = 5.0) -> list[Any]:
    async with asyncio.timeout(timeout_s):
        return [await anext(sub) for _ in range(n)]


def served_by(c: Cluster, sub_id: str) -> list[str]:
    """Which running shards serve `sub_id` right now."""
    return [s for s in c.running() if sub_id in c.shards[s].served]


# -- 1. snapshot, then live frames ---------------------------------------------------


async def test_subscribe_gives_reset_and_window_then_live_frames(cluster: Cluster) -> None:
    await start(cluster)
    gw, _ = await cluster.gateway()
    seed(cluster, "acme")
    sub = await gw.subscribe("acme", PUMPS_BY_TEMP)

    (first,) = await next_frames(sub, 1)
    assert first.delta.op is DeltaOp.RESET
    assert first.epoch >= 1
    count = first.delta.count
    window = await next_frames(sub, count)
    assert [f.delta.op for f in window] == [DeltaOp.ENTER] * count
    assert [f.delta.new_index for f in window] == list(range(count))
    assert count == len(truth(cluster.store, sub)) == PUMPS_BY_TEMP.limit
    assert [f.seq for f in [first, *window]] == list(range(first.seq, first.seq + count + 1))
    assert in_sync(cluster.store, sub)

    # Live: a new hottest pump, a null-temp pump (sorts first, descending), an
    # update in place, a delete of a visible row, a row that stops matching.
    check = StrictClient()
    check.items = list(zip(sub.rows.ids, sub.rows.rows, strict=True))
    check.epoch = first.epoch
    visible = sub.rows.ids
    cluster.store.upsert("acme", "asset", "hot", {"name": "hot", "kind": "pump", "temp": 1000})
    cluster.store.upsert("acme", "asset", "nul", {"name": "nul", "kind": "pump", "temp": None})
    cluster.store.delete("acme", "asset", visible[-1])
    cluster.store.upsert("acme", "asset", visible[1], {"name": "x", "kind": "fan", "temp": 1})
    hot = cluster.store.get("acme", "asset", "hot")
    assert hot is not None
    cluster.store.upsert("acme", "asset", "hot", {**hot[1], "name": "renamed"})
    await wait_for(lambda: in_sync(cluster.store, sub), what="live frames applied")
    live = check.drain(sub)
    assert live, "no live frames"
    assert all(f.delta.op is not DeltaOp.RESET for f in live)
    assert {f.delta.op for f in live} <= {
        DeltaOp.ENTER,
        DeltaOp.LEAVE,
        DeltaOp.MOVE,
        DeltaOp.UPDATE,
    }
    assert all(f.epoch == first.epoch for f in live)
    assert check.items == [(i, r) for i, r in truth(cluster.store, sub)]
    assert gw.counters["gaps"] == gw.counters["stale"] == 0


# -- 2. owner killed -> new epoch -------------------------------------------------


async def test_killing_the_owner_fails_over_with_a_newer_epoch(fragile: Cluster) -> None:
    cluster = fragile
    await start(cluster)
    gw, _ = await cluster.gateway()
    seed(cluster, "acme")
    sub = await gw.subscribe("acme", PUMPS_BY_TEMP)
    check = StrictClient()
    check.drain(sub)
    old_owner = owner(partition_of("acme", "asset"), SHARDS)
    assert served_by(cluster, sub.id) == [old_owner]
    epoch0 = sub.epoch

    loop = asyncio.get_running_loop()
    await cluster.kill(old_owner)
    t0 = loop.time()
    await wait_for(lambda: sub.epoch > epoch0, FAILOVER_S, what="reset from the new owner")
    took = loop.time() - t0
    assert took <= FAILOVER_S
    await wait_for(lambda: in_sync(cluster.store, sub), what="window after failover")
    frames = check.drain(sub)
    newer = [f for f in frames if f.epoch > epoch0]
    assert newer[0].delta.op is DeltaOp.RESET
    assert check.resets[-1] > epoch0

    new_owner = owner(partition_of("acme", "asset"), [s for s in SHARDS if s != old_owner])
    assert served_by(cluster, sub.id) == [new_owner]
    rng = random.Random(2)
    for i in range(20):
        cluster.store.upsert("acme", "asset", f"a{rng.randrange(40):03}", random_asset(rng, i))
    await wait_for(lambda: in_sync(cluster.store, sub), what="live frames after failover")
    live = check.drain(sub)
    assert live and all(f.delta.op is not DeltaOp.RESET for f in live)
    assert all(f.epoch == sub.epoch for f in live)
    assert check.items == [(i, r) for i, r in truth(cluster.store, sub)]


# -- 3. reanchored window survives failover ---------------------------------------


async def test_reanchored_window_survives_failover(fragile: Cluster) -> None:
    cluster = fragile
    await start(cluster)
    gw, _ = await cluster.gateway()
    seed(cluster, "acme", n=40)
    sub = await gw.subscribe("acme", BY_NAME)
    anchor_id = sub.rows.ids[3]
    anchor = Cursor(values=[sub.rows.rows[3]["name"], anchor_id])
    await sub.reanchor(anchor, 4)
    assert sub.query.cursor == anchor and sub.query.limit == 4
    await wait_for(lambda: in_sync(cluster.store, sub), what="reanchored window")
    reg = await cluster.registry.get(sub.id)
    assert reg is not None and reg.query.cursor == anchor and reg.query.limit == 4

    epoch0 = sub.epoch
    await cluster.kill(owner(partition_of("acme", "asset"), SHARDS))
    await wait_for(lambda: sub.epoch > epoch0, FAILOVER_S, what="failover reset")
    await wait_for(lambda: in_sync(cluster.store, sub), what="rebuilt window")
    assert len(sub.rows) == 4
    assert anchor_id not in sub.rows.ids
    # The rebuilt view really uses the anchor: a row sorting before it stays out.
    cluster.store.upsert("acme", "asset", "first", {"name": "", "kind": "fan"})
    cluster.store.upsert("acme", "asset", "after", {"name": anchor.values[0], "kind": "fan"})
    await wait_for(lambda: in_sync(cluster.store, sub), what="live frames of the new window")
    assert "first" not in sub.rows.ids


# -- 4. adding a shard moves only what it wins --------------------------------------


async def test_adding_a_shard_moves_only_its_partitions(cluster: Cluster) -> None:
    before_live = ["shard-a", "shard-b"]
    after_live = [*before_live, "shard-c"]
    await start(cluster, tuple(before_live))
    gw, _ = await cluster.gateway()
    tenants = [f"t{i}" for i in range(40)]
    subs = []
    for t in tenants:
        seed(cluster, t, n=12)
        subs.append(await gw.subscribe(t, PUMPS_BY_TEMP))
    owned_before = {s: set(cluster.shards[s].owned) for s in before_live}
    moved = {p for p in range(256) if owner(p, after_live) != owner(p, before_live)}
    affected = [s for s in subs if partition_of(s.tenant, "asset") in moved]
    unaffected = [s for s in subs if partition_of(s.tenant, "asset") not in moved]
    assert affected and unaffected
    resets0 = {s.id: s.rows.resets for s in subs}
    epochs0 = {s.id: s.epoch for s in subs}

    cluster.start_shard("shard-c")
    await cluster.settled()
    await wait_for(
        lambda: all(s.epoch > epochs0[s.id] for s in affected), what="resets of moved subs"
    )
    await cluster.reconciles(3)
    for t in tenants:  # one more change everywhere, so every stream has flushed
        cluster.store.upsert(t, "asset", "probe", {"name": "p", "kind": "pump", "temp": 500})
    await wait_for(lambda: all(in_sync(cluster.store, s) for s in subs), what="all in sync")

    assert cluster.shards["shard-c"].owned == moved
    for s in before_live:
        assert cluster.shards[s].owned == owned_before[s] - moved
    for s in affected:
        assert s.rows.resets == resets0[s.id] + 1, s
        assert served_by(cluster, s.id) == ["shard-c"]
    for s in unaffected:
        assert s.rows.resets == resets0[s.id], s
        assert s.epoch == epochs0[s.id]
    assert gw.counters["gaps"] == 0


# -- 5. a paused shard is fenced off ------------------------------------------------


async def test_paused_shard_frames_are_fenced_off(fragile: Cluster) -> None:
    cluster = fragile
    live = ["shard-a", "shard-b"]
    await start(cluster, tuple(live))
    gw, _ = await cluster.gateway()
    tenant = tenant_owned_by("shard-a", live)
    p = partition_of(tenant, "asset")
    seed(cluster, tenant, n=30)
    sub = await gw.subscribe(tenant, PUMPS_BY_TEMP)
    check = StrictClient()
    check.drain(sub)
    epoch_a = sub.epoch
    paused = cluster.shards["shard-a"]

    # shard-a cannot reach membership: its heartbeats stop, its reconcile fails
    # (so it keeps believing it owns p), but its engine keeps serving p.
    cluster.views["shard-a"].fail_reads = True
    await wait_for(lambda: p in cluster.shards["shard-b"].owned, TTL_S + 2, what="b claims p")
    await wait_for(lambda: sub.epoch > epoch_a, what="reset from shard-b")
    epoch_b = sub.epoch
    assert p in paused.owned and sub.id in paused.served, "shard-a should still serve p"
    assert paused.epochs[p] == epoch_a < epoch_b

    stale0 = gw.counters["stale"]
    rng = random.Random(5)
    for i in range(30):
        cluster.store.upsert(tenant, "asset", f"a{rng.randrange(30):03}", random_asset(rng, i))
    await wait_for(lambda: gw.counters["stale"] > stale0, what="old-epoch frames dropped")
    await wait_for(lambda: in_sync(cluster.store, sub), what="rows follow shard-b")
    frames = check.drain(sub)
    assert all(f.epoch == epoch_b for f in frames if f.epoch > epoch_a)

    # Resume: shard-a rejoins, finds its epoch fenced, claims again; all converge.
    cluster.views["shard-a"].fail_reads = False
    await cluster.settled()
    await wait_for(lambda: sub.epoch > epoch_b, what="shard-a's new claim")
    assert paused.epochs[p] > epoch_b
    for i in range(30):
        cluster.store.upsert(tenant, "asset", f"a{rng.randrange(30):03}", random_asset(rng, i))
    await wait_for(lambda: in_sync(cluster.store, sub), what="converged after resume")
    check.drain(sub)
    assert check.items == [(i, r) for i, r in truth(cluster.store, sub)]
    assert served_by(cluster, sub.id) == ["shard-a"]


# -- 6. a dead gateway's subscriptions are removed -----------------------------------


async def test_dead_gateway_subscriptions_are_removed(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(ttl_s=STEADY_TTL_S, gateway_ttl_s=TTL_S)
    await start(cluster)
    dead, dead_view = await cluster.gateway("gw-dead")
    alive, _ = await cluster.gateway("gw-alive")
    tenants = [f"t{i}" for i in range(8)]
    for t in tenants:
        seed(cluster, t, n=10)
    dead_subs = [await dead.subscribe(t, PUMPS_BY_TEMP) for t in tenants]
    alive_subs = [await alive.subscribe(t, BY_NAME) for t in tenants]

    dead_view.drop_heartbeats = True  # the gateway is gone (its heartbeat stops)
    sweeps = 2 * FAST_SHARD.gateway_check_interval_s

    async def removed() -> bool:
        if await cluster.registry.by_gateway("gw-dead"):
            return False
        return not any(served_by(cluster, s.id) for s in dead_subs)

    await wait_for(removed, TTL_S + sweeps + 1.5, what="dead gateway's subscriptions removed")
    assert len(await cluster.registry.by_gateway("gw-alive")) == len(alive_subs)
    for t in tenants:
        cluster.store.upsert(t, "asset", "new", {"name": "", "kind": "pump", "temp": 1})
    await wait_for(lambda: all(in_sync(cluster.store, s) for s in alive_subs), what="alive ok")
    assert all(served_by(cluster, s.id) for s in alive_subs)


async def test_gateway_back_from_presumed_dead_still_serves_or_ends_its_subscriptions(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(ttl_s=STEADY_TTL_S, gateway_ttl_s=TTL_S)
    await start(cluster, ("shard-a", "shard-b"))
    gw, view = await cluster.gateway("gw-1")
    seed(cluster, "acme")
    sub = await gw.subscribe("acme", BY_NAME)
    view.drop_heartbeats = True  # e.g. a network blip or a long GC pause
    sweeps = 2 * FAST_SHARD.gateway_check_interval_s
    await wait_for(lambda: not served_by(cluster, sub.id), TTL_S + sweeps + 1.5, what="swept")
    view.drop_heartbeats = False
    await wait_for(cluster.gateway_members.live_gateways, what="gateway live again")
    assert not sub.closed and gw.subscriptions() == [sub]  # the gateway still holds it
    cluster.store.upsert("acme", "asset", "first", {"name": "", "kind": "fan"})
    # Either the subscription is served again, or its client is told it ended.
    await wait_for(lambda: sub.closed or in_sync(cluster.store, sub), 2, what="served or ended")


async def test_gateway_briefly_late_during_a_claim_keeps_its_subscriptions(
    make_cluster: Callable[..., Cluster],
) -> None:
    # Sweeps never confirm a dead gateway here: only the claim path can remove anything.
    slow_sweeps = FAST_SHARD.model_copy(update={"gateway_check_interval_s": 60.0})
    c = make_cluster(ttl_s=STEADY_TTL_S, gateway_ttl_s=TTL_S, shard_options=slow_sweeps)
    await start(c)
    gw, view = await c.gateway("gw-1")
    seed(c, "acme")
    sub = await gw.subscribe("acme", BY_NAME)
    p = partition_of("acme", "asset")

    async def gateway_live() -> bool:
        return "gw-1" in await c.gateway_members.live_gateways()

    view.drop_heartbeats = True  # its heartbeat is late (a GC pause, a slow call)
    await wait_for(_not(gateway_live), TTL_S + 1, what="gateway heartbeat lapsed")
    old = owner(p, SHARDS)
    await c.kill(old)
    await c.shards[old].stop()  # leaves at once: the new owner claims p right away
    new = owner(p, c.running())
    await wait_for(lambda: p in c.shards[new].owned, what="new owner claims p")
    view.drop_heartbeats = False  # the gateway was never gone: it beats again
    await wait_for(gateway_live, what="gateway live again")
    c.store.upsert("acme", "asset", "first", {"name": "", "kind": "fan"})
    await wait_for(lambda: in_sync(c.store, sub), 2, what="subscription still served")


async def test_a_slow_audit_never_delays_the_gateway_heartbeat(
    make_cluster: Callable[..., Cluster],
) -> None:
    """A gateway restoring thousands of swept subscriptions keeps heartbeating meanwhile:
    were the audit in the heartbeat loop, the gateway would look dead again, be swept
    again, and never recover (seen at 100,000 subscriptions on a starved machine)."""
    cluster = make_cluster(ttl_s=STEADY_TTL_S, gateway_ttl_s=TTL_S)
    await start(cluster)
    gw, _ = await cluster.gateway("gw-1")
    seed(cluster, "acme")
    await gw.subscribe("acme", BY_NAME)
    stuck, audits = asyncio.Event(), 0

    async def slow_audit() -> int:
        nonlocal audits
        audits += 1
        await stuck.wait()
        return 0

    gw.audit = slow_audit  # type: ignore[method-assign]
    await wait_for(lambda: audits >= 1, what="an audit under way")
    await asyncio.sleep(3 * TTL_S)  # three of the gateway's TTLs; the audit still runs
    assert "gw-1" in await cluster.gateway_members.live_gateways()
    stuck.set()


def _not(cond: Any) -> Any:
    async def negated() -> bool:
        return not await cond()

    return negated


# -- 7. controls with no shard up, and re-routing --------------------------------------


async def test_subscribe_with_no_shard_up_completes_when_one_starts(cluster: Cluster) -> None:
    gw, _ = await cluster.gateway()
    seed(cluster, "acme")
    pending = asyncio.create_task(gw.subscribe("acme", PUMPS_BY_TEMP))
    await wait_for(lambda: cluster.registry.by_gateway(gw.id), what="registration written first")
    assert not pending.done()
    cluster.start_shard("shard-a")
    sub = await asyncio.wait_for(pending, 5)
    assert in_sync(cluster.store, sub)
    assert served_by(cluster, sub.id) == ["shard-a"]


async def test_controls_queued_before_a_shard_starts_are_delivered(cluster: Cluster) -> None:
    await cluster.members.heartbeat("shard-x")  # known live, but not consuming yet
    gw, _ = await cluster.gateway()
    seed(cluster, "acme")
    pending = asyncio.create_task(gw.subscribe("acme", PUMPS_BY_TEMP))
    await wait_for(lambda: cluster.control.unacked("shard-x") >= 1, what="control queued")
    shard = cluster.start_shard("shard-x")
    sub = await asyncio.wait_for(pending, 5)
    await wait_for(lambda: cluster.control.unacked("shard-x") == 0, what="queued control acked")
    assert shard.counters["controls"] >= 1
    assert in_sync(cluster.store, sub)


async def test_subscribe_is_rerouted_when_the_owner_never_answers(cluster: Cluster) -> None:
    cluster.start_shard("shard-a")
    await cluster.settled()
    tenant = tenant_owned_by("ghost", ["ghost", "shard-a"])
    seed(cluster, tenant)
    options = GatewayOptions(heartbeat_interval_s=0.1, attempt_timeout_s=0.2)
    gw, view = await cluster.gateway(options=options)
    # Only the gateway sees "ghost" (a stale view of the live set), for a while:
    # shard-a already owns the partition, so only a re-route gets it served.
    view.phantoms["ghost"] = cluster.members.clock() + 0.6
    sub = await asyncio.wait_for(gw.subscribe(tenant, PUMPS_BY_TEMP), 5)
    assert gw.counters["reroutes"] > 0
    assert [s for s, c in cluster.control.sent if c.sub_id == sub.id] == ["ghost", "shard-a"]
    assert cluster.control.unacked("ghost") == 1
    assert in_sync(cluster.store, sub)
    assert served_by(cluster, sub.id) == ["shard-a"]


# -- 8. seq gap -> resync -------------------------------------------------------------


async def test_lost_batch_is_detected_and_resynced(cluster: Cluster) -> None:
    await start(cluster)
    gw, _ = await cluster.gateway()
    seed(cluster, "acme")
    sub = await gw.subscribe("acme", PUMPS_BY_TEMP)
    resets0 = sub.rows.resets
    cluster.delta.drop_next(lambda frames: any(f[0] == sub.id for f in frames))
    cluster.store.upsert("acme", "asset", "h1", {"name": "h1", "kind": "pump", "temp": 900})
    await wait_for(lambda: cluster.delta.dropped, what="a batch lost")
    assert "h1" not in sub.rows.ids
    cluster.store.upsert("acme", "asset", "h2", {"name": "h2", "kind": "pump", "temp": 901})
    await wait_for(lambda: gw.counters["gaps"] >= 1, what="gap detected")
    await wait_for(lambda: in_sync(cluster.store, sub), what="resynced")
    assert "resync" in cluster.control.ops(sub.id)
    assert sub.rows.resets > resets0
    assert {"h1", "h2"} <= set(sub.rows.ids)


async def test_injected_seq_gap_is_not_applied_and_resyncs(cluster: Cluster) -> None:
    await start(cluster)
    gw, _ = await cluster.gateway()
    seed(cluster, "acme")
    sub = await gw.subscribe("acme", PUMPS_BY_TEMP)
    last = sub.drain()[-1]
    bogus = {"op": "enter", "agg_id": "bogus", "version": 1, "row": {"kind": "pump"},
             "new_index": 0}  # fmt: skip
    resets0 = sub.rows.resets
    gw.receive([[sub.id, last.seq + 2, last.epoch, bogus]])
    assert gw.counters["gaps"] == 1
    assert "bogus" not in sub.rows.ids
    await wait_for(lambda: sub.rows.resets > resets0, what="reset after resync")
    assert "resync" in cluster.control.ops(sub.id)
    assert in_sync(cluster.store, sub)
    cluster.store.upsert("acme", "asset", "hot", {"name": "hot", "kind": "pump", "temp": 999})
    await wait_for(lambda: in_sync(cluster.store, sub), what="live after resync")


async def test_outbox_overflow_resyncs_every_subscription(
    make_cluster: Callable[..., Cluster],
) -> None:
    small = FAST_SHARD.model_copy(update={"max_pending_frames": 50})
    c = make_cluster(ttl_s=STEADY_TTL_S, shard_options=small)
    await start(c, ("shard-a",))
    gw, _ = await c.gateway()
    seed(c, "acme")
    subs = [await gw.subscribe("acme", BY_NAME) for _ in range(10)]  # 11 frames a window
    for i in range(30):  # one burst (no yield): every row enters every window
        c.store.upsert("acme", "asset", f"b{i:02}", {"name": f"0{i:02}", "kind": "fan"})
    await wait_for(lambda: c.shards["shard-a"].counters["overflow_resyncs"] > 0)
    await wait_for(lambda: all(in_sync(c.store, s) for s in subs), 2, what="all resynced")


async def test_reanchor_returns_the_new_window_with_a_resync_in_flight(
    cluster: Cluster,
) -> None:
    cluster.read_delay_s = 0.3  # store reads take a while, as on a loaded Redis
    await start(cluster, ("shard-a",))
    gw, _ = await cluster.gateway()
    seed(cluster, "acme")
    sub = await gw.subscribe("acme", BY_NAME)
    assert len(sub.rows) == 10
    cluster.delta.drop_next(lambda frames: any(f[0] == sub.id for f in frames))
    cluster.store.upsert("acme", "asset", "first", {"name": "", "kind": "fan"})
    await wait_for(lambda: cluster.delta.dropped, what="a batch lost")
    cluster.store.upsert("acme", "asset", "second", {"name": "0", "kind": "fan"})
    await wait_for(lambda: "resync" in cluster.control.ops(sub.id), interval_s=0)
    rows = await sub.reanchor(None, 3)  # sent right behind the resync
    assert len(rows) == 3
    assert sub.rows.ids == [i for i, _ in truth(cluster.store, sub)]


async def test_reanchor_is_applied_even_if_a_rebuild_of_the_old_window_answers_it(
    cluster: Cluster,
) -> None:
    cluster.read_delay_s = 0.3  # store reads take a while, as on a loaded Redis
    live = ["shard-a", "shard-b"]
    await start(cluster, tuple(live))
    gw, view = await cluster.gateway()
    tenant = tenant_owned_by("shard-a", live)
    seed(cluster, tenant)
    sub = await gw.subscribe(tenant, BY_NAME)
    # shard-a restarts (within its TTL): it claims its partitions again and
    # rebuilds them from the registry, which still holds the old query.
    await cluster.kill("shard-a")
    restarted = cluster.start_shard("shard-a")
    await wait_for(lambda: restarted.counters["claims"] > 0, what="registrations read")
    view.hidden = {"shard-a"}  # the gateway's read of the live set missed a's heartbeat
    rows = await sub.reanchor(None, 3)  # -> shard-b, which does not own p: dropped
    view.hidden = set()
    await cluster.reconciles(3)
    cluster.store.upsert(tenant, "asset", "first", {"name": "", "kind": "fan"})
    await wait_for(lambda: in_sync(cluster.store, sub), 2, what="the new window served")
    assert len(rows) == 3


# -- 9. bad input ---------------------------------------------------------------------

ASSET = EntitySpec(
    name="asset",
    columns={"name": "str", "kind": "str", "temp": "int", "secret": "str"},
    filterable=["name", "kind", "temp"],
    sortable=["name", "temp"],
    max_window=20,
)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (LiveQuery(entity="site", limit=5), "entity"),
        (LiveQuery(entity="asset", where=[eq("color", "red")], limit=5), "where.0.column"),
        (LiveQuery(entity="asset", where=[eq("secret", "x")], limit=5), "where.0.column"),
        (LiveQuery(entity="asset", where=[gt("temp", "hot")], limit=5), "where.0.value"),
        (LiveQuery(entity="asset", sort=[SortKey(column="kind")], limit=5), "sort.0.column"),
        (LiveQuery(entity="asset", limit=21), "limit"),
        (
            LiveQuery(
                entity="asset",
                sort=[SortKey(column="temp")],
                cursor=Cursor(values=["warm", "a1"]),
                limit=5,
            ),
            "cursor.values.0",
        ),
    ],
)
async def test_invalid_query_raises_and_registers_nothing(
    query: LiveQuery, field: str, cluster: Cluster
) -> None:
    cluster.entities = [ASSET]
    await start(cluster, ("shard-a",))
    gw, _ = await cluster.gateway(entities=[ASSET])
    with pytest.raises(InvalidQuery) as err:
        await gw.subscribe("acme", query)
    assert err.value.field == field
    assert await cluster.registry.by_gateway(gw.id) == []
    assert gw.subscriptions() == []
    assert cluster.control.sent == []
    assert not cluster.shards["shard-a"].served


async def test_invalid_reanchor_raises_and_keeps_the_window(cluster: Cluster) -> None:
    await start(cluster, ("shard-a",))
    gw, _ = await cluster.gateway(entities=[ASSET])
    cluster.store.upsert("acme", "asset", "a1", {"name": "x", "kind": "pump", "temp": 3})
    q = LiveQuery(entity="asset", where=[is_null("name")], sort=[SortKey(column="name")], limit=5)
    sub = await gw.subscribe("acme", q)
    reg0 = await cluster.registry.get(sub.id)
    with pytest.raises(InvalidQuery):
        await sub.reanchor(None, 21)
    assert await cluster.registry.get(sub.id) == reg0
    assert sub.query == q
    with pytest.raises(InvalidQuery):
        await gw.subscribe("", q)


# -- lifecycle ------------------------------------------------------------------------


async def test_identical_shapes_share_one_view_across_gateways(cluster: Cluster) -> None:
    await start(cluster)
    gw1, _ = await cluster.gateway()
    gw2, _ = await cluster.gateway()
    seed(cluster, "acme")
    subs = [await gw.subscribe("acme", PUMPS_BY_TEMP) for gw in (gw1, gw2, gw1)]
    shard = cluster.shards[owner(partition_of("acme", "asset"), SHARDS)]
    assert shard.engine.view_count() == 1
    cluster.store.upsert("acme", "asset", "hot", {"name": "hot", "kind": "pump", "temp": 999})
    await wait_for(lambda: all(in_sync(cluster.store, s) for s in subs), what="all follow")


async def test_close_unregisters_and_the_owner_stops_serving(cluster: Cluster) -> None:
    await start(cluster)
    gw, _ = await cluster.gateway()
    seed(cluster, "acme")
    sub = await gw.subscribe("acme", PUMPS_BY_TEMP)
    assert served_by(cluster, sub.id)
    await sub.close()
    assert await cluster.registry.get(sub.id) is None
    await wait_for(lambda: not served_by(cluster, sub.id), what="owner stops serving")
    assert gw.subscriptions() == []
    shard = cluster.shards[owner(partition_of("acme", "asset"), SHARDS)]
    assert shard.engine.view_count() == 0


async def test_gateway_aclose_cleans_up_everything(cluster: Cluster) -> None:
    await start(cluster)
    gw, _ = await cluster.gateway("gw-x")
    for t in ("acme", "rival", "umbrella"):
        seed(cluster, t)
    subs = [await gw.subscribe(t, BY_NAME) for t in ("acme", "rival", "umbrella")]
    await gw.aclose()
    assert all(s.closed for s in subs)
    assert await cluster.registry.by_gateway("gw-x") == []
    assert "gw-x" not in await cluster.members.live_gateways()
    await wait_for(lambda: not any(served_by(cluster, s.id) for s in subs), what="unserved")


async def test_graceful_stop_hands_over_without_waiting_for_the_ttl(cluster: Cluster) -> None:
    # A crash would take STEADY_TTL_S to notice; a stop must not.
    await start(cluster)
    gw, _ = await cluster.gateway()
    seed(cluster, "acme")
    sub = await gw.subscribe("acme", PUMPS_BY_TEMP)
    old = owner(partition_of("acme", "asset"), SHARDS)
    epoch0 = sub.epoch
    await cluster.kill(old)
    await cluster.shards[old].stop()
    await wait_for(lambda: sub.epoch > epoch0, 3, what="handover well inside the TTL")
    await wait_for(lambda: in_sync(cluster.store, sub), what="window after handover")
    assert served_by(cluster, sub.id) == [owner(partition_of("acme", "asset"), cluster.running())]
