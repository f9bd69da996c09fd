"""Chaos on Ray: hundreds of live windows, random writes and reanchors, shard crashes.

Three shards; subscriptions of shared and distinct shapes through the
in-cluster gateway and two external ones; a few hundred writes per second for
about 20 s with random reanchors; four shard kills (Ray restarts some, the
controller re-creates the others). Once quiet and converged, every client
list must equal the brute-force truth and no subscription may be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable
from typing import Any

import pytest
import ray
from ray_helpers import (
    ENTITY,
    Shadow,
    close_all,
    cursor_at,
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
from support import unique, wait_for

import raycluster
from raycluster import LiveQuery, RemoteGateway, SortKey, Subscription, eq, gt, in_, ne
from raycluster.redis import RedisMembership, RedisRegistry

TENANTS = 6
COPIES_IN_CLUSTER = 3  # per (tenant, shape); identical shapes share one view
COPIES_EXTERNAL = 4
ROW_IDS = 80
WRITE_RATE = 250.0  # per second
CHAOS_S = 20.0
KILLS = ((3.0, True), (8.0, False), (13.0, True), (17.0, True))  # (at s, restart?)
REANCHOR_EVERY_S = 0.25

SHAPES = (
    LiveQuery(entity=ENTITY, where=[eq("kind", "pump")],
              sort=[SortKey(column="temp", desc=True), SortKey(column="name")], limit=5),
    LiveQuery(entity=ENTITY, where=[in_("site", ["north", "south"])],
              sort=[SortKey(column="name")], limit=8),
    LiveQuery(entity=ENTITY, where=[gt("temp", 50)], sort=[SortKey(column="temp")], limit=6),
    LiveQuery(entity=ENTITY,
              sort=[SortKey(column="site"), SortKey(column="temp", desc=True)], limit=7),
    LiveQuery(entity=ENTITY, where=[ne("kind", "fan")],
              sort=[SortKey(column="name", desc=True)], limit=4),
)  # fmt: skip


class Client:
    """One subscription and the query its list must answer (changes on reanchor)."""

    def __init__(self, sub: Subscription, tenant: str, query: LiveQuery) -> None:
        self.sub = sub
        self.tenant = tenant
        self.query = query


async def bounded(limit: asyncio.Semaphore, coro: Awaitable[Any]) -> Any:
    async with limit:
        return await coro


@pytest.mark.timeout(420)
async def test_chaos_every_window_exact_and_no_subscription_lost(
    ray_namespace: str, redis_server: Any
) -> None:
    rnd = random.Random(20_260_101)
    settings = tier_settings(unique("chaos"), ray_namespace)
    tenants = [unique(f"c{i}") for i in range(TENANTS)]
    async with running_tier(settings, redis_server.url) as tier, shadow_writer(tier) as shadow:
        remotes: list[RemoteGateway] = []
        clients: list[Client] = []
        try:
            for t in tenants:
                await shadow.upsert_many(t, {f"r{i:02}": random_row(rnd) for i in range(50)})
            remotes = [await raycluster.connect(tier.redis_url, settings) for _ in range(2)]
            plan = [
                (t, q, k) for t in tenants for q in SHAPES
                for k in range(COPIES_IN_CLUSTER + COPIES_EXTERNAL)
            ]  # fmt: skip
            limit = asyncio.Semaphore(16)

            async def open_one(t: str, q: LiveQuery, k: int) -> Client:
                if k < COPIES_IN_CLUSTER:
                    sub = await tier.subscribe(t, q)
                else:
                    sub = await remotes[k % 2].subscribe(t, q)
                return Client(sub, t, q)

            started = time.monotonic()
            clients = list(await asyncio.gather(*(bounded(limit, open_one(*x)) for x in plan)))
            print(f"{len(clients)} subscriptions open in {time.monotonic() - started:.1f}s")
            assert len(clients) >= 200
            await wait_exact([(c.sub, c.tenant, c.query) for c in clients], shadow)

            stats = await run_chaos(tier, shadow, clients, tenants, rnd)
            print("chaos:", stats)

            # Quiet: the tier converges and every list is the truth.
            quiet = time.monotonic()
            await wait_converged(tier, 3, timeout_s=90)
            served = await wait_all_served(tier, len(clients))
            print(f"converged; every subscription served (waited {served:.1f}s)")
            took = await wait_exact(
                [(c.sub, c.tenant, c.query) for c in clients], shadow, timeout_s=90
            )
            print(f"exact {time.monotonic() - quiet:.1f}s after the writes ({took:.1f}s wait)")

            # Nothing lost: every subscription is open, registered and served...
            assert not [c.sub.id for c in clients if c.sub.closed]
            await check_registered(tier, settings, clients, remotes)
            # ...and still gets frames: per tenant, a row that tops each shape's window.
            before = {c.sub.id: c.sub.rows.ids for c in clients}
            for t in tenants:
                for i, row in enumerate(FIRST_ROWS):
                    await shadow.upsert(t, f"z{i}", row)
            await wait_exact([(c.sub, c.tenant, c.query) for c in clients], shadow, 60)
            moved = sum(c.sub.rows.ids != before[c.sub.id] for c in clients)
            print(f"the final writes changed {moved} of {len(clients)} windows")
            assert moved >= len(clients) // 2  # all but some reanchored ones
        finally:
            await close_all(c.sub for c in clients)
            for r in remotes:
                with contextlib.suppress(Exception):
                    await r.aclose()


# One row per shape that matches its filter and sorts first in its order.
FIRST_ROWS = (
    {"name": "", "kind": "pump", "site": "north", "temp": None},
    {"name": "", "kind": "valve", "site": "north", "temp": 1},
    {"name": "", "kind": "fan", "site": "east", "temp": 51},
    {"name": "", "kind": "fan", "site": "", "temp": 99},
    {"name": "~", "kind": "valve", "site": "south", "temp": 2},
)


async def run_chaos(
    tier: Any, shadow: Shadow, clients: list[Client], tenants: list[str], rnd: random.Random
) -> dict[str, Any]:
    """Writes at WRITE_RATE, reanchors, and KILLS, for CHAOS_S seconds."""
    start = time.monotonic()
    stop = start + CHAOS_S
    counts = {"writes": 0, "deletes": 0, "reanchors": 0, "reanchor_errors": 0, "kills": []}

    async def writes() -> None:
        n = 0
        while time.monotonic() < stop:
            t = rnd.choice(tenants)
            agg_id = f"r{rnd.randrange(ROW_IDS):02}"
            if rnd.random() < 0.15:
                await shadow.delete(t, agg_id)
                counts["deletes"] += 1
            else:
                await shadow.upsert(t, agg_id, random_row(rnd))
            n += 1
            ahead = start + n / WRITE_RATE - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        counts["writes"] = n

    async def reanchors() -> None:
        while time.monotonic() < stop:
            await asyncio.sleep(REANCHOR_EVERY_S)
            c = rnd.choice(clients)
            rows = shadow.of(c.tenant)
            new_limit = rnd.randrange(3, 11)
            cursor = None
            if rows and rnd.random() < 0.7:
                agg_id = rnd.choice(sorted(rows))
                cursor = cursor_at(rows[agg_id], agg_id, c.query)
            # The new anchor is persisted before the request: it is the truth from now on.
            c.query = c.query.model_copy(update={"cursor": cursor, "limit": new_limit})
            try:
                await asyncio.wait_for(c.sub.reanchor(cursor, new_limit), 40)
                counts["reanchors"] += 1
            except Exception as e:
                counts["reanchor_errors"] += 1
                print(f"reanchor of {c.sub.id[:8]} failed: {type(e).__name__}: {e}")

    async def kills() -> None:
        for at, restart in KILLS:
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            members = RedisMembership.from_url(tier.redis_url, settings=tier.settings.redis)
            try:
                live = await members.live_shards()
            finally:
                await members.aclose()
            for victim in rnd.sample(shard_ids(3), 3):
                if victim not in live:
                    continue
                try:
                    handle = shard_handle(tier, victim)
                except ValueError:
                    continue  # gone for good and not re-created yet
                ray.kill(handle, no_restart=not restart)
                counts["kills"].append((round(time.monotonic() - start, 1), victim, restart))
                break

    async with asyncio.TaskGroup() as tg:
        tg.create_task(writes())
        tg.create_task(reanchors())
        tg.create_task(kills())
    assert len(counts["kills"]) >= 3, counts
    return counts


async def check_registered(
    tier: Any, settings: Any, clients: list[Client], remotes: list[RemoteGateway]
) -> None:
    """Every open subscription is in the registry (with its anchor) and served by a shard."""
    registry = RedisRegistry.from_url(tier.redis_url, settings=settings.redis)
    try:
        regs = {}
        own = [tier.own_gateway_id] if tier.own_gateway_id else []
        for gw in [*tier.gateway_ids, *own, *(r.id for r in remotes)]:
            regs.update({r.sub_id: r for r in await registry.by_gateway(gw)})
        assert set(regs) == {c.sub.id for c in clients}
        for c in clients:
            q = regs[c.sub.id].query
            assert (q.cursor, q.limit) == (c.query.cursor, c.query.limit), c.sub.id
    finally:
        await registry.aclose()
    await wait_all_served(tier, len(clients), timeout_s=5)


async def wait_all_served(tier: Any, n: int, timeout_s: float = 60) -> float:
    """Wait until the shards serve exactly `n` subscriptions in all (a claim rebuilds
    its partition's subscriptions after taking it, so this trails convergence)."""
    start = time.monotonic()
    last: dict[str, Any] = {}

    async def served() -> bool:
        nonlocal last
        last = await status(tier)
        return bool(last["subscriptions"] == n)

    await wait_for(
        served,
        timeout_s,
        interval_s=0.25,
        what=lambda: (
            f"{n} subscriptions served: "
            + str({sid: s.get("subscriptions") for sid, s in last["shards"].items()})
        ),
    )
    return time.monotonic() - start
