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


# -- an undeclared entity: every type in one column ------------------------------------

MIXED: list[Any] = [
    None, False, True, -1, 0, 1, 1.0, 2.5, 2**53, 2**53 + 1, float(2**53), 2**63 - 1,
    -(2**63), "", "0", "1", "a", "b", "é",
]  # fmt: skip


def mixed_row(rng: random.Random) -> dict[str, Any]:
    row = {"x": rng.choice(MIXED), "y": rng.choice(MIXED), "k": rng.choice(["a", "b", 1, None])}
    if rng.random() < 0.2:
        del row["x"]
    return row


def mixed_cond(rng: random.Random) -> Cond:
    col = rng.choice(["x", "y"])
    v = rng.choice([x for x in MIXED if x is not None])
    pick = rng.randrange(11)
    if pick == 0:
        return eq(col, v)
    if pick == 1:
        return ne(col, v)
    if pick == 2:
        return rng.choice([gt, gte, lt, lte])(col, v)
    if pick == 3:
        return in_(col, rng.sample([x for x in MIXED if x is not None], 3))
    if pick == 4:
        return not_in(col, rng.sample([x for x in MIXED if x is not None], 2))
    if pick == 5:
        return like(col, rng.choice(["%", "a%", "_"]))
    if pick == 6:
        return is_null(col)
    if pick == 7:
        return eq("k", rng.choice(["a", 1]))
    # or_ groups whose members compare across types, in either order
    a, b = gt(col, rng.choice([0, "a", False])), eq("k", rng.choice(["a", "b", 1]))
    return or_(a, b) if pick % 2 else or_(b, [a, ne("y", 1)])


def mixed_query(rng: random.Random) -> LiveQuery:
    cols = ["x", "y", "k"]
    sort = [SortKey(column=c, desc=rng.random() < 0.5) for c in rng.sample(cols, rng.randint(0, 2))]
    cursor = None
    if rng.random() < 0.3:
        sample = mixed_row(rng)
        cursor = Cursor(values=[*(sample.get(k.column) for k in sort), f"m{rng.randrange(60)}"])
    where = [mixed_cond(rng) for _ in range(rng.randint(0, 2))]
    return LiveQuery(
        entity="thing", where=where, sort=sort, limit=rng.randint(1, 12), cursor=cursor
    )


async def test_engine_is_exact_over_redis_with_mixed_value_types(
    redis_url: str, settings: RedisSettings
) -> None:
    """Undeclared: any scalar in any column; rows order and filter by the documented rule."""
    rng = random.Random(16)
    tenant = "acme"
    writer = Writer.from_url(redis_url, settings=settings)
    store = RedisStore.from_url(redis_url, settings=settings)
    feed = RedisFeed.from_url(
        redis_url, partitions=[partition_of(tenant, "thing")], settings=settings
    )

    async def write(n: int) -> None:
        for _ in range(n):
            agg_id = f"m{rng.randrange(60)}"
            r = rng.random()
            if r < 0.1:
                await writer.delete(tenant, "thing", agg_id)
            elif r < 0.25:
                rows = [(f"m{rng.randrange(60)}", mixed_row(rng)) for _ in range(rng.randint(2, 6))]
                await writer.upsert_many(tenant, "thing", rows)
            else:
                await writer.upsert(tenant, "thing", agg_id, mixed_row(rng))

    clients: list[Client] = []
    compared = 0
    try:
        await write(80)
        async with Engine(store, store, feed, cushion=rng.randint(0, 4)) as engine:
            for _ in range(6):
                subs = [engine.subscribe(tenant, mixed_query(rng)) for _ in range(5)]
                for sub in await asyncio.gather(*subs):
                    clients.append(Client(tenant, sub))
                await write(120)
                await engine.settle()
                table = await store.rows(tenant, "thing")
                for c in clients:
                    c.catch_up()
                    want = o_top(table, c.sub.query)
                    assert c.items == want, (c.sub.query, c.items, want)
                    compared += 1
            assert engine.stats.dispatch_errors == 0 and engine.stats.load_errors == 0
        assert feed.stats.malformed == 0
        assert compared >= 100
    finally:
        await feed.aclose()
        await store.aclose()
        await writer.aclose()
