"""Failover on Ray: a shard crashes (restarted or not) or freezes past its TTL, and
every client gets a newer-epoch reset, then exact live frames again.

One tier for the module; every test starts from (and leaves) a converged
tier. Measured failover times are printed (run with `-rP` to see them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import ray
from ray_helpers import (
    ENTITY,
    Shadow,
    close_all,
    cursor_at,
    owner_of,
    random_row,
    running_tier,
    shadow_writer,
    shard_handle,
    shard_ids,
    status,
    tier_settings,
    wait_converged,
    wait_exact,
)
from support import HEARTBEAT_TTL_S, OWNERSHIP_INTERVAL_S, unique, wait_for

import raycluster
from raycluster import LiveQuery, RemoteGateway, SortKey, Subscription, Tier, eq
from raycluster.cluster import owner, partition_of
from raycluster.redis import RedisRegistry

# Detection (TTL) + one reconcile + claim and rebuild on a loaded 2-core machine.
SLACK_S = 4.0
FAILOVER_BOUND_S = HEARTBEAT_TTL_S + OWNERSHIP_INTERVAL_S + SLACK_S

PUMPS = LiveQuery(
    entity=ENTITY,
    where=[eq("kind", "pump")],
    sort=[SortKey(column="temp", desc=True), SortKey(column="name")],
    limit=5,
)
BY_NAME = LiveQuery(entity=ENTITY, sort=[SortKey(column="name")], limit=5)

MEASURED: dict[str, float] = {}
EPOCHS: dict[str, list[int]] = {}  # sub id -> its epoch after every delivery


@pytest.fixture(scope="module")
async def tier(ray_namespace: str, redis_server: Any) -> AsyncIterator[Tier]:
    settings = tier_settings(unique("failover"), ray_namespace)
    async with running_tier(settings, redis_server.url) as t:
        yield t
    print("failover times:", {k: round(v, 2) for k, v in MEASURED.items()})


@pytest.fixture(scope="module")
async def remote(tier: Tier) -> AsyncIterator[RemoteGateway]:
    gw = await raycluster.connect(tier.redis_url, tier.settings)
    try:
        yield gw
    finally:
        await gw.aclose()


@pytest.fixture
async def shadow(tier: Tier) -> AsyncIterator[Shadow]:
    await wait_converged(tier, 3)
    async with shadow_writer(tier) as sh:
        yield sh
    await wait_converged(tier, 3)  # leave the tier whole for the next test


async def seeded(shadow: Shadow, label: str, n: int = 30) -> str:
    tenant = unique(label)
    rnd = random.Random(tenant)
    await shadow.upsert_many(tenant, {f"a{i:03}": random_row(rnd) for i in range(n)})
    return tenant


async def subscribe_both(
    tier: Tier, remote: RemoteGateway, tenant: str, query: LiveQuery
) -> list[Subscription]:
    """One subscription through the in-cluster gateway, one through the external one.

    Each records its epoch after every delivery (`assert_epochs_never_went_back`):
    fencing must keep a deposed owner's frames out of the client's stream.
    """
    subs = [await tier.subscribe(tenant, query), await remote.subscribe(tenant, query)]
    for sub in subs:
        EPOCHS[sub.id] = [sub.epoch]
        sub.on_change = lambda s: EPOCHS[s.id].append(s.epoch)
    return subs


def assert_epochs_never_went_back(subs: list[Subscription]) -> None:
    for sub in subs:
        trail = EPOCHS[sub.id]
        assert trail == sorted(trail), f"{sub.id}: epochs {trail}"


async def wait_new_epoch(subs: list[Subscription], epochs: list[int], what: str) -> float:
    """Seconds until every sub holds a complete window of a newer epoch than `epochs`."""

    def reset() -> bool:
        return all(s.epoch > e and s.rows.complete for s, e in zip(subs, epochs, strict=True))

    return await wait_for(reset, FAILOVER_BOUND_S + 30, what=what)


async def write_some(shadow: Shadow, tenant: str, rnd: random.Random, n: int = 10) -> None:
    for _ in range(n):
        agg_id = f"a{rnd.randrange(40):03}"
        if rnd.random() < 0.2:
            await shadow.delete(tenant, agg_id)
        else:
            await shadow.upsert(tenant, agg_id, random_row(rnd))


# -- 2. a crashed owner: restarted by Ray, or gone for good --------------------------


async def test_owner_killed_with_restart_fails_over(
    tier: Tier, remote: RemoteGateway, shadow: Shadow
) -> None:
    tenant = await seeded(shadow, "crash")
    victim = owner_of(tenant, shard_ids(3))
    subs = await subscribe_both(tier, remote, tenant, PUMPS)
    try:
        epochs = [s.epoch for s in subs]
        ray.kill(shard_handle(tier, victim), no_restart=False)
        took = await wait_new_epoch(subs, epochs, f"a reset after {victim} crashed")
        MEASURED["kill+restart"] = took
        print(f"{victim} killed (restart): newer-epoch reset after {took:.2f}s")
        assert took <= FAILOVER_BOUND_S
        await wait_exact([(s, tenant, PUMPS) for s in subs], shadow)
        # Live frames flow again.
        await write_some(shadow, tenant, random.Random(1))
        await shadow.upsert(tenant, "top", {"name": "t", "kind": "pump", "temp": 1000})
        await wait_exact([(s, tenant, PUMPS) for s in subs], shadow)
        assert_epochs_never_went_back(subs)
    finally:
        await close_all(subs)


async def test_owner_killed_for_good_another_shard_takes_over(
    tier: Tier, remote: RemoteGateway, shadow: Shadow
) -> None:
    tenant = await seeded(shadow, "gone")
    live = shard_ids(3)
    victim = owner_of(tenant, live)
    successor = owner_of(tenant, [s for s in live if s != victim])
    p = partition_of(tenant, ENTITY)
    subs = await subscribe_both(tier, remote, tenant, PUMPS)
    try:
        epochs = [s.epoch for s in subs]
        ray.kill(shard_handle(tier, victim))  # no restart: ActorDiedError from now on

        new_owner = ""

        async def served_again() -> bool:
            # The successor takes p over once the victim's heartbeat expires;
            # but the controller re-creates a dead shard within its ensure
            # interval, and if that is sooner, the new incarnation (the same
            # id, so it keeps p) claims p instead. Either is a failover.
            nonlocal new_owner
            for sid in (successor, victim):
                try:
                    st = await shard_handle(tier, sid).status.remote()
                except Exception:
                    continue  # not (yet) re-created
                if p in st["partitions"] and all(
                    s.epoch >= st["epochs"][p] > e and s.rows.complete
                    for s, e in zip(subs, epochs, strict=True)
                ):
                    new_owner = sid
                    return True
            return False

        took = await wait_for(served_again, FAILOVER_BOUND_S + 30, what=f"a new owner of {p}")
        MEASURED["kill for good"] = took
        print(f"{victim} killed for good: {new_owner} serves {p} after {took:.2f}s")
        assert took <= FAILOVER_BOUND_S
        await write_some(shadow, tenant, random.Random(2))
        await wait_exact([(s, tenant, PUMPS) for s in subs], shadow)

        if new_owner == successor:
            # The controller starts the shard again under its name; it wins p back.
            epochs = [s.epoch for s in subs]
            await wait_converged(tier, 3)
            await wait_new_epoch(subs, epochs, f"a reset when {victim} is back")
        await wait_converged(tier, 3)
        await write_some(shadow, tenant, random.Random(3))
        await wait_exact([(s, tenant, PUMPS) for s in subs], shadow)
        assert_epochs_never_went_back(subs)
    finally:
        await close_all(subs)


# -- 3. a reanchored window survives the failover -----------------------------------


async def test_reanchored_window_survives_failover(
    tier: Tier, remote: RemoteGateway, shadow: Shadow
) -> None:
    tenant = await seeded(shadow, "anchor", n=40)
    victim = owner_of(tenant, shard_ids(3))
    subs = await subscribe_both(tier, remote, tenant, BY_NAME)
    registry = RedisRegistry.from_url(tier.redis_url, settings=tier.settings.redis)
    try:
        ranked = shadow.truth(tenant, BY_NAME.model_copy(update={"limit": 40}))
        anchor = ranked[7]
        cursor = cursor_at(shadow.of(tenant)[anchor], anchor, BY_NAME)
        moved = BY_NAME.model_copy(update={"cursor": cursor, "limit": 8})
        for s in subs:
            started = time.monotonic()
            await asyncio.wait_for(s.reanchor(cursor, 8), 30)
            print(f"reanchor took {time.monotonic() - started:.2f}s")
            assert s.rows.ids == shadow.truth(tenant, moved)
            reg = await registry.get(s.id)
            assert reg is not None and reg.query.cursor == cursor and reg.query.limit == 8

        epochs = [s.epoch for s in subs]
        ray.kill(shard_handle(tier, victim), no_restart=False)
        took = await wait_new_epoch(subs, epochs, "a reset after the crash")
        MEASURED["kill+restart (reanchored)"] = took
        print(f"{victim} killed (restart), reanchored windows: reset after {took:.2f}s")
        # The rebuilt window is the reanchored one (cursor and limit), not the original.
        await wait_exact([(s, tenant, moved) for s in subs], shadow)
        assert all(len(s.rows) == 8 for s in subs)
        # Rows before the cursor stay out; rows after it enter.
        await shadow.upsert(tenant, "early", {"name": "", "kind": "fan"})
        await shadow.upsert(tenant, ranked[9], {"name": "~late", "kind": "fan"})
        await wait_exact([(s, tenant, moved) for s in subs], shadow)
        assert_epochs_never_went_back(subs)
    finally:
        await close_all(subs)
        await registry.aclose()


# -- 5. a frozen owner: paused past its TTL, then resumed ----------------------------


async def test_paused_owner_is_replaced_and_its_stale_frames_are_dropped(
    tier: Tier, remote: RemoteGateway, shadow: Shadow
) -> None:
    tenant = await seeded(shadow, "pause")
    live = shard_ids(3)
    victim = owner_of(tenant, live)
    successor = owner_of(tenant, [s for s in live if s != victim])
    p = partition_of(tenant, ENTITY)
    rnd = random.Random(5)
    gateway = tier.gateway()
    stale0 = (await gateway.status.remote())["stale"]
    subs = await subscribe_both(tier, remote, tenant, PUMPS)
    pid = await shard_handle(tier, victim).pid.remote()
    try:
        epochs = [s.epoch for s in subs]
        os.kill(pid, signal.SIGSTOP)
        try:
            # Writes while it is frozen: it reads the first on waking and emits frames with
            # its old epoch (a null temp sorts first descending: the window changes).
            await shadow.upsert(tenant, "frozen", {"name": "f", "kind": "pump", "temp": None})
            await write_some(shadow, tenant, rnd, n=5)
            took = await wait_new_epoch(subs, epochs, f"a reset after {victim} froze")
            MEASURED["SIGSTOP"] = took
            print(f"{victim} paused: newer-epoch reset after {took:.2f}s")
            assert took <= FAILOVER_BOUND_S
            st = await shard_handle(tier, successor).status.remote()
            assert p in st["partitions"]
            await write_some(shadow, tenant, rnd)
            await wait_exact([(s, tenant, PUMPS) for s in subs], shadow)
        finally:
            os.kill(pid, signal.SIGCONT)

        # Awake again: its frames carry a fenced-off epoch; it rejoins and wins p back.
        await write_some(shadow, tenant, rnd)
        await wait_converged(tier, 3)
        assert owner(p, (await status(tier))["live_shards"]) == victim
        await write_some(shadow, tenant, rnd)
        await wait_exact([(s, tenant, PUMPS) for s in subs], shadow)
        stale = (await gateway.status.remote())["stale"] - stale0
        print(f"in-cluster gateway dropped {stale} stale frames; external: {remote.status()}")
        assert_epochs_never_went_back(subs)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        await close_all(subs)
