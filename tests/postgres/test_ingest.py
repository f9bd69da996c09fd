"""The ingester's checks and contracts: one error for a bad config, a schema change
stops it, a value it cannot store stops it, a second ingester waits, credentials
never show, Redis Cluster."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from harness import ITEM, SCHEMA, Items, Windows, item_settings, quick_redis
from pg_helpers import Db, synced
from support import wait_for

from raycluster.cluster.routing import partition_of
from raycluster.livequery import EntitySpec
from raycluster.postgres.errors import SchemaChanged, SourceConfigError, UnsupportedRowValue
from raycluster.postgres.ingester import Ingester
from raycluster.postgres.settings import TableSource
from raycluster.redis import LocalRedisCluster, RedisCommandError, RedisSettings


def table(**kw: Any) -> TableSource:
    return TableSource(**{"table": "item", "entity": "item", "tenant_column": "tenant", **kw})


CASES = [
    # (extra SQL, settings changes, declared entities, field named, words in the reason)
    ("", {"publication": "nope"}, [], "postgres.publication", "does not exist"),
    ("", {"tables": [table(table="missing")]}, [], "postgres.tables.0.table", "does not exist"),
    ("", {"tables": [table(tenant_column="owner")]}, [], "postgres.tables.0.tenant_column",
     "'owner' does not exist"),
    ("", {"tables": [table(columns=["name", "size"])]}, [], "postgres.tables.0.columns",
     "'size' does not exist"),
    ("", {}, [EntitySpec(name="item", columns={"name": "str", "color": "str"})],
     "postgres.tables.0.columns", "'color' of entity 'item' does not exist"),
    ("", {}, [EntitySpec(name="item", columns={"name": "int"})], "postgres.tables.0.columns",
     "text cannot be carried as int"),
    ("ALTER TABLE item ADD COLUMN doc jsonb", {}, [EntitySpec(name="item",
     columns={"doc": "str"})], "postgres.tables.0.columns", "not supported for filtering"),
    ("ALTER TABLE item ADD COLUMN price numeric", {}, [EntitySpec(name="item",
     columns={"price": "float"})], "postgres.tables.0.columns", "does not fit a float"),
    ("CREATE TABLE other (id int PRIMARY KEY, tenant text); ",
     {"tables": [table(table="other")]}, [], "postgres.tables.0.table",
     "not in publication 'pub'"),
    ("ALTER PUBLICATION pub SET (publish = 'insert, update')", {}, [], "postgres.publication",
     "does not publish delete, truncate"),
    ("CREATE TABLE nokey (id int, tenant text); ALTER PUBLICATION pub ADD TABLE nokey",
     {"tables": [table(table="nokey")]}, [], "postgres.tables.0.id_column",
     "has no primary key"),
    ("CREATE TABLE wide (a int, b int, tenant text, PRIMARY KEY (a, b)); "
     "ALTER PUBLICATION pub ADD TABLE wide", {"tables": [table(table="wide")]}, [],
     "postgres.tables.0.id_column", "has the primary key (a, b)"),
    ("CREATE TABLE odd (id int PRIMARY KEY, code text NOT NULL, tenant text); "
     "ALTER PUBLICATION pub ADD TABLE odd", {"tables": [table(table="odd", id_column="code")]},
     [], "postgres.tables.0.id_column", "must identify a row"),
]  # fmt: skip


@pytest.mark.parametrize(("sql", "changes", "entities", "field", "reason"), CASES)
async def test_a_bad_config_is_one_error_naming_it(
    db_dsn: str, slot: str, redis_url: str, sql: str, changes: dict[str, Any],
    entities: list[EntitySpec], field: str, reason: str,
) -> None:  # fmt: skip
    db = Db(db_dsn)
    db.run(SCHEMA)
    if sql:
        db.run(sql)
    cfg = item_settings(db_dsn, slot).model_copy(update=changes)
    ing = Ingester(cfg, redis_url, redis_settings=quick_redis(), entities=entities)
    try:
        with pytest.raises(SourceConfigError) as e:
            await asyncio.wait_for(ing.run(), 30)
        assert e.value.field == field and reason in e.value.reason, str(e.value)
        assert ing.status()["state"] == "failed"
        assert not db.rows("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot])
    finally:
        await ing.aclose()
        db.close()


@pytest.fixture
def running(db_dsn: str, slot: str, redis_url: str) -> Iterator[tuple[Db, Ingester]]:
    db = Db(db_dsn)
    db.run(SCHEMA)
    ing = Ingester(item_settings(db_dsn, slot), redis_url, redis_settings=quick_redis(),
                   entities=[ITEM])  # fmt: skip
    yield db, ing
    db.close()


async def test_a_schema_change_of_a_carried_column_stops_the_ingester(
    running: tuple[Db, Ingester],
) -> None:
    db, ing = running
    task = asyncio.create_task(ing.run())
    try:
        db.run("INSERT INTO item VALUES (1, 'acme', 'a', 1)")
        await synced(ing.status, db)
        db.run("ALTER TABLE item ADD COLUMN extra text")  # not carried: followed
        db.run("INSERT INTO item VALUES (2, 'acme', 'b', 2, 'x')")
        await synced(ing.status, db)
        db.run("ALTER TABLE item ALTER COLUMN n TYPE bigint")
        db.run("INSERT INTO item VALUES (3, 'acme', 'c', 3, 'y')")
        with pytest.raises(SchemaChanged) as e:
            await asyncio.wait_for(task, 30)
        assert "column n changed type from integer to bigint" in str(e.value)
        st = ing.status()
        assert st["state"] == "failed" and "item" in st["error"]
    finally:
        await ing.aclose()


async def test_an_unstorable_value_stops_the_ingester_naming_it(
    db_dsn: str, slot: str, redis_url: str
) -> None:
    db = Db(db_dsn)
    db.run("CREATE TABLE m (id int PRIMARY KEY, tenant text, v double precision);"
           "CREATE PUBLICATION pub FOR TABLE m")  # fmt: skip
    cfg = item_settings(db_dsn, slot).model_copy(
        update={"tables": [TableSource(table="m", entity="m", tenant_column="tenant")]}
    )
    ing = Ingester(cfg, redis_url, redis_settings=quick_redis())
    task = asyncio.create_task(ing.run())
    try:
        db.run("INSERT INTO m VALUES (1, 'acme', 1.5)")
        await synced(ing.status, db)
        db.run("INSERT INTO m VALUES (2, 'acme', 'NaN')")
        with pytest.raises(UnsupportedRowValue) as e:
            await asyncio.wait_for(task, 30)
        assert (e.value.table, e.value.column, e.value.row_id) == ("public.m", "v", "2")
    finally:
        await ing.aclose()
        db.close()


async def test_a_key_of_another_type_stops_the_ingester_with_nothing_lost(
    running: tuple[Db, Ingester], redis_url: str
) -> None:
    """A stray key where a write goes (another tier under an overlapping prefix, a
    person): the script refuses before writing, the ingester stops naming the key,
    the transaction is not confirmed; once the key is gone, a new ingester applies it."""
    db, ing = running
    rs = quick_redis()
    task = asyncio.create_task(ing.run())
    client = aioredis.Redis.from_url(redis_url)
    try:
        db.run("INSERT INTO item VALUES (1, 'acme', 'a', 1)")
        await synced(ing.status, db)
        stream = rs.keys.event_stream(partition_of("acme", "item"))
        await client.delete(stream)
        await client.hset(stream, "stray", "1")
        db.run("INSERT INTO item VALUES (2, 'acme', 'b', 2)")
        with pytest.raises(RedisCommandError) as e:
            await asyncio.wait_for(task, 30)
        assert stream in str(e.value)
        st = ing.status()
        assert st["state"] == "failed" and stream in st["error"]
        assert not await client.exists(rs.keys.row("acme", "item", "2"))
        await ing.aclose()

        await client.delete(stream)
        again = Ingester(ing.settings, redis_url, redis_settings=rs, entities=[ITEM])
        task = asyncio.create_task(again.run())
        try:
            await synced(again.status, db)
            assert await client.hget(rs.keys.row("acme", "item", "2"), "v") == b"1"
        finally:
            await again.aclose()
            await task
    finally:
        await ing.aclose()
        await client.aclose()


async def test_a_second_ingester_waits_for_the_slot(db_dsn: str, slot: str, redis_url: str) -> None:
    db = Db(db_dsn)
    db.run(SCHEMA)
    items = Items(db, seed=9)
    items.fill(200)
    rs = quick_redis()
    first = Ingester(item_settings(db_dsn, slot), redis_url, redis_settings=rs, entities=[ITEM])
    second = Ingester(item_settings(db_dsn, slot), redis_url, redis_settings=rs, entities=[ITEM])
    t1 = asyncio.create_task(first.run())
    await synced(first.status, db)
    t2 = asyncio.create_task(second.run())
    windows = Windows(redis_url, rs)
    try:
        await windows.open()
        await wait_for(lambda: second.status()["state"] == "waiting", 10, what="second waits")
        items.steps(50)
        await synced(first.status, db)
        assert second.status()["state"] == "waiting"
        await first.aclose()
        await t1
        items.steps(50)
        await synced(second.status, db)  # took over from the slot: no copy
        assert second.status()["copies"] == 0
        await windows.check(db)
    finally:
        await second.aclose()
        await t2
        await windows.aclose()
        db.close()


async def test_credentials_never_show(
    db_dsn: str, slot: str, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = Db(db_dsn)
    db.run(SCHEMA)
    db.run("CREATE ROLE secretive LOGIN REPLICATION PASSWORD 'hunter2-sekrit';"
           "GRANT SELECT ON item TO secretive")  # fmt: skip
    dsn = db_dsn.replace("postgres@", "secretive:hunter2-sekrit@")
    cfg = item_settings(dsn, slot)
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.model_dump())
    ing = Ingester(cfg, redis_url, redis_settings=quick_redis(), entities=[ITEM])
    caplog.set_level(logging.DEBUG)
    task = asyncio.create_task(ing.run())
    try:
        db.run("INSERT INTO item VALUES (1, 'acme', 'a', 1)")
        await synced(ing.status, db)
        assert "hunter2" not in str(ing.status())
        assert ing.status()["dsn"].startswith("postgresql://secretive:***@")
    finally:
        await ing.aclose()
        await task
        db.close()
    assert "hunter2" not in caplog.text


@pytest.mark.timeout(120)
async def test_on_redis_cluster(db_dsn: str, slot: str) -> None:
    db = Db(db_dsn)
    db.run(SCHEMA)
    items = Items(db, seed=10)
    items.fill(2000)
    rs = RedisSettings(redis_cluster=True, feed_block_ms=200, reconnect_min_s=0.02,
                       reconnect_max_s=0.2)  # fmt: skip
    with LocalRedisCluster(masters=3) as cluster:
        windows = Windows(cluster.url, rs)
        ing = Ingester(item_settings(db_dsn, slot, atomic_writes=50), cluster.url,
                       redis_settings=rs, entities=[ITEM])  # fmt: skip
        task = asyncio.create_task(ing.run())
        try:
            await windows.open()
            await synced(ing.status, db)
            items.steps(300)
            db.run("DELETE FROM item WHERE id % 5 = 0 AND id < 1000")
            await synced(ing.status, db)
            await windows.check(db)
            db.run("TRUNCATE item")
            items.live.clear()
            items.steps(50)
            await synced(ing.status, db)
            await windows.check(db)
        finally:
            await ing.aclose()
            await task
            await windows.aclose()
            db.close()
