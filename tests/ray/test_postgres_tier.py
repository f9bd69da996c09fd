"""A tier on Ray with a `postgres:` section: the controller starts the ingester actor,
in-cluster and external subscriptions follow random SQL exactly (the differential
workload of tests/postgres), a killed ingester actor (Ray restarts it) loses nothing and
applies nothing twice, the status shows it, and `tier.stop()` stops it.

The workload and the SQL oracle are tests/postgres' (`pg_workload`, `pg_helpers`,
`harness`); the private PostgreSQL is this module's own.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import ray
from ray_helpers import running_tier, status, tier_settings
from support import unique, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "postgres"))

from harness import ITEM, QUERIES, Items, check_versions
from pg_helpers import Db, sql_window
from pg_workload import ASSET, SCHEMA, SITE, TENANTS, Workload, rand_query, window_of

from raycluster import Subscription, Tier, connect
from raycluster.actors import ingester_name
from raycluster.cli import format_status
from raycluster.errors import NotReadyError
from raycluster.postgres.local import LocalPostgres
from raycluster.postgres.status import lsn_number
from raycluster.redis import RedisSettings, RedisStore, SourceStatus

pytestmark = pytest.mark.postgres  # (ray and redis: by folder)

ITEM_TABLE = """
CREATE TABLE item (id integer PRIMARY KEY, tenant text NOT NULL, name text, n integer);
ALTER PUBLICATION pub ADD TABLE item;
"""


@pytest.fixture(scope="module")
def pg_server() -> Iterator[LocalPostgres]:
    with LocalPostgres() as srv:
        yield srv


@pytest.fixture
def db(pg_server: LocalPostgres) -> Iterator[Db]:
    """A fresh database with the workload's tables and `item`, all in publication `pub`."""
    name = f"db_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(pg_server.dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    d = Db(pg_server.dsn(name))
    d.run(SCHEMA)
    d.run(ITEM_TABLE)
    try:
        yield d
    finally:
        d.close()
        with admin.cursor() as cur:  # (its slots first: a database with one cannot go)
            cur.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE database = %s AND active_pid IS NOT NULL", (name,),
            )  # fmt: skip
            time.sleep(0.5)
            cur.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE database = %s", (name,),
            )  # fmt: skip
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def pg_settings(dsn: str, slot: str, **kw: Any) -> dict[str, Any]:
    return {
        "dsn": dsn, "publication": "pub", "slot": slot, "feedback_interval_s": 0.05,
        "status_interval_s": 0.2, "slot_busy_retry_s": 0.2, "reconnect_max_s": 0.5,
        "tables": [
            {"table": "asset", "entity": "asset", "tenant_column": "tenant"},
            {"table": "site", "entity": "site", "tenant_column": "tenant"},
            {"table": "item", "entity": "item", "tenant_column": "tenant"},
        ], **kw,
    }  # fmt: skip


class Watched:
    """A subscription and where its window's truth comes from."""

    def __init__(self, tenant: str, sub: Subscription, how: str) -> None:
        self.tenant, self.sub, self.how = tenant, sub, how

    def truth(self, db: Db) -> list[str]:
        q = self.sub.query
        if q.entity == "item":
            return sql_window(db, "item", ITEM, "tenant", "id", self.tenant, q)
        table, spec, id_col = window_of(q)
        return sql_window(db, table, spec, "tenant", id_col, self.tenant, q)


async def synced(sources: SourceStatus, slot: str, db: Db, timeout_s: float = 60.0) -> None:
    """Wait until the slot's ingester published that it holds every commit so far."""
    want = db.lsn()

    async def done() -> bool:
        st = await sources.read(slot)
        if st is not None and st["state"] == "failed":
            pytest.fail(f"the ingester failed: {st['error']}")
        return st is not None and lsn_number(st["synced_lsn"]) >= want

    await wait_for(done, timeout_s, what=f"the ingester synced to {want:X}")


async def exact(db: Db, watched: list[Watched], timeout_s: float = 30.0) -> None:
    """Wait until every window equals Postgres' own answer (the last frames may be on
    their way)."""
    truths = {id(w): w.truth(db) for w in watched}

    def wrong() -> list[str]:
        return [
            f"{w.how} {w.tenant} {w.sub.query.model_dump(exclude_defaults=True)}: "
            f"{w.sub.rows.ids} != {truths[id(w)]}"
            for w in watched
            if w.sub.rows.ids != truths[id(w)]
        ]

    await wait_for(lambda: not wrong(), timeout_s, what=lambda: "\n".join(wrong()))


async def rows_equal_postgres(redis_url: str, rs: RedisSettings, db: Db) -> None:
    """Every asset row in Redis is the row in Postgres, and no other (nothing lost)."""
    store = RedisStore.from_url(redis_url, settings=rs, entities=[ASSET, SITE, ITEM])
    try:
        got = {}
        for t in TENANTS:
            for agg_id, (_, row) in (await store.rows(t, "asset")).items():
                got[(t, agg_id)] = row["kind"]
    finally:
        await store.aclose()
    want = {(t, i): k for i, t, k in db.rows("SELECT id::text, tenant, kind FROM asset")}
    assert got == want


@pytest.mark.timeout(300)
async def test_a_tier_follows_postgres_through_an_ingester_kill(
    ray_namespace: str, redis_server: Any, db: Db
) -> None:
    rng = random.Random(23)
    item_db = Db(db.dsn)  # (its own connection: the two write from threads at once)
    work, items = Workload(db, rng), Items(item_db, seed=29)
    work.round(150)
    items.fill(150)  # rows before the tier starts: the actor's initial copy
    slot = f"rt_{uuid.uuid4().hex[:8]}"
    settings = tier_settings(
        unique("pgtier"), ray_namespace, shards=2,
        entities=[ASSET.model_dump(), SITE.model_dump(), ITEM.model_dump()],
        postgres=pg_settings(db.dsn, slot),
    )  # fmt: skip
    rs = settings.redis
    reader = SourceStatus.from_url(redis_server.url, settings=rs)
    async with running_tier(settings, redis_server.url) as tier:
        handle = ray.get_actor(ingester_name(tier.name, slot), namespace=tier.namespace)
        external = await connect(tier.redis_url, settings)
        watched: list[Watched] = []
        try:
            await synced(reader, slot, db)
            st = await status(tier)
            assert st["postgres_slot"] == slot and st["ingester"] is not None
            assert st["ingester"]["state"] == "streaming", st["ingester"]
            assert f"ingester {slot}: streaming, confirmed " in format_status(st)
            assert "password" not in str(st["ingester"])

            # Windows through in-cluster gateways and through an external one.
            for i in range(10):
                tenant = rng.choice(TENANTS)
                q = rand_query(rng) if i < 8 else QUERIES[i % len(QUERIES)]
                via, how = (tier, "in-cluster") if i % 2 == 0 else (external, "external")
                watched.append(Watched(tenant, await via.subscribe(tenant, q), how))
            await exact(db, watched)

            for rnd in range(4):
                if rnd == 1:
                    work.truncate()
                writing = asyncio.create_task(asyncio.to_thread(work.round, 100))
                stepping = asyncio.create_task(asyncio.to_thread(items.steps, 80))
                if rnd == 2:
                    # Mid-write: Ray restarts it; the new one resumes from the slot.
                    pid = await handle.pid.remote()
                    await asyncio.sleep(0.3)
                    await asyncio.to_thread(ray.kill, handle, no_restart=False)
                    await wait_for(_restarted(handle, pid), 60,
                                   what="the ingester actor restarted")  # fmt: skip
                await writing
                await stepping
                await synced(reader, slot, db)
                await exact(db, watched)
            await check_versions(redis_server.url, rs, items)  # nothing twice, nothing lost
            await rows_equal_postgres(redis_server.url, rs, db)
            st = await status(tier)
            assert st["ingester"]["state"] == "streaming"
            assert st["ingester"]["truncates"] >= 0  # (a restarted one counts afresh)
        finally:
            for w in watched:
                await w.sub.close()
            await external.aclose()
    # tier.stop() stopped the ingester: no actor, and the slot is free (kept: a new start
    # resumes from it).
    with pytest.raises(ValueError):
        ray.get_actor(ingester_name(settings.name, slot), namespace=ray_namespace)
    released = "SELECT active FROM pg_replication_slots WHERE slot_name = %s"
    await wait_for(lambda: db.rows(released, [slot]) == [(False,)], 20, what="the slot released")
    await reader.aclose()
    item_db.close()


def _restarted(handle: Any, old_pid: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            return bool(await asyncio.wait_for(handle.pid.remote(), 5) != old_pid)
        except Exception:  # restarting
            return False

    return check


@pytest.mark.timeout(120)
async def test_a_config_the_database_refuses_fails_the_start_at_once(
    ray_namespace: str, redis_server: Any, db: Db
) -> None:
    slot = f"rt_{uuid.uuid4().hex[:8]}"
    bad = pg_settings(db.dsn, slot, tables=[{"table": "nope", "entity": "asset",
                                             "tenant_column": "tenant"}])  # fmt: skip
    settings = tier_settings(unique("pgbad"), ray_namespace, shards=1, start_timeout_s=90,
                             entities=[ASSET.model_dump()], postgres=bad)  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(NotReadyError) as e:
        await asyncio.to_thread(Tier.start, settings, redis_url=redis_server.url)
    assert time.monotonic() - t0 < 60  # not the 90 s timeout
    assert "ingester" in e.value.failed
    assert "postgres.tables.0.table: table public.nope does not exist" in str(e.value)
    assert "password" not in str(e.value)
    with pytest.raises(ValueError):  # what the start made is stopped
        ray.get_actor(ingester_name(settings.name, slot), namespace=ray_namespace)
