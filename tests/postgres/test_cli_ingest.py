"""`raycluster ingest` (the ingester in its own process) and `raycluster ingest --drop-slot`:
it follows Postgres into Redis, a second one on the slot waits, SIGTERM stops it with exit
0, the slot can be dropped only once no ingester holds it, errors are one line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import yaml
from harness import ITEM, SCHEMA, Items
from pg_helpers import Db
from support import wait_until

from raycluster.postgres.status import lsn_number
from raycluster.redis import RedisSettings, RedisStore

PREFIX = "lqi"


def env() -> dict[str, str]:
    """Ours minus every RAYCLUSTER_* variable (the config file is the one source)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAYCLUSTER_")}


def write_config(tmp: Path, redis_url: str, postgres: dict[str, Any] | None) -> Path:
    cfg: dict[str, Any] = {
        "redis": {"redis_url": redis_url, "key_prefix": PREFIX},
        "entities": [ITEM.model_dump()],
    }
    if postgres is not None:
        cfg["postgres"] = postgres
    path = tmp / f"tier-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def source(dsn: str, slot: str, **kw: Any) -> dict[str, Any]:
    return {
        "dsn": dsn, "publication": "pub", "slot": slot, "status_interval_s": 0.2,
        "feedback_interval_s": 0.1, "slot_busy_retry_s": 0.2,
        "tables": [{"table": "item", "entity": "item", "tenant_column": "tenant"}], **kw,
    }  # fmt: skip


def cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raycluster.cli", *args],
        env=env(), capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip


def start(*args: str, log: Path) -> subprocess.Popen[str]:
    with log.open("w") as err:  # (the child keeps its own copy)
        return subprocess.Popen(
            [sys.executable, "-m", "raycluster.cli", *args],
            env=env(), stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip


def published(r: redis.Redis, slot: str) -> dict[str, Any] | None:
    raw = r.get(RedisSettings(key_prefix=PREFIX).keys.source_status(slot))
    return json.loads(raw) if raw else None


def in_sync(r: redis.Redis, slot: str, db: Db) -> Callable[[], bool]:
    want = db.lsn()

    def done() -> bool:
        st = published(r, slot)
        return st is not None and lsn_number(st["synced_lsn"]) >= want

    return done


def redis_rows(redis_url: str) -> dict[tuple[str, str], dict[str, Any]]:
    async def read() -> dict[tuple[str, str], dict[str, Any]]:
        store = RedisStore.from_url(redis_url, settings=RedisSettings(key_prefix=PREFIX),
                                    entities=[ITEM])  # fmt: skip
        try:
            out = {}
            for tenant in ("acme", "rival", "umbrella"):
                for agg_id, (_, row) in (await store.rows(tenant, "item")).items():
                    out[(tenant, agg_id)] = row
            return out
        finally:
            await store.aclose()

    return asyncio.run(read())


def pg_rows(db: Db) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (tenant, agg_id): {"name": name, "n": n}
        for agg_id, tenant, name, n in db.rows("SELECT id::text, tenant, name, n FROM item")
    }


def test_ingest_follows_postgres_until_sigterm_and_the_slot_drops_after(
    db_dsn: str, slot: str, redis_url: str, tmp_path: Path
) -> None:
    db = Db(db_dsn)
    db.run(SCHEMA)
    items = Items(db, seed=5)
    items.fill(200)
    config = write_config(tmp_path, redis_url, source(db_dsn, slot))
    r = redis.Redis.from_url(redis_url)
    first = start("ingest", "--config", str(config), "--status-every", "0.5",
                  log=tmp_path / "first.log")  # fmt: skip
    second: subprocess.Popen[str] | None = None
    try:
        wait_until(in_sync(r, slot, db), 60, what="the copy")
        items.steps(150)
        wait_until(in_sync(r, slot, db), 60, what="the stream")
        assert redis_rows(redis_url) == pg_rows(db)

        # A second ingester on the slot waits (and does not disturb the first).
        second = start("ingest", "--config", str(config), "--seconds", "3",
                       "--status-every", "0.5", log=tmp_path / "second.log")  # fmt: skip
        busy = cli("ingest", "--config", str(config), "--drop-slot")
        assert busy.returncode == 1, busy
        (line,) = busy.stderr.strip().splitlines()
        assert line.startswith("raycluster: error: ") and "in use by process" in line, line
        items.steps(100)
        out2, _ = second.communicate(timeout=30)
        assert second.returncode == 0, (tmp_path / "second.log").read_text()
        assert "waiting" in out2 and "streaming" not in out2, out2
        wait_until(in_sync(r, slot, db), 60, what="the stream, with a second ingester waiting")
        assert redis_rows(redis_url) == pg_rows(db)
        assert published(r, slot)["state"] == "streaming"  # type: ignore[index]
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=30)
    assert first.returncode == 0, (tmp_path / "first.log").read_text()
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"ingesting publication pub through slot {slot}: ")
    assert f"ingester {slot}: streaming, confirmed " in out
    assert lines[-1].startswith(f"ingester {slot}: stopped, confirmed ")
    assert "rows/s" in lines[-1]

    dropped = cli("ingest", "--config", str(config), "--drop-slot")
    assert dropped.returncode == 0, dropped
    assert dropped.stdout.startswith(f"dropped slot {slot}")
    assert not db.rows("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot])
    again = cli("ingest", "--config", str(config), "--drop-slot")
    assert again.returncode == 0 and "nothing to drop" in again.stdout, again


def test_ingest_errors_are_one_line(db_dsn: str, slot: str, redis_url: str, tmp_path: Path) -> None:
    db = Db(db_dsn)
    db.run(SCHEMA)
    cases = [
        # (config's postgres section, extra arguments, exit, words of the one line)
        (None, [], 2, "has no postgres: section"),
        (source(db_dsn, slot, tables=[{"table": "nope", "entity": "item",
                                       "tenant_column": "tenant"}]),
         ["--seconds", "20"], 2,
         "config: postgres.tables.0.table: table public.nope does not exist"),
        (source(db_dsn, slot, publication="nope"), ["--seconds", "20"], 2,
         "postgres.publication: publication 'nope' does not exist"),
        (source(db_dsn, slot, batch_changes=0), [], 2, "postgres.batch_changes"),
        (source(db_dsn, slot), ["--seconds", "-1"], 2, "--seconds: must be 0 or more"),
    ]  # fmt: skip
    for pg, extra, code, words in cases:
        config = write_config(tmp_path, redis_url, pg)
        res = cli("ingest", "--config", str(config), *extra)
        assert res.returncode == code, (pg, res)
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        (line,) = res.stderr.strip().splitlines()
        assert line.startswith("raycluster: error: ") and words in line, line
        assert "password" not in line
    assert not db.rows("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot])
