"""The core Engine, unchanged, over RedisStore + RedisFeed: a randomized differential run."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from redis_helpers import apply_frames, o_top

from raycluster.cluster.routing import partition_of
from raycluster.livequery import (
    Cond,
    Cursor,
    Engine,
    EngineSubscription,
    EntitySpec,
    LiveQuery,
    SortKey,
    eq,
    gt,
    gte,
    ilike,
    in_,
    is_not_null,
    is_null,
    like,
    lt,
    lte,
    ne,
    not_in,
    or_,
)
from raycluster.redis import RedisFeed, RedisSettings, RedisStore, Writer

pytestmark = pytest.mark.redis

SPEC = EntitySpec(
    name="asset",
    columns={
        "name": "str",
        "kind": "str",
        "temp": "float",
        "n": "int",
        "on": "bool",
        "note": "str",
    },
    max_window=50,
)
TENANTS = ["acme", "rival"]
NAMES = ["alpha", "alpine", "beta", "Beta", "gamma", "pump 1", "Pump 2", "zeta", "", "é"]
KINDS = ["pump", "valve", "tank", "fan"]
IDS = 150


def rand_row(rng: random.Random) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": rng.choice([*NAMES, None]),
        "kind": rng.choice(KINDS),
        "temp": rng.choice([None, *(float(x) / 2 for x in range(-4, 60, 3))]),
        "n": rng.choice([None, *range(-3, 12)]),
        "on": rng.choice([None, True, False]),
    }
    if rng.random() < 0.6:
        row["note"] = rng.choice([None, "hot", "cold"])
    return row


def rand_cond(rng: random.Random) -> Cond:
    pick = rng.randrange(14)
    if pick < 2:
        return eq("kind", rng.choice(KINDS))
    if pick < 4:
        return in_("kind", rng.sample(KINDS, rng.randint(1, 3)))
    if pick == 4:
        return gt("temp", rng.choice([0.0, 10.0, 20.0]))
    if pick == 5:
        return lte("n", rng.randrange(-2, 10))
    if pick == 6:
        return gte("temp", 5) if rng.random() < 0.5 else lt("n", 5)
    if pick == 7:
        return is_null(rng.choice(["note", "temp", "name", "n"]))
    if pick == 8:
        return is_not_null(rng.choice(["note", "temp", "name"]))
    if pick == 9:
        return like("name", rng.choice(["al%", "%a", "%et%", "_eta"]))
    if pick == 10:
        return ilike("name", rng.choice(["p%", "%UMP%", "BETA"]))
    if pick == 11:
        return eq("on", rng.random() < 0.5)
    if pick == 12:
        return not_in("n", [1, 2, 3]) if rng.random() < 0.5 else ne("kind", "fan")
    return or_(eq("kind", "fan"), [gt("n", 6), is_not_null("note")])


def rand_query(rng: random.Random) -> LiveQuery:
    cols = ["name", "kind", "temp", "n", "on", "note"]
    sort = [SortKey(column=c, desc=rng.random() < 0.5) for c in rng.sample(cols, rng.randint(1, 2))]
    where = [rand_cond(rng) for _ in range(rng.randint(0, 2))]
    cursor = None
    if rng.random() < 0.15:
        sample = rand_row(rng)
        cursor = Cursor(values=[*(sample.get(k.column) for k in sort), f"a{rng.randrange(IDS)}"])
    return LiveQuery(
        entity="asset", where=where, sort=sort, limit=rng.randint(1, 20), cursor=cursor
    )


class Client:
    """One subscriber: its list, rebuilt only from the snapshot and frames."""

    def __init__(self, tenant: str, sub: EngineSubscription) -> None:
        self.tenant = tenant
        self.sub = sub
        self.items = [(r.agg_id, r.version, r.vals) for r in sub.snapshot]

    def catch_up(self) -> None:
        apply_frames(self.items, self.sub.drain())


async def write_some(writer: Writer, rng: random.Random, n: int) -> None:
    done = 0
    while done < n:
        tenant = rng.choice(TENANTS)
        r = rng.random()
        if r < 0.12:
            await writer.delete(tenant, "asset", f"a{rng.randrange(IDS)}")
            done += 1
        elif r < 0.25:
            k = rng.randint(2, 12)
            rows = [(f"a{rng.randrange(IDS)}", rand_row(rng)) for _ in range(k)]
            await writer.upsert_many(tenant, "asset", rows)
            done += k
        else:
            await writer.upsert(tenant, "asset", f"a{rng.randrange(IDS)}", rand_row(rng))
            done += 1


async def test_engine_is_exact_over_redis(redis_url: str, settings: RedisSettings) -> None:
    rng = random.Random(20240601)
    partitions = {partition_of(t, "asset") for t in TENANTS}
    writer = Writer.from_url(redis_url, entities=[SPEC], settings=settings)
    store = RedisStore.from_url(redis_url, entities=[SPEC], settings=settings)
    feed = RedisFeed.from_url(redis_url, partitions=partitions, settings=settings)
    clients: list[Client] = []
    compared = 0
    try:
        await write_some(writer, rng, 300)
        async with Engine(store, store, feed, cushion=rng.randint(0, 6), entities=[SPEC]) as engine:

            async def subscribe_some(k: int) -> None:
                for _ in range(k):
                    tenant = rng.choice(TENANTS)
                    sub = await engine.subscribe(tenant, rand_query(rng))
                    clients.append(Client(tenant, sub))

            for _ in range(10):
                # New subscriptions snapshot while writes are in flight.
                await asyncio.gather(subscribe_some(4), write_some(writer, rng, 280))
                await engine.settle()
                tables = {t: await store.rows(t, "asset") for t in TENANTS}
                for c in clients:
                    c.catch_up()
                    want = o_top(tables[c.tenant], c.sub.query)
                    assert c.items == want, (c.sub.query, c.items, want)
                    compared += 1
            assert engine.stats.dispatch_errors == 0 and engine.stats.load_errors == 0
        assert feed.stats.malformed == 0 and feed.stats.gaps == 0
        assert compared > 200 and len(clients) == 40
        assert feed.stats.changes >= 2500  # deletes of missing rows write no event
    finally:
        await feed.aclose()
        await store.aclose()
        await writer.aclose()
