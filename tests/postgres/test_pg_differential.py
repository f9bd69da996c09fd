"""Random SQL on Postgres, live windows over Redis: every window equals Postgres' own
`SELECT … WHERE … ORDER BY … COLLATE "C" LIMIT n` whenever the ingester caught up.

The workload (`pg_workload`): two tables, inserts, updates of values, ids and
tenants, no-op updates, deletes, multi-row transactions, TRUNCATE, TOASTed
values left unchanged. tests/ray/test_postgres_tier.py runs it with
in-cluster and external subscriptions through a tier on Ray.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from pg_helpers import Client, Db, sql_window, synced
from pg_workload import (
    ASSET,
    SCHEMA,
    SITE,
    TENANTS,
    Workload,
    quick_redis,
    rand_query,
    settings,
    window_of,
)

from raycluster.cluster.routing import partition_of
from raycluster.livequery import Engine
from raycluster.postgres.ingester import Ingester
from raycluster.redis import RedisFeed, RedisStore


def check_windows(db: Db, clients: list[Client]) -> int:
    for c in clients:
        c.catch_up()
        q = c.sub.query
        table, spec, id_col = window_of(q)
        want = sql_window(db, table, spec, "tenant", id_col, c.tenant, q)
        got = [agg_id for agg_id, _, _ in c.items]
        assert got == want, (c.tenant, q.model_dump(exclude_defaults=True), got, want,
                             sql_rows(db, table, got + want), c.items)  # fmt: skip
    return len(clients)


@pytest.mark.timeout(180)
async def test_windows_equal_postgres(db_dsn: str, slot: str, redis_url: str) -> None:
    rng = random.Random(19)
    db = Db(db_dsn)
    db.run(SCHEMA)
    work = Workload(db, rng)
    work.round(300)  # rows before the ingester starts: the initial copy
    rs = quick_redis()
    entities = [ASSET, SITE]
    ing = Ingester(settings(db_dsn, slot, batch_changes=50, atomic_writes=7), redis_url,
                   redis_settings=rs, entities=entities)  # fmt: skip
    task = asyncio.create_task(ing.run())
    partitions = {partition_of(t, e) for t in TENANTS for e in ("asset", "site")}
    store = RedisStore.from_url(redis_url, entities=entities, settings=rs)
    feed = RedisFeed.from_url(redis_url, partitions=partitions, settings=rs)
    clients: list[Client] = []
    compared = 0
    try:
        await synced(ing.status, db)
        async with Engine(store, store, feed, cushion=3, entities=entities) as engine:
            for rnd in range(12):
                for _ in range(4):
                    tenant = rng.choice(TENANTS)
                    clients.append(Client(tenant, await engine.subscribe(tenant, rand_query(rng))))
                if rnd == 7:
                    work.truncate()
                work.round(120)
                await synced(ing.status, db)
                await engine.settle()
                compared += check_windows(db, clients)
            assert engine.stats.dispatch_errors == 0 and engine.stats.load_errors == 0
        assert feed.stats.malformed == 0 and feed.stats.gaps == 0
        st = ing.status()
        assert st["state"] == "streaming" and st["truncates"] == 1 and st["skipped"] == 0
        assert st["unchanged"] > 0  # the no-op updates wrote nothing
        assert compared > 200
    finally:
        await ing.aclose()
        await task
        await feed.aclose()
        await store.aclose()
        db.close()


def sql_rows(db: Db, table: str, ids: list[str]) -> list[tuple[Any, ...]]:
    key = "id" if table == "asset" else "code"
    return db.rows(f"SELECT * FROM {table} WHERE {key}::text = ANY(%s)", [ids])
