"""Faults, each followed by the exactness check (every window equals Postgres) and the
version check (every row written once per change: nothing lost, nothing twice)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg2
import pytest
from harness import (
    ITEM,
    SCHEMA,
    Items,
    Windows,
    check_versions,
    item_settings,
    live_count,
    quick_redis,
)
from pg_helpers import Db, ProcIngester, synced
from support import free_port, private_redis, wait_for

from raycluster.postgres.ingester import Ingester, drop_slot
from raycluster.postgres.local import LocalPostgres


async def stop(ing: Ingester, task: asyncio.Task[None]) -> None:
    await ing.aclose()
    await task


@pytest.mark.timeout(120)
async def test_sigkill_during_the_initial_copy(
    db_dsn: str, slot: str, redis_url: str, tmp_path: Path
) -> None:
    db = Db(db_dsn)
    db.run(SCHEMA)
    items = Items(db, seed=1)
    items.fill(40_000)
    rs = quick_redis()
    slow = item_settings(db_dsn, slot, copy_rows=200, atomic_writes=50)
    proc = ProcIngester(tmp_path, slow, redis_url, rs, [ITEM])
    try:
        await wait_for(
            lambda: proc.status().get("copied_rows", 0) >= 2000, 60, what="copy under way"
        )
        proc.kill()
    finally:
        proc.stop()
    copied = await live_count(redis_url, rs)
    assert 0 < copied < 40_000
    items.steps(300)  # changes while no ingester runs (and the slot holds no copy)
    windows = Windows(redis_url, rs)
    ing = Ingester(item_settings(db_dsn, slot), redis_url, redis_settings=rs, entities=[ITEM])
    task = asyncio.create_task(ing.run())
    try:
        await windows.open()
        await synced(ing.status, db)
        st = ing.status()
        assert st["generation"] == 2 and st["copies"] == 1  # a new slot, a new copy
        await windows.check(db)
        # The first copy's rows were found as they are (none written twice); a row
        # changed since was written once more.
        await check_versions(redis_url, rs, _copied_once(items), changed=items.touched)
        items.steps(200)
        await synced(ing.status, db)
        await windows.check(db)
    finally:
        await stop(ing, task)
        await windows.aclose()
        db.close()


def _copied_once(items: Items) -> Items:
    """Expected versions after a copy: 1 for every live row (a copy sees the last state)."""
    out = Items(items.db, seed=0)
    out.versions = {(t, i): 1 for i, t in items.live.items()}
    return out


@pytest.mark.timeout(120)
async def test_sigkill_during_a_large_transaction(
    db_dsn: str, slot: str, redis_url: str, tmp_path: Path
) -> None:
    db = Db(db_dsn)
    db.run(SCHEMA)
    items = Items(db, seed=2)
    items.fill(100)
    rs = quick_redis()
    cfg = item_settings(db_dsn, slot, batch_changes=300, atomic_writes=40)
    proc = ProcIngester(tmp_path, cfg, redis_url, rs, [ITEM])
    windows = Windows(redis_url, rs)
    ing: Ingester | None = None
    task: asyncio.Task[None] | None = None
    try:
        await synced(proc.status, db)
        items.fill(60_000)  # one transaction
        await wait_for(lambda: proc.status().get("applied", 0) >= 3000, 60, what="half applied")
        proc.kill()
        before = await live_count(redis_url, rs)
        assert 100 < before < 60_100, before  # killed part-way through the transaction
        ing = Ingester(cfg, redis_url, redis_settings=rs, entities=[ITEM])
        task = asyncio.create_task(ing.run())
        await windows.open()
        await synced(ing.status, db)
        st = ing.status()
        assert st["copies"] == 0  # resumed from the slot
        # Exactly the rows applied before the kill were skipped, the rest applied once.
        assert st["skipped"] == before - 100 and st["applied"] == 60_100 - before
        await windows.check(db)
        await check_versions(redis_url, rs, items)
    finally:
        proc.stop()
        if ing is not None and task is not None:
            await stop(ing, task)
        await windows.aclose()
        db.close()


@pytest.mark.timeout(120)
async def test_postgres_crash_and_restart(
    pg_server: LocalPostgres, db_dsn: str, slot: str, redis_url: str
) -> None:
    db = Db(db_dsn)
    db.run(SCHEMA)
    items = Items(db, seed=3)
    items.fill(500)
    rs = quick_redis()
    windows = Windows(redis_url, rs)
    ing = Ingester(item_settings(db_dsn, slot), redis_url, redis_settings=rs, entities=[ITEM])
    task = asyncio.create_task(ing.run())
    try:
        await windows.open()
        await synced(ing.status, db)  # copied: the steps below are streamed
        items.steps(200)
        await synced(ing.status, db)
        db.close()
        await asyncio.to_thread(pg_server.kill)  # a crash: recovery on the next start
        try:
            await wait_for(
                lambda: ing.status()["state"] == "reconnecting", 30, what="connection lost"
            )
        finally:
            await asyncio.to_thread(pg_server.start)
        db = Db(db_dsn)
        items.db = db
        items.steps(200)
        await synced(ing.status, db)
        assert ing.status()["reconnects"] >= 1
        await windows.check(db)
        await check_versions(redis_url, rs, items)
    finally:
        await stop(ing, task)
        await windows.aclose()
        db.close()


@pytest.mark.timeout(120)
async def test_redis_restart(db_dsn: str, slot: str, tmp_path: Path) -> None:
    db = Db(db_dsn)
    db.run(SCHEMA)
    items = Items(db, seed=4)
    items.fill(500)
    rs = quick_redis()
    port = free_port()  # the same port after the restart: clients reconnect to it
    redis_dir = tmp_path / "redis"
    options = {"port": port, "data_dir": redis_dir, "appendonly": True, "appendfsync": "always"}
    with private_redis(**options) as srv:
        url = srv.url
        windows = Windows(url, rs)
        ing = Ingester(item_settings(db_dsn, slot), url, redis_settings=rs, entities=[ITEM])
        task = asyncio.create_task(ing.run())
        try:
            await windows.open()
            await synced(ing.status, db)  # copied: the steps below are streamed
            items.steps(100)
            await synced(ing.status, db)
            await asyncio.to_thread(srv.stop)
            items.steps(100)  # committed while Redis is away
            await wait_for(lambda: ing.status()["state"] == "reconnecting", 30, what="Redis lost")
            await asyncio.to_thread(srv.start)
            items.steps(100)
            await synced(ing.status, db)
            await windows.check(db)
            await check_versions(url, rs, items)
        finally:
            await stop(ing, task)
            await windows.aclose()
            db.close()


@pytest.mark.timeout(120)
async def test_dropped_slot_copies_again_and_repairs_every_window(
    db_dsn: str, slot: str, redis_url: str
) -> None:
    db = Db(db_dsn)
    db.run(SCHEMA)
    # Least privilege: a role with REPLICATION and SELECT on the published table.
    db.run("CREATE ROLE ingest LOGIN REPLICATION; GRANT SELECT ON item TO ingest")
    dsn = db_dsn.replace("postgres@", "ingest@")
    items = Items(db, seed=5)
    items.fill(1000)
    rs = quick_redis()
    cfg = item_settings(dsn, slot)
    windows = Windows(redis_url, rs)
    ing = Ingester(cfg, redis_url, redis_settings=rs, entities=[ITEM])
    task = asyncio.create_task(ing.run())
    try:
        await windows.open()
        items.steps(100)
        await synced(ing.status, db)
        await stop(ing, task)
        assert await asyncio.to_thread(drop_slot, cfg) is True
        assert await asyncio.to_thread(drop_slot, cfg) is False
        # Changes the slot never sees: deletes, updates, inserts.
        db.run("DELETE FROM item WHERE id % 7 = 0")
        db.run("UPDATE item SET n = n + 5000 WHERE id % 11 = 0")
        items.steps(100)
        ing = Ingester(cfg, redis_url, redis_settings=rs, entities=[ITEM])
        task = asyncio.create_task(ing.run())
        await synced(ing.status, db)
        assert ing.status()["generation"] == 2
        await windows.check(db)  # the same subscriptions, repaired by the copy's events
        assert await live_count(redis_url, rs) == db.rows("SELECT count(*) FROM item")[0][0]
    finally:
        await stop(ing, task)
        await windows.aclose()
        db.close()


@pytest.mark.timeout(120)
async def test_invalidated_slot_copies_again(redis_url: str, tmp_path: Path) -> None:
    keep = {"max_slot_wal_keep_size": "2MB", "checkpoint_timeout": "1h"}
    with LocalPostgres(settings=keep, wal_segment_mb=1) as pg:
        admin = psycopg2.connect(pg.dsn())
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("CREATE DATABASE inv")
        admin.close()
        dsn = pg.dsn("inv")
        db = Db(dsn)
        db.run(SCHEMA + "; CREATE TABLE filler (x text)")
        items = Items(db, seed=6)
        items.fill(300)
        rs = quick_redis()
        cfg = item_settings(dsn, "inv_slot")
        windows = Windows(redis_url, rs)
        ing = Ingester(cfg, redis_url, redis_settings=rs, entities=[ITEM])
        task = asyncio.create_task(ing.run())
        try:
            await windows.open()
            await synced(ing.status, db)
            await stop(ing, task)
            items.steps(100)
            # WAL well past max_slot_wal_keep_size, then a checkpoint: the slot is lost.
            db.run("INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 8000)")
            db.run("CHECKPOINT")
            assert db.rows("SELECT wal_status FROM pg_replication_slots")[0][0] == "lost"
            ing = Ingester(cfg, redis_url, redis_settings=rs, entities=[ITEM])
            task = asyncio.create_task(ing.run())
            await synced(ing.status, db)
            assert ing.status()["generation"] == 2
            await windows.check(db)
        finally:
            await stop(ing, task)
            await windows.aclose()
            db.close()
