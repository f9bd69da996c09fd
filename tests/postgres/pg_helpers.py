"""Helpers of the Postgres tier: SQL access, the SQL oracle of a window, subscribers,
waiting for the ingester, an ingester in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg2
from support import wait_for

from raycluster.livequery import Cond, DeltaOp, EngineSubscription, EntitySpec, LiveDelta, LiveQuery
from raycluster.postgres.ingester import Ingester
from raycluster.postgres.pgoutput import parse_lsn
from raycluster.postgres.settings import PostgresSettings
from raycluster.redis import RedisSettings

HERE = Path(__file__).parent


class Db:
    """One autocommit connection to a test's database."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn = psycopg2.connect(dsn, options="-c TimeZone=UTC -c extra_float_digits=3")
        self.conn.autocommit = True

    def close(self) -> None:
        self.conn.close()

    def run(self, sql: str, params: Sequence[Any] | None = None) -> None:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)

    def rows(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def tx(self, statements: Sequence[tuple[str, Sequence[Any] | None]]) -> None:
        """Run `statements` in one transaction."""
        with self.conn.cursor() as cur:
            cur.execute("BEGIN")
            try:
                for sql, params in statements:
                    cur.execute(sql, params)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def lsn(self) -> int:
        """The server's WAL position now (after every commit so far)."""
        return parse_lsn(self.rows("SELECT pg_current_wal_lsn()::text")[0][0])


async def synced(status: Callable[[], dict[str, Any]], db: Db, timeout_s: float = 60.0) -> None:
    """Wait until the ingester holds every transaction committed so far."""
    lsn = db.lsn()

    def done() -> bool:
        s = status()
        if s.get("state") == "failed":
            raise AssertionError(f"ingester failed: {s.get('error')}")
        return parse_lsn(s.get("synced_lsn", "0/0")) >= lsn

    await wait_for(done, timeout_s, what=f"ingester synced to {lsn:X}")


class Client:
    """A maintained-mode subscriber's list, rebuilt only from its snapshot and frames."""

    def __init__(self, tenant: str, sub: EngineSubscription) -> None:
        self.tenant = tenant
        self.sub = sub
        self.items: list[tuple[str, int, dict[str, Any]]] = [
            (r.agg_id, r.version, r.vals) for r in sub.snapshot
        ]

    def catch_up(self) -> None:
        apply_frames(self.items, self.sub.drain())


def apply_frames(lst: list[tuple[str, int, dict[str, Any]]], frames: Sequence[LiveDelta]) -> None:
    for f in frames:
        if f.op == DeltaOp.RESET:
            lst.clear()
        elif f.op == DeltaOp.ENTER:
            assert f.new_index is not None and f.agg_id is not None and f.row is not None
            lst.insert(f.new_index, (f.agg_id, f.version, f.row))
        elif f.op == DeltaOp.LEAVE:
            assert f.old_index is not None and lst[f.old_index][0] == f.agg_id
            del lst[f.old_index]
        elif f.op == DeltaOp.MOVE:
            assert f.old_index is not None and f.new_index is not None
            old = lst.pop(f.old_index)
            assert old[0] == f.agg_id
            lst.insert(f.new_index, (old[0], f.version, f.row if f.row is not None else old[2]))
        elif f.op == DeltaOp.UPDATE:
            assert f.new_index is not None and f.row is not None
            assert lst[f.new_index][0] == f.agg_id
            lst[f.new_index] = (f.agg_id or "", f.version, f.row)
        else:
            raise AssertionError(f"unexpected frame {f}")


# -- the SQL oracle: the window as Postgres computes it ----------------------------------

_OPS = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


# Columns whose Postgres type is text (others, e.g. timestamptz carried as text, sort
# in their own type's order, which the tier's text form must reproduce).
TEXT_COLUMNS = {"name", "kind", "notes", "label", "code"}


def _col(spec: EntitySpec, name: str) -> str:
    q = f'"{name}"'
    return f'{q} COLLATE "C"' if name in TEXT_COLUMNS else q


def cond_sql(c: Cond, spec: EntitySpec, params: list[Any]) -> str:
    """A condition as SQL (strings compared by code point)."""
    if c.op in ("or", "and"):
        glue = " OR " if c.op == "or" else " AND "
        return "(" + glue.join(cond_sql(a, spec, params) for a in c.args or ()) + ")"
    col = _col(spec, c.column or "")
    if c.op == "is_null":
        return f"{col} IS NULL"
    if c.op == "is_not_null":
        return f"{col} IS NOT NULL"
    if c.op in ("in", "not_in"):
        params.append(list(c.values or ()))
        return f"{col} {'=' if c.op == 'in' else '<>'} {'ANY' if c.op == 'in' else 'ALL'}(%s)"
    params.append(c.value)
    if c.op == "like":
        return f"{col} LIKE %s"
    if c.op == "ilike":
        return f"{col} ILIKE %s"
    return f"{col} {_OPS[c.op]} %s"


def sql_window(
    db: Db, table: str, spec: EntitySpec, tenant_column: str, id_column: str,
    tenant: str, q: LiveQuery,
) -> list[str]:  # fmt: skip
    """The ids of `q`'s window for `tenant`, by Postgres: WHERE … ORDER BY … COLLATE "C"
    (the id's text breaks ties), LIMIT n."""
    params: list[Any] = [tenant]
    where = [f'"{tenant_column}"::text = %s']
    where += [cond_sql(c, spec, params) for c in q.where]
    order = [
        f"{_col(spec, k.column)} {'DESC NULLS FIRST' if k.desc else 'ASC NULLS LAST'}"
        for k in q.sort
    ]
    order.append(f'"{id_column}"::text COLLATE "C"')
    sql = (
        f'SELECT "{id_column}"::text FROM {table} WHERE {" AND ".join(where)} '
        f"ORDER BY {', '.join(order)} LIMIT {q.limit}"
    )
    return [r[0] for r in db.rows(sql, params)]


# -- an ingester in its own process (SIGKILL tests) --------------------------------------


class ProcIngester:
    """`ingest_proc.py` in a subprocess; `status()` reads the file it keeps."""

    def __init__(
        self,
        tmp: Path,
        settings: PostgresSettings,
        redis_url: str,
        redis_settings: RedisSettings,
        entities: Sequence[EntitySpec] = (),
    ) -> None:
        self.status_file = tmp / f"status-{time.monotonic_ns()}.json"
        self.config = tmp / f"config-{time.monotonic_ns()}.json"
        pg = settings.model_dump(mode="json")
        pg["dsn"] = settings.dsn.get_secret_value()
        self.config.write_text(
            json.dumps(
                {
                    "postgres": pg,
                    "redis_url": redis_url,
                    "redis": redis_settings.model_dump(mode="json"),
                    "entities": [e.model_dump(mode="json") for e in entities],
                    "status_file": str(self.status_file),
                }
            )
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.log = tmp / "ingest_proc.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "ingest_proc.py"), str(self.config)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def status(self) -> dict[str, Any]:
        if self.proc.poll() not in (None, 0):
            tail = self.log.read_text(errors="replace")[-2000:]
            raise AssertionError(f"ingester process exited with {self.proc.returncode}: {tail}")
        try:
            return dict(json.loads(self.status_file.read_text()))
        except (OSError, ValueError):
            return {}

    def kill(self) -> None:
        """SIGKILL, as a crash: no cleanup runs."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


async def run_ingester(ing: Ingester) -> asyncio.Task[None]:
    """Run `ing` in a task of this loop."""
    return asyncio.create_task(ing.run(), name="ingester")
