"""Postgres source benchmarks: a private PostgreSQL, a private Redis, the ingester.

    python benchmarks/bench_postgres.py [--quick] [--runs 3] [--only ingest|latency]

* **ingest rows/s against Postgres' own commit rate, same load, same run.** A
  writer commits `--rows` rows (transactions of `--tx-rows`: 70 % inserts,
  30 % updates, 50 tenants, the demo's five-column entity) as fast as it can
  while `raycluster ingest` (its own process, as in production) follows the
  slot into Redis. `commit rows/s` is the writer's (Postgres' commit rate for
  that load); `ingest rows/s` is rows over the time from the first commit
  until the ingester had all of them in Redis. Then the same load again with
  the ingester paused (SIGSTOP) while it is written: `drain rows/s` is how
  fast it catches up on that backlog once resumed (its ceiling, whatever the
  writer's speed), and `ingester CPU µs/row` the ingester process's CPU time
  (user + system) per row of that drain: steadier than the rates, which
  depend on how the 2 cores are shared.
* **commit → client frame latency, p50/p99, at 1,000 transactions/s,** through
  an in-cluster subscription of a tier on a local Ray with the ingester actor:
  100 live windows; a writer process commits one-row UPDATEs (each moves a
  row inside a window: one frame) at the rate; latency is a frame's receive
  time minus its transaction's commit time (both this machine's clock), split
  at the change's write time in Redis into the ingester's hop and the tier's
  (`Tier.subscribe`: the handle's own gateway).

Medians of `--runs`. Prints a table and writes benchmarks/results/bench_postgres.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2
import psycopg2.extras
import yaml
from _report import report

from raycluster import EntitySpec, LiveQuery, SortKey, TierSettings, eq
from raycluster.postgres.local import LocalPostgres
from raycluster.postgres.status import lsn_number
from raycluster.redis import LocalRedis, RedisSettings, SourceStatus

ASSET = EntitySpec(
    name="asset",
    columns={"name": "str", "kind": "str", "site": "str", "temp": "int", "owner": "str"},
    max_window=500,
)
SCHEMA = """
CREATE TABLE asset (tenant text NOT NULL, id text NOT NULL, name text, kind text, site text,
                    temp integer, owner text, PRIMARY KEY (tenant, id));
CREATE PUBLICATION bench FOR TABLE asset;
"""
KINDS, SITES = ["pump", "valve", "fan"], ["north", "south", "east"]
TENANTS = 50
LAT_TENANT, LAT_ROWS, LAT_OWNERS = "bench", 1000, 100


def pct(vals: list[float], q: float) -> float:
    if not vals:
        return float("nan")
    s = sorted(vals)
    return s[min(len(s) - 1, int(q * len(s)))]


def create_db(pg: LocalPostgres, name: str) -> str:
    admin = psycopg2.connect(pg.dsn())
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
    finally:
        admin.close()
    dsn = pg.dsn(name)
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute(SCHEMA)
    conn.close()
    return dsn


def drop_db(pg: LocalPostgres, name: str) -> None:
    admin = psycopg2.connect(pg.dsn())
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            for _ in range(50):
                cur.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                            "WHERE database = %s AND active_pid IS NOT NULL", (name,))  # fmt: skip
                cur.execute("SELECT count(*) FROM pg_replication_slots WHERE database = %s "
                            "AND active", (name,))  # fmt: skip
                if cur.fetchone()[0] == 0:
                    break
                time.sleep(0.1)
            cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE database = %s", (name,))  # fmt: skip
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        admin.close()


def source(dsn: str, slot: str) -> dict[str, Any]:
    return {
        "dsn": dsn, "publication": "bench", "slot": slot, "status_interval_s": 0.1,
        "tables": [{"table": "asset", "entity": "asset", "tenant_column": "tenant"}],
    }  # fmt: skip


def row_values(rnd: random.Random, tenant: str, agg_id: str) -> tuple[Any, ...]:
    return (tenant, agg_id, f"asset-{rnd.randrange(100_000):05}", rnd.choice(KINDS),
            rnd.choice(SITES), rnd.randrange(100), f"u{rnd.randrange(20)}")  # fmt: skip


def write_load(dsn: str, rows: int, tx_rows: int, seed: int, tag: str) -> float:
    """Commit `rows` rows' changes in transactions of `tx_rows`; the seconds it took."""
    rnd = random.Random(seed)
    conn = psycopg2.connect(dsn)
    written: list[tuple[str, str]] = []
    t0 = time.monotonic()
    try:
        with conn.cursor() as cur:
            done = 0
            while done < rows:
                n = min(tx_rows, rows - done)
                updates = int(n * 0.3) if len(written) > n else 0
                inserts = [row_values(rnd, f"t{rnd.randrange(TENANTS)}", f"{tag}{done + i}")
                           for i in range(n - updates)]  # fmt: skip
                psycopg2.extras.execute_values(
                    cur, "INSERT INTO asset VALUES %s", inserts, page_size=len(inserts)
                )
                if updates:
                    keys = [written[rnd.randrange(len(written))] for _ in range(updates)]
                    psycopg2.extras.execute_values(
                        cur, "UPDATE asset SET temp = asset.temp + 1, name = v.name FROM "
                        "(VALUES %s) AS v(tenant, id, name) WHERE asset.tenant = v.tenant "
                        "AND asset.id = v.id",
                        [(t, i, f"renamed-{rnd.randrange(10**6)}") for t, i in keys],
                        page_size=len(keys),
                    )  # fmt: skip
                conn.commit()
                written += [(r[0], r[1]) for r in inserts]
                done += n
    finally:
        conn.close()
    return time.monotonic() - t0


def wal_lsn(dsn: str) -> int:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_lsn()::text")
            return lsn_number(cur.fetchone()[0])
    finally:
        conn.close()


async def until_synced(status: SourceStatus, slot: str, lsn: int, timeout_s: float) -> float:
    """Wait until the ingester's published status holds everything before `lsn`; when."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = await status.read(slot)
        if st is not None and lsn_number(st["synced_lsn"]) >= lsn:
            return time.monotonic()
        if st is not None and st["state"] == "failed":
            raise RuntimeError(f"the ingester failed: {st['error']}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the ingester did not catch up in {timeout_s:g} s: {st}")
        await asyncio.sleep(0.02)


def start_ingest(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`raycluster ingest --config config` in its own process (stderr to `log`)."""
    with log.open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "raycluster.cli", "ingest", "--config", str(config),
             "--status-every", "0"],
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip


def cpu_s(pid: int) -> float:
    """A process's CPU time so far (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def ingest_run(
    pg: LocalPostgres, redis_url: str, rows: int, tx_rows: int, run: int, tmp: Path
) -> dict[str, float]:
    """One run: live (writer and ingester at once), then a backlog drain."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    slot, prefix = f"s_{name}", f"lqb-{name}"
    dsn = await asyncio.to_thread(create_db, pg, name)
    config = tmp / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "redis": {"redis_url": redis_url, "key_prefix": prefix},
        "entities": [ASSET.model_dump()], "postgres": source(dsn, slot),
    }))  # fmt: skip
    rs = RedisSettings(key_prefix=prefix)
    status = SourceStatus.from_url(redis_url, settings=rs)
    proc = start_ingest(config, tmp / f"{name}.log")
    try:
        await until_synced(status, slot, await asyncio.to_thread(wal_lsn, dsn), 60)
        t0 = time.monotonic()
        commit_s = await asyncio.to_thread(write_load, dsn, rows, tx_rows, run, "l")
        done = await until_synced(status, slot, await asyncio.to_thread(wal_lsn, dsn), 300)
        live = {"commit": rows / commit_s, "ingest": rows / (done - t0)}
        # Backlog: the ingester paused while the same load is committed.
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            await asyncio.to_thread(write_load, dsn, rows, tx_rows, run + 100, "b")
            lsn = await asyncio.to_thread(wal_lsn, dsn)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        t1, cpu1 = time.monotonic(), cpu_s(proc.pid)
        done = await until_synced(status, slot, lsn, 300)
        cpu_us = (cpu_s(proc.pid) - cpu1) / rows * 1e6
        return {**live, "drain": rows / (done - t1), "cpu_us": cpu_us}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        await status.aclose()
        await asyncio.to_thread(drop_db, pg, name)


# -- latency through a tier on Ray ----------------------------------------------------


def writer_main(spec_json: str) -> None:
    """The latency writer (its own process): one-row UPDATE transactions at `rate`/s for
    `seconds`; prints {seq: commit time} as JSON."""
    spec = json.loads(spec_json)
    rnd = random.Random(spec["seed"])
    conn = psycopg2.connect(spec["dsn"])
    commits: dict[int, float] = {}
    rate, n = spec["rate"], int(spec["rate"] * spec["seconds"])
    with conn.cursor() as cur:
        t0 = time.monotonic()
        for k in range(n):
            i = rnd.randrange(LAT_ROWS)
            cur.execute("UPDATE asset SET name = %s WHERE tenant = %s AND id = %s",
                        (f"m{spec['tag']}{k:07}", LAT_TENANT, f"a{i:05}"))  # fmt: skip
            conn.commit()
            commits[k] = time.time()
            delay = t0 + (k + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        achieved = n / (time.monotonic() - t0)
    conn.close()
    print(json.dumps({"commits": commits, "rate": achieved}))


async def latency_run(tier: Any, dsn: str, rate: float, seconds: float, run: int) -> dict[str, Any]:
    subs = []
    for i in range(LAT_OWNERS):
        q = LiveQuery(entity="asset", where=[eq("owner", f"u{i}")],
                      sort=[SortKey(column="name")], limit=10)  # fmt: skip
        subs.append(await tier.subscribe(LAT_TENANT, q))
    received: dict[str, float] = {}
    in_redis: dict[str, float] = {}  # the event's write time (the script's clock), seconds
    tag = f"r{run}-"

    async def consume(sub: Any) -> None:
        async for f in sub:
            row = f.delta.row
            if row is not None and str(row.get("name", "")).startswith(f"m{tag}"):
                received.setdefault(row["name"], time.time())
                in_redis.setdefault(row["name"], (f.delta.at or 0) / 1000)

    readers = [asyncio.create_task(consume(s)) for s in subs]
    spec = json.dumps({"dsn": dsn, "rate": rate, "seconds": seconds, "seed": run, "tag": tag})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--writer", spec, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    result = json.loads(out)
    commits = {f"m{tag}{int(k):07}": t for k, t in result["commits"].items()}
    deadline = time.monotonic() + 15
    while len(received) < len(commits) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for r in readers:
        r.cancel()
    for s in subs:
        await s.close()
    lat = [(received[name] - t) * 1000 for name, t in commits.items() if name in received]
    # The two hops: commit -> in Redis (the ingester), in Redis -> client (the tier).
    hop1 = [(in_redis[n] - t) * 1000 for n, t in commits.items() if n in in_redis]
    hop2 = [(received[n] - in_redis[n]) * 1000 for n in commits if n in in_redis]
    return {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "frames": len(lat),
            "ingest_p50": pct(hop1, 0.5), "ingest_p99": pct(hop1, 0.99),
            "tier_p50": pct(hop2, 0.5), "tier_p99": pct(hop2, 0.99),
            "commits": len(commits), "rate": result["rate"]}  # fmt: skip


async def latency_section(
    pg: LocalPostgres, redis_url: str, rate: float, seconds: float, runs: int
) -> dict[str, Any]:
    import ray

    from raycluster import Tier

    name = f"benchlat_{uuid.uuid4().hex[:6]}"
    dsn = await asyncio.to_thread(create_db, pg, name)
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(cur, "INSERT INTO asset VALUES %s", [
            (LAT_TENANT, f"a{i:05}", f"n{i:06}", "pump", "north", i % 100, f"u{i % LAT_OWNERS}")
            for i in range(LAT_ROWS)
        ])  # fmt: skip
    conn.close()
    ray.init(num_cpus=4, include_dashboard=False, namespace="raycluster-bench")
    settings = TierSettings.load(
        name=name.replace("_", "-"), shards=1, gateways=1, shard_num_cpus=0.5,
        entities=[ASSET.model_dump()],
        postgres={**source(dsn, f"s_{name}"), "status_interval_s": 1.0},
        redis={"redis_url": redis_url, "key_prefix": name, "heartbeat_ttl_s": 2.0},
        shard={"heartbeat_interval_s": 0.4, "ownership_interval_s": 0.2},
    )  # fmt: skip
    tier = await asyncio.to_thread(Tier.start, settings)
    try:
        status = SourceStatus.from_url(redis_url, settings=settings.redis)
        await until_synced(status, f"s_{name}", await asyncio.to_thread(wal_lsn, dsn), 60)
        await status.aclose()
        res = [await latency_run(tier, dsn, rate, seconds, r) for r in range(runs)]
    finally:
        await tier.aclose()
        ray.shutdown()
        await asyncio.to_thread(drop_db, pg, name)
    med = statistics.median
    return {
        "benchmark": f"commit -> in-cluster client frame @ {rate:g} tx/s",
        "p50_ms": med(r["p50"] for r in res),
        "p99_ms": med(r["p99"] for r in res),
        "ingest_hop_ms": f"{med(r['ingest_p50'] for r in res):.1f}/"
        f"{med(r['ingest_p99'] for r in res):.1f}",
        "tier_hop_ms": f"{med(r['tier_p50'] for r in res):.1f}/"
        f"{med(r['tier_p99'] for r in res):.1f}",
        "rate": statistics.median(r["rate"] for r in res),
        "frames": f"{min(r['frames'] for r in res)}/{res[0]['commits']}",
        "target": "p99 <= 20 ms",
        "runs": [f"{r['p50']:.1f}/{r['p99']:.1f}" for r in res],
    }


COLUMNS = ["benchmark", "commit_rows_per_s", "ingest_rows_per_s", "ratio", "drain_rows_per_s",
           "ingester_cpu_us_per_row", "p50_ms", "p99_ms", "ingest_hop_ms", "tier_hop_ms",
           "rate", "frames", "target", "runs", "error"]  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    rows_out: list[dict[str, Any]] = []
    redis = LocalRedis()
    url = redis.start()
    pg = LocalPostgres()
    await asyncio.to_thread(pg.start)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    rows = args.rows or (20_000 if args.quick else 100_000)
    try:
        if not args.only or "ingest" in args.only:
            try:
                res = [await ingest_run(pg, url, rows, args.tx_rows, r, tmp)
                       for r in range(args.runs)]  # fmt: skip
                med = statistics.median
                rows_out.append({
                    "benchmark": f"ingest {rows:,} rows in transactions of {args.tx_rows}",
                    "commit_rows_per_s": med(r["commit"] for r in res),
                    "ingest_rows_per_s": med(r["ingest"] for r in res),
                    "ratio": med(r["ingest"] / r["commit"] for r in res),
                    "drain_rows_per_s": med(r["drain"] for r in res),
                    "ingester_cpu_us_per_row": med(r["cpu_us"] for r in res),
                    "target": "ingest >= 20000 rows/s",
                    "runs": [f"{r['commit']:.0f}/{r['ingest']:.0f}/{r['drain']:.0f}" for r in res],
                })  # fmt: skip
            except Exception as e:
                rows_out.append({"benchmark": "ingest", "error": f"{type(e).__name__}: {e}"[:200]})
            report("bench_postgres", rows_out, COLUMNS)
        if not args.only or "latency" in args.only:
            try:
                seconds = 3.0 if args.quick else 10.0
                rows_out.append(await latency_section(pg, url, args.rate, seconds, args.runs))
            except Exception as e:
                rows_out.append({"benchmark": "latency", "error": f"{type(e).__name__}: {e}"[:200]})
            report("bench_postgres", rows_out, COLUMNS)
    finally:
        await asyncio.to_thread(pg.close)
        redis.stop()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--writer":
        writer_main(sys.argv[2])
        raise SystemExit(0)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20,000 rows, 3 s of latency writes")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rows", type=int, help="rows of the ingest load")
    ap.add_argument("--tx-rows", type=int, default=100, help="rows per transaction (ingest)")
    ap.add_argument("--rate", type=float, default=1000.0, help="transactions/s (latency)")
    ap.add_argument("--only", action="append", help="ingest or latency")
    asyncio.run(main(ap.parse_args()))
