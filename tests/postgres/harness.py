"""A small table, its workload (which knows each row's expected version), and live
windows over Redis checked against Postgres: the fault tests' common ground."""

from __future__ import annotations

import random
from typing import Any

import redis.asyncio as aioredis
from pg_helpers import Client, Db, sql_window

from raycluster.cluster.keys import Keys
from raycluster.cluster.routing import partition_of
from raycluster.livequery import Engine, EntitySpec, LiveQuery, SortKey, gt, like
from raycluster.postgres.settings import PostgresSettings, TableSource
from raycluster.redis import RedisFeed, RedisSettings, RedisStore

ITEM = EntitySpec(name="item", columns={"name": "str", "n": "int"}, max_window=100)
TENANTS = ["acme", "rival", "umbrella"]
SCHEMA = """
CREATE TABLE item (id integer PRIMARY KEY, tenant text NOT NULL, name text, n integer);
CREATE PUBLICATION pub FOR TABLE item;
"""
QUERIES = [
    LiveQuery(entity="item", sort=[SortKey(column="n", desc=True)], limit=20),
    LiveQuery(entity="item", sort=[SortKey(column="name")], limit=30),
    LiveQuery(entity="item", where=[gt("n", 500)], sort=[SortKey(column="n")], limit=10),
    LiveQuery(entity="item", where=[like("name", "r%")], sort=[SortKey(column="name")], limit=15),
]


def quick_redis() -> RedisSettings:
    return RedisSettings(feed_block_ms=200, reconnect_min_s=0.02, reconnect_max_s=0.2)


def item_settings(dsn: str, slot: str, **kw: Any) -> PostgresSettings:
    base: dict[str, Any] = {
        "feedback_interval_s": 0.05,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
        "slot_busy_retry_s": 0.2,
        **kw,
    }
    return PostgresSettings(
        dsn=dsn,
        publication="pub",
        slot=slot,
        tables=[TableSource(table="item", entity="item", tenant_column="tenant")],
        **base,
    )


class Items:
    """Random single-row changes to `item`; every change really changes its row, so
    each is one version in Redis."""

    def __init__(self, db: Db, seed: int) -> None:
        self.db = db
        self.rng = random.Random(seed)
        self.live: dict[int, str] = {}  # id -> tenant
        self.versions: dict[tuple[str, int], int] = {}  # (tenant, id) -> expected version
        self.next_id = 1
        self.counter = 0
        self.touched: set[tuple[str, int]] = set()  # rows changed by `step`

    def fill(self, n: int) -> None:
        """`n` rows in one statement (before an ingester copies them: version 1 each)."""
        start = self.next_id
        self.db.run(
            "INSERT INTO item SELECT g, (ARRAY['acme','rival','umbrella'])[1 + g %% 3], "
            "'r' || g, g %% 1000 FROM generate_series(%s, %s) g",
            [start, start + n - 1],
        )
        for i in range(start, start + n):
            tenant = TENANTS[i % 3]
            self.live[i] = tenant
            self.versions[(tenant, i)] = self.versions.get((tenant, i), 0) + 1
        self.next_id += n

    def step(self) -> None:
        r = self.rng
        self.counter += 1
        pick = r.random()
        if pick < 0.4 or not self.live:
            i, tenant = self.next_id, r.choice(TENANTS)
            self.next_id += 1
            self.db.run("INSERT INTO item VALUES (%s, %s, %s, %s)",
                        [i, tenant, f"{r.choice('rstu')}{self.counter}", self.counter])  # fmt: skip
            self.live[i] = tenant
        else:
            i = r.choice(sorted(self.live))
            tenant = self.live[i]
            if pick < 0.8:
                self.db.run("UPDATE item SET n = %s WHERE id = %s", [10_000 + self.counter, i])
            else:
                self.db.run("DELETE FROM item WHERE id = %s", [i])
                del self.live[i]
        self.versions[(tenant, i)] = self.versions.get((tenant, i), 0) + 1
        self.touched.add((tenant, i))

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.step()


class Windows:
    """An engine over Redis with the same queries open for every tenant."""

    def __init__(self, redis_url: str, rs: RedisSettings) -> None:
        self.url, self.rs = redis_url, rs
        self.store = RedisStore.from_url(redis_url, entities=[ITEM], settings=rs)
        parts = {partition_of(t, "item") for t in TENANTS}
        self.feed = RedisFeed.from_url(redis_url, partitions=parts, settings=rs)
        self.engine = Engine(self.store, self.store, self.feed, cushion=4, entities=[ITEM])
        self.clients: list[Client] = []

    async def open(self) -> None:
        await self.engine.start()
        for t in TENANTS:
            for q in QUERIES:
                self.clients.append(Client(t, await self.engine.subscribe(t, q)))

    async def check(self, db: Db) -> None:
        """Every window equals Postgres' own answer."""
        await self.engine.settle()
        for c in self.clients:
            c.catch_up()
            want = sql_window(db, "item", ITEM, "tenant", "id", c.tenant, c.sub.query)
            got = [a for a, _, _ in c.items]
            assert got == want, (c.tenant, c.sub.query, got, want)

    async def aclose(self) -> None:
        await self.engine.aclose()
        await self.feed.aclose()
        await self.store.aclose()


async def check_versions(
    redis_url: str, rs: RedisSettings, items: Items, changed: set[tuple[str, int]] = frozenset()
) -> None:
    """Every row's version in Redis is the number of changes made to it: nothing was
    applied twice, nothing lost (rows in `changed` may also be one more: a copy found
    them changed)."""
    keys = Keys(rs.key_prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        wrong = {}
        for (tenant, i), want in items.versions.items():
            v = await client.hget(keys.row(tenant, "item", str(i)), "v")
            if int(v or 0) != want and not ((tenant, i) in changed and int(v or 0) == want + 1):
                wrong[(tenant, i)] = (int(v or 0), want)
        assert not wrong, f"{len(wrong)} rows with the wrong version (got, want): {wrong}"
    finally:
        await client.aclose()


async def live_count(redis_url: str, rs: RedisSettings) -> int:
    """Live rows of `item`, every tenant."""
    keys = Keys(rs.key_prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        return sum([int(await client.zcard(keys.table(t, "item"))) for t in TENANTS])
    finally:
        await client.aclose()
