"""The jobs behind `raycluster demo` / `jobs/demo.py` and `raycluster serve` / `jobs/serve.py`.

Both need Ray, imported when a job runs (building their argument parsers does not).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raycluster._connect import connect
from raycluster._resources import on_lasting_thread
from raycluster._urls import mask_url
from raycluster.cluster import owner, partition_of
from raycluster.config import TierSettings
from raycluster.livequery import (
    LiveQuery,
    SortKey,
    compile_predicate,
    cursor_key,
    eq,
    gt,
    sort_key_of,
)

if TYPE_CHECKING:
    from raycluster.actors import Tier
    from raycluster.client import Subscription
    from raycluster.redis import Writer

__all__ = (
    "DEFAULT_CONFIG",
    "add_demo_args",
    "add_serve_args",
    "demo",
    "serve",
    "top_n",
)

# The repo's config, when the package runs from a checkout (jobs/, `pip install -e`).
_REPO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tier.yaml"
DEFAULT_CONFIG: str | None = str(_REPO_CONFIG) if _REPO_CONFIG.exists() else None

KINDS, SITES = ["pump", "valve", "fan"], ["north", "south", "east"]

PROGRESS_EVERY_S = 5.0  # serve prints a pending start's progress this often

log = logging.getLogger("raycluster.serve")


def top_n(rows: dict[str, dict[str, Any]], query: LiveQuery) -> list[str]:
    """Ids of the first `query.limit` rows matching `query`, strictly after its cursor.

    Brute-force truth for the demo: computed from scratch from every row written.
    """
    pred = compile_predicate(query.where)
    floor = cursor_key(query.cursor, query.sort) if query.cursor is not None else ()
    keyed = sorted(
        (sort_key_of(r, query.sort, agg_id), agg_id) for agg_id, r in rows.items() if pred(r)
    )
    return [agg_id for k, agg_id in keyed if k > floor][: query.limit]


# -- the main job ------------------------------------------------------------------


def add_demo_args(ap: argparse.ArgumentParser) -> None:
    """The demo's options (shared by `jobs/demo.py` and `raycluster demo`)."""
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="tier config (YAML)")
    ap.add_argument("--seconds", type=float, default=12.0, help="how long to write")
    ap.add_argument("--rate", type=float, default=200.0, help="writes per second")
    ap.add_argument("--seed", type=int, default=7, help="seed of the random rows")
    ap.add_argument(
        "--redis-cluster",
        action="store_true",
        help="run on a private local Redis Cluster (3 masters) instead of one Redis",
    )
    ap.add_argument(
        "--postgres",
        action="store_true",
        help="keep the rows in a private PostgreSQL (started beside the private Redis), "
        "written with plain SQL; the tier follows it through logical replication",
    )


def _random_asset(rnd: random.Random) -> dict[str, Any]:
    return {
        "name": f"asset-{rnd.randrange(1000):03}",
        "kind": rnd.choice(KINDS),
        "site": rnd.choice(SITES),
        "temp": rnd.randrange(100),
        "owner": f"u{rnd.randrange(5)}",
    }


def _show(label: str, ids: list[str]) -> None:
    print(f"  {label:<24} {' '.join(ids)}", flush=True)


def demo(args: argparse.Namespace, settings: TierSettings | None = None) -> int:
    """Run the main job (see `jobs/demo.py`); 0 when every window was exact at the end.

    `settings` (with three shards): what `--config` and the environment say,
    loaded here when not given.
    """
    return asyncio.run(_demo(args, settings or TierSettings.load(args.config, shards=3)))


async def _demo(args: argparse.Namespace, settings: TierSettings) -> int:
    async with contextlib.AsyncExitStack() as stack:
        if getattr(args, "redis_cluster", False):
            from raycluster.redis import LocalRedisCluster

            cluster = stack.enter_context(LocalRedisCluster(masters=3))
            url = await asyncio.to_thread(cluster.start)
            print(f"local Redis Cluster: {len(cluster.urls)} masters, seed {mask_url(url)}",
                  flush=True)  # fmt: skip
            redis = {**settings.redis.model_dump(), "redis_url": url, "redis_cluster": True}
            settings = TierSettings.model_validate({**settings.model_dump(), "redis": redis})
        if not getattr(args, "postgres", False):
            return await _Demo(settings, args).run()
        from raycluster.postgres import local_postgres

        server = await stack.enter_async_context(local_postgres())
        db = await asyncio.to_thread(_DemoDb.create, server.dsn())
        stack.callback(db.close)
        print(f"local PostgreSQL on port {server.port}: table {PG_TABLE}, publication "
              f"{PG_PUBLICATION}", flush=True)  # fmt: skip
        settings = TierSettings.model_validate({**settings.model_dump(), "postgres": db.source()})
        return await _PostgresDemo(settings, args, db).run()


DEMO_QUERIES = {
    "hot pumps (in-cluster)": LiveQuery(
        entity="asset", where=[eq("kind", "pump"), gt("temp", 50)],
        sort=[SortKey(column="temp", desc=True)], limit=5),
    "north by name (in-cluster)": LiveQuery(
        entity="asset", where=[eq("site", "north")], sort=[SortKey(column="name")], limit=5),
    "u1's assets (external)": LiveQuery(
        entity="asset", where=[eq("owner", "u1")], sort=[SortKey(column="name")], limit=5),
}  # fmt: skip
SETTLE_S = 10.0  # after the last write: how long the windows get to catch up
LIVE_WAIT_S = 30.0  # after the start: how long every shard gets to join the live set


def _start_tier(settings: TierSettings) -> Tier:
    """Ray (logical CPUs: three shards and the gateways fit on any laptop) and the tier.

    Blocking: run it off the event loop.
    """
    import ray

    from raycluster.actors import Tier

    if not ray.is_initialized():
        cpus = max(4, os.cpu_count() or 1)
        on_lasting_thread(lambda: ray.init(num_cpus=cpus, namespace=settings.namespace))
    return Tier.start(settings)


def _owner_of(tier: Tier, p: int) -> str:
    """The shard that serves partition `p` now (by the shards' own status; blocking)."""
    st = tier.status()
    for sid, shard in st["shards"].items():
        if "error" not in shard and p in shard["partitions"]:
            return sid
    return owner(p, st["live_shards"])


def _kill_shard(settings: TierSettings, shard_id: str) -> None:
    """Kill a shard actor (Ray restarts it); blocking: run it off the event loop."""
    import ray

    from raycluster.actors import shard_name

    ray.kill(ray.get_actor(shard_name(settings.name, shard_id), namespace=settings.namespace))


class _Demo:
    """The main job's state: the truth written so far and the windows that follow it."""

    def __init__(self, settings: TierSettings, args: argparse.Namespace) -> None:
        self.settings = settings
        self.args = args
        self.rnd = random.Random(args.seed)
        self.truth: dict[str, dict[str, Any]] = {}
        self.subs: dict[str, Subscription] = {}
        self.written = 0

    async def run(self) -> int:
        t0 = time.monotonic()
        tier = await asyncio.to_thread(_start_tier, self.settings)
        status = await asyncio.to_thread(tier.status)
        deadline = time.monotonic() + LIVE_WAIT_S  # shards heartbeat a moment after start
        while len(status["live_shards"]) < self.settings.shards and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            status = await asyncio.to_thread(tier.status)
        print(f"tier up in {time.monotonic() - t0:.1f}s: {len(status['live_shards'])} shards,"
              f" redis {mask_url(tier.redis_url)}", flush=True)  # fmt: skip
        writer = tier.writer()
        remote = await connect(tier.redis_url, self.settings)
        try:
            self.truth = {f"a{i:03}": _random_asset(self.rnd) for i in range(300)}
            await writer.upsert_many("acme", "asset", self.truth)
            await self._open_windows(tier, remote, "initial windows:")
            failover_s = await self._write_and_fail_over(writer, tier)
            truth = {label: top_n(self.truth, q) for label, q in DEMO_QUERIES.items()}
            status = await asyncio.to_thread(tier.status)
            failover = "not seen" if failover_s is None else f"{failover_s:.2f}s"
            exact = await self._finish(
                truth,
                ("final windows:", "truth"),
                (f"{self.written} writes", f"failover {failover}",
                 f"live shards {status['live_shards']}"),
            )  # fmt: skip
        finally:
            await remote.aclose()
            await writer.aclose()
            await tier.aclose()
        return 0 if exact else 1

    async def _open_windows(self, tier: Tier, remote: Any, title: str) -> None:
        """Subscribe every demo query (through `remote` the external ones); show them."""
        for label, q in DEMO_QUERIES.items():
            via = remote if "external" in label else tier
            self.subs[label] = await via.subscribe("acme", q)
        print(title)
        for label, sub in self.subs.items():
            _show(label, sub.rows.ids)

    def _show_changed(self, last: dict[str, list[str]]) -> None:
        """Show each window that changed since `last` (updated in place)."""
        for label, sub in self.subs.items():
            if sub.rows.ids != last[label]:
                last[label] = sub.rows.ids
                _show(label, sub.rows.ids)

    async def _finish(
        self, truth: dict[str, list[str]], titles: tuple[str, str], summary: tuple[str, ...]
    ) -> bool:
        """Wait (bounded) for every window to settle on `truth`; show them (`titles`: the
        windows', the truth's), a summary line, and close them. Whether they were exact."""
        deadline = time.monotonic() + SETTLE_S
        while not (exact := all(s.rows.ids == truth[k] for k, s in self.subs.items())):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        print(titles[0])
        for label, sub in self.subs.items():
            _show(label, sub.rows.ids)
            if sub.rows.ids != truth[label]:
                _show(f"  {titles[1]}", truth[label])
        held = sum(len(s.rows) for s in self.subs.values())
        print(f"summary: {summary[0]}, {held} rows held, {', '.join(summary[1:])}, exact: {exact}")
        for sub in self.subs.values():
            await sub.close()
        return exact

    async def _write_and_fail_over(self, writer: Writer, tier: Tier) -> float | None:
        """Write at `--rate` for `--seconds`, killing the shard that owns the windows a third
        of the way in; the seconds until every window was reset by the new owner."""
        p = partition_of("acme", "asset")
        victim = ""
        epochs = {label: sub.epoch for label, sub in self.subs.items()}
        last = {label: sub.rows.ids for label, sub in self.subs.items()}
        killed_at: float | None = None
        failover_s: float | None = None
        start = time.monotonic()
        while time.monotonic() - start < self.args.seconds:
            await self._write_one(writer)
            if killed_at is None and time.monotonic() - start > self.args.seconds / 3:
                # The owner now, as the shards report it (the live set may have grown
                # since the start), and the windows' epochs now.
                victim = await asyncio.to_thread(_owner_of, tier, p)
                epochs = {label: sub.epoch for label, sub in self.subs.items()}
                print(f"--- killing {victim}, owner of partition {p} (acme/asset) ---", flush=True)
                await asyncio.to_thread(_kill_shard, self.settings, victim)
                killed_at = time.monotonic()
            subs = self.subs.values()
            if (
                killed_at
                and failover_s is None
                and all(s.epoch > epochs[k] for k, s in self.subs.items())
            ):
                failover_s = time.monotonic() - killed_at
                print(f"--- failover: every window reset (epoch {max(s.epoch for s in subs)}) "
                      f"after {failover_s:.2f}s ---", flush=True)  # fmt: skip
            self._show_changed(last)
            await asyncio.sleep(1 / self.args.rate)
        return failover_s

    async def _write_one(self, writer: Writer) -> None:
        agg_id = f"a{self.rnd.randrange(320):03}"
        if self.rnd.random() < 0.1:
            await writer.delete("acme", "asset", agg_id)
            self.truth.pop(agg_id, None)
        else:
            row = _random_asset(self.rnd)
            await writer.upsert("acme", "asset", agg_id, row)
            self.truth[agg_id] = row
        self.written += 1


# -- the main job over Postgres ---------------------------------------------------

PG_TABLE = "asset"
PG_PUBLICATION = "raycluster_demo"
PG_SLOT = "raycluster_demo"
PG_TEXT_COLUMNS = ("name", "kind", "site", "owner")
_PG_SCHEMA = f"""
CREATE TABLE {PG_TABLE} (
    tenant text NOT NULL, id text NOT NULL, name text, kind text, site text,
    temp integer, owner text, PRIMARY KEY (tenant, id));
CREATE PUBLICATION {PG_PUBLICATION} FOR TABLE {PG_TABLE};
"""


class _DemoDb:
    """The demo's database on the private server: one table, its publication, and a
    connection that writes to it with plain SQL (blocking: call it from a thread)."""

    def __init__(self, dsn: str, conn: Any) -> None:
        self.dsn = dsn
        self.conn = conn

    @classmethod
    def create(cls, admin_dsn: str) -> _DemoDb:
        import psycopg2

        admin = psycopg2.connect(admin_dsn)
        try:
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute("CREATE DATABASE raycluster_demo")
        finally:
            admin.close()
        dsn = admin_dsn.rsplit("/", 1)[0] + "/raycluster_demo"
        conn = psycopg2.connect(dsn)
        with conn, conn.cursor() as cur:
            cur.execute(_PG_SCHEMA)
        return cls(dsn, conn)

    def source(self) -> dict[str, Any]:
        """The tier's `postgres:` section for this database."""
        return {
            "dsn": self.dsn, "publication": PG_PUBLICATION, "slot": PG_SLOT,
            "tables": [{"table": PG_TABLE, "entity": "asset", "tenant_column": "tenant"}],
        }  # fmt: skip

    def transaction(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Run `statements` in one transaction."""
        with self.conn, self.conn.cursor() as cur:
            for sql, params in statements:
                cur.execute(sql, params)

    def query(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        with self.conn, self.conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def wal_lsn(self) -> str:
        """The server's current WAL position (everything committed is before it)."""
        return str(self.query("SELECT pg_current_wal_lsn()::text")[0][0])

    def close(self) -> None:
        self.conn.close()


_UPSERT = (
    f"INSERT INTO {PG_TABLE} (tenant, id, name, kind, site, temp, owner) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (tenant, id) DO UPDATE SET "
    "name = EXCLUDED.name, kind = EXCLUDED.kind, site = EXCLUDED.site, temp = EXCLUDED.temp, "
    "owner = EXCLUDED.owner"
)
_DELETE = f"DELETE FROM {PG_TABLE} WHERE tenant = %s AND id = %s"
_BUMP = f"UPDATE {PG_TABLE} SET temp = %s WHERE tenant = %s AND id = %s"


def _kill_ingester(settings: TierSettings) -> None:
    """Kill the tier's ingester actor (Ray restarts it); blocking: run it off the loop."""
    import ray

    from raycluster.actors import ingester_name

    assert settings.postgres is not None
    name = ingester_name(settings.name, settings.postgres.slot)
    ray.kill(ray.get_actor(name, namespace=settings.namespace), no_restart=False)


class _PostgresDemo(_Demo):
    """The main job with the rows in Postgres: SQL writes, the tier follows the slot."""

    def __init__(self, settings: TierSettings, args: argparse.Namespace, db: _DemoDb) -> None:
        super().__init__(settings, args)
        self.db = db
        self.transactions = 0

    async def run(self) -> int:
        from raycluster.postgres import describe_ingester
        from raycluster.redis import SourceStatus

        t0 = time.monotonic()
        rows = {f"a{i:03}": _random_asset(self.rnd) for i in range(300)}
        await asyncio.to_thread(
            self.db.transaction, [(_UPSERT, _values(i, r)) for i, r in rows.items()]
        )
        tier = await asyncio.to_thread(_start_tier, self.settings)
        sources = SourceStatus.from_url(tier.redis_url, settings=self.settings.redis)
        remote = await connect(tier.redis_url, self.settings)
        try:
            st = await self._synced(sources)
            print(f"tier up in {time.monotonic() - t0:.1f}s, redis {mask_url(tier.redis_url)}; "
                  f"{describe_ingester(st)}", flush=True)  # fmt: skip
            await self._open_windows(tier, remote, "initial windows (rows copied from Postgres):")
            await self._write_sql()
            st = await self._synced(sources)
            truth = {label: await self._truth(q) for label, q in DEMO_QUERIES.items()}
            exact = await self._finish(
                truth,
                ('final windows (truth: Postgres\' own ORDER BY … COLLATE "C" LIMIT):', "postgres"),
                (f"{self.transactions} SQL transactions ({self.written} writes)",
                 describe_ingester(st)),
            )  # fmt: skip
        finally:
            await remote.aclose()
            await sources.aclose()
            await tier.aclose()
        return 0 if exact else 1

    async def _synced(self, sources: Any, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait until the ingester holds every transaction committed so far; its status."""
        from raycluster.postgres.status import lsn_number

        want = lsn_number(await asyncio.to_thread(self.db.wal_lsn))
        deadline = time.monotonic() + timeout_s
        while True:
            st = await sources.read(PG_SLOT)
            if st is not None and lsn_number(st["synced_lsn"]) >= want:
                return dict(st)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the ingester did not catch up in {timeout_s:g} s: {st}")
            await asyncio.sleep(0.1)

    async def _write_sql(self) -> None:
        """SQL transactions at `--rate` for `--seconds` (one to three writes each); the
        ingester actor is killed a third of the way in (Ray restarts it)."""
        last = {label: sub.rows.ids for label, sub in self.subs.items()}
        killed = False
        start = time.monotonic()
        while time.monotonic() - start < self.args.seconds:
            statements = [self._statement() for _ in range(self.rnd.randint(1, 3))]
            await asyncio.to_thread(self.db.transaction, statements)
            self.transactions += 1
            self.written += len(statements)
            if not killed and time.monotonic() - start > self.args.seconds / 3:
                print("--- killing the ingester actor (Ray restarts it; it resumes from its "
                      "slot) ---", flush=True)  # fmt: skip
                await asyncio.to_thread(_kill_ingester, self.settings)
                killed = True
            self._show_changed(last)
            await asyncio.sleep(1 / self.args.rate)

    def _statement(self) -> tuple[str, tuple[Any, ...]]:
        agg_id = f"a{self.rnd.randrange(320):03}"
        roll = self.rnd.random()
        if roll < 0.1:
            return _DELETE, ("acme", agg_id)
        if roll < 0.4:
            return _BUMP, (self.rnd.randrange(100), "acme", agg_id)
        return _UPSERT, _values(agg_id, _random_asset(self.rnd))

    async def _truth(self, q: LiveQuery) -> list[str]:
        from raycluster.postgres.sql import window_sql

        assert self.settings.postgres is not None
        sql, params = window_sql(q, self.settings.postgres.tables[0], "acme", PG_TEXT_COLUMNS)
        return [r[0] for r in await asyncio.to_thread(self.db.query, sql, params)]


def _values(agg_id: str, row: dict[str, Any]) -> tuple[Any, ...]:
    return ("acme", agg_id, row["name"], row["kind"], row["site"], row["temp"], row["owner"])


# -- serve -------------------------------------------------------------------------


def add_serve_args(ap: argparse.ArgumentParser) -> None:
    """The serve job's options (shared by `jobs/serve.py` and `raycluster serve`)."""
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="tier config (YAML)")
    ap.add_argument("--shards", type=int, default=None, help="override the configured count")
    ap.add_argument("--status-every", type=float, default=10.0, help="seconds between status lines")
    ap.add_argument(
        "--for-seconds", type=float, default=None, help="stop by itself after this long"
    )


class _Stop(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT: unwinds a start or the serve loop."""


def serve(args: argparse.Namespace, settings: TierSettings | None = None) -> int:
    """Start (or re-adopt) the tier and block, printing status lines, until SIGTERM/SIGINT.

    While actors are pending, prints what is ready, what waits on which
    resources and what the cluster has free; past `start_timeout_s` the start
    fails (`NotReadyError`, exit 1). Every actor of the tier is stopped before
    this returns, however it ends (a signal during the start included).
    `settings`: what `--config` and the environment say, loaded here when not
    given.
    """
    import ray

    from raycluster.actors import StartProgress, Tier
    from raycluster.actors.attach import attach_ray

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = settings or TierSettings.load(args.config)
    # First: ray.init installs a SIGTERM handler of its own. RAY_ADDRESS, else the
    # local cluster, else a new local instance; an unreachable address fails in seconds.
    if os.environ.get("RAY_ADDRESS"):
        attach_ray(None, settings.namespace, quiet=False)
    elif not ray.is_initialized():
        ray.init(namespace=settings.namespace)
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if not stopping.is_set():  # a second signal while stopping is ignored
            stopping.set()
            raise _Stop(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    last = [0.0]

    def progress(p: StartProgress) -> None:
        if p.elapsed_s - last[0] >= PROGRESS_EVERY_S:
            last[0] = p.elapsed_s
            print(f"starting tier {settings.name!r}: {p.describe()}", flush=True)

    print(f"starting tier {settings.name!r} (gives up after {settings.start_timeout_s:g} s)",
          flush=True)  # fmt: skip
    try:
        tier = Tier.start(settings, shards=args.shards, on_progress=progress)
    except _Stop as e:
        print(f"{e}: the start was cancelled; every actor of the tier stopped", flush=True)
        return 0
    deadline = time.monotonic() + args.for_seconds if args.for_seconds else None
    try:
        redis = mask_url(tier.redis_url)
        print(f"serving tier {tier.name!r}: redis {redis}, gateways {tier.gateway_ids}", flush=True)
        while True:
            time.sleep(args.status_every)
            st = tier.status()
            line = {
                "live_shards": st["live_shards"], "subscriptions": st["subscriptions"],
                "partitions_owned": st["partitions_owned"], "frames_per_s": st["frames_per_s"],
                "changes_per_s": st["changes_per_s"], "lag_ms": st["lag_ms"],
            }  # fmt: skip
            print("status " + json.dumps(line), flush=True)
            if deadline is not None and time.monotonic() >= deadline:
                break
    except _Stop as e:
        print(f"{e} received", flush=True)
    except ray.exceptions.RayActorError:
        print("the tier's controller is gone (`raycluster stop`?)", flush=True)
    finally:
        stopping.set()
        print("stopping the tier", flush=True)
        try:
            tier.stop()
        except ray.exceptions.RayActorError:
            pass  # stopped already
        print("stopped", flush=True)
    return 0
