"""Redis layer benchmarks, each beside redis-benchmark's XADD rate on the same server.

    python benchmarks/bench_redis.py [--runs 5] [--quick] [--writes] [--cluster]

Runs against its own private `local_redis()` (never another server). Prints a
table of medians and writes benchmarks/results/bench_redis.json. The write
rates use the demo entity (`raycluster.edge.demo.ASSET`: five columns, each
filterable and sortable, so five index entries per row, one per column's
sorted set); each run of them is paired with a redis-benchmark XADD run just
before it, so the "vs XADD" ratio compares rates measured under the same
machine load. For `upsert_many` the table also gives where the server's time
goes per row: its main thread's CPU time, and the time inside the script
calls (INFO commandstats), of which the commands they issue (ZADD, HSET, …)
take the part listed, the rest being Lua and argument handling. `--writes`:
only the write rates.

`--cluster`: the write path on private Redis Clusters (`LocalRedisCluster`)
of 1 and of 3 masters instead: `upsert_many` of new rows from 24 concurrent
writers, each on its own tenant (so their partitions spread over the
masters), beside `redis-benchmark --cluster` XADD on the same cluster. Each
master's CPU time per row is read from the masters themselves, so the table
also gives how the work spread and the write capacity it implies (1e6 / CPU
µs per row on the busiest master, which saturates first): on a machine with fewer cores
than masters plus client, the measured rate is bound by the cores, not by
Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis.asyncio as aioredis
from _report import report

from raycluster.cluster.routing import partition_of
from raycluster.edge.demo import ASSET, demo_rows
from raycluster.livequery import EntitySpec, LiveQuery, SortKey, eq
from raycluster.redis import (
    LocalRedisCluster,
    RedisFeed,
    RedisSettings,
    RedisStore,
    Writer,
    local_redis,
)
from raycluster.redis.feed import _change

SPEC = EntitySpec(
    name="asset",
    columns={"name": "str", "kind": "str", "temp": "float", "n": "int"},
    filterable=["kind", "n"],
    sortable=["name", "temp", "n"],
)
KINDS = [f"kind{i}" for i in range(10)]


def row(i: int) -> dict[str, Any]:
    return {
        "name": f"asset {i:07d}",
        "kind": KINDS[i % 10],
        "temp": (i * 7919 % 100_003) / 1000,
        "n": i % 1000,
    }


def redis_benchmark(port: int, n: int, pipeline: int, masters: int = 0) -> float:
    """redis-benchmark's XADD rate (requests/s) on our server, or (`masters`) over our
    cluster's masters to streams spread over the slots (its `--cluster` mode needs 3
    masters; on one, a plain run covers every slot)."""
    exe = shutil.which("redis-benchmark") or "/usr/bin/redis-benchmark"
    import subprocess

    mode = ["--cluster"] if masters >= 3 else []
    key = ["-r", "100000", "bench:{tag}:__rand_int__"] if masters else ["benchstream"]
    args = [exe, *mode, "-h", "127.0.0.1", "-p", str(port), "-n", str(n), "-q"]
    out = subprocess.run(
        [*args, "-P", str(pipeline), *key[:-1], "XADD", key[-1], "*", "f", "v"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    rates = re.findall(r"([\d.]+) requests per second", out)
    if not rates:
        raise RuntimeError(f"unexpected redis-benchmark output: {out!r}")
    return float(rates[-1])


async def bench_single(url: str, s: RedisSettings, n: int, inflight: int) -> float:
    """Rows/s of `Writer.upsert` of new demo rows, `inflight` concurrent callers."""
    rows = list(demo_rows(n).items())
    tenant = f"single{time.monotonic_ns()}"
    async with Writer.from_url(url, entities=[ASSET], settings=s) as w:
        await w.upsert(tenant, "asset", "warm", rows[0][1])
        per = n // inflight

        async def worker(k: int) -> None:
            for agg_id, r in rows[k * per : (k + 1) * per]:
                await w.upsert(tenant, "asset", agg_id, r)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(inflight)))
        return per * inflight / (time.perf_counter() - t0)


async def server_usage(client: aioredis.Redis) -> dict[str, float]:
    """The server's main-thread CPU seconds and per-command time (µs) so far."""
    cpu = await client.info("cpu")
    stats = await client.info("commandstats")
    out = {"cpu": cpu["used_cpu_user_main_thread"] + cpu["used_cpu_sys_main_thread"]}
    out.update({k.removeprefix("cmdstat_"): float(v["usec"]) for k, v in stats.items()})
    return out


async def bench_batched(
    url: str, s: RedisSettings, n: int, batch: int
) -> tuple[float, float, dict[str, float]]:
    """Rows/s of `Writer.upsert_many` in batches of `batch`: (new rows, then every
    row again with other values, so each index entry moves), and where the
    server's time went per new row (µs: `cpu`, `eval`, then each command)."""
    fresh = list(demo_rows(n).items())
    again = list(demo_rows(n, seed=8).items())  # the same ids
    tenant = f"batched{time.monotonic_ns()}"
    rates = []
    per_row: dict[str, float] = {}
    probe = aioredis.Redis.from_url(url)
    async with Writer.from_url(url, entities=[ASSET], settings=s) as w:
        for rows in (fresh, again):
            before = await server_usage(probe)
            t0 = time.perf_counter()
            for start in range(0, n, batch):
                await w.upsert_many(tenant, "asset", rows[start : start + batch])
            rates.append(n / (time.perf_counter() - t0))
            if rows is fresh:
                after = await server_usage(probe)
                per_row = {k: (v - before.get(k, 0.0)) / n for k, v in after.items()}
                per_row["cpu"] *= 1e6
    await probe.aclose()
    return rates[0], rates[1], per_row


async def bench_feed(url: str, s: RedisSettings, n: int) -> tuple[float, float]:
    """(changes/s read and decoded by RedisFeed, changes/s of decoding alone)."""
    p = partition_of("bench3", "asset")
    async with (
        RedisFeed.from_url(url, partitions=[p], settings=s) as feed,
        Writer.from_url(url, entities=[SPEC], settings=s) as w,
    ):
        batches = feed.batches()
        await anext(batches)  # starting position: before the events below
        for start in range(0, n, 1000):
            await w.upsert_many(
                "bench3", "asset", [(f"f{i}", row(i)) for i in range(start, start + 1000)]
            )
        got = 0
        t0 = time.perf_counter()
        while got < n:
            got += len((await anext(batches)).changes)
        read_rate = n / (time.perf_counter() - t0)
        await batches.aclose()  # type: ignore[attr-defined]
        # Decoding alone, on one reply already in memory.
        key = s.keys.event_stream(p)
        raw: Any = await feed._client.xrange(key, count=10_000)
        t0 = time.perf_counter()
        for sid, fields in raw:
            _change(key, sid.decode(), fields)
        decode_rate = len(raw) / (time.perf_counter() - t0)
    return read_rate, decode_rate


async def load_table(url: str, s: RedisSettings, tenant: str, n: int) -> None:
    async with Writer.from_url(url, entities=[SPEC], settings=s) as w:
        for start in range(0, n, 2000):
            await w.upsert_many(
                tenant, "asset", [(f"r{i}", row(i)) for i in range(start, min(n, start + 2000))]
            )


async def snapshot_ms(store: RedisStore, tenant: str, q: LiveQuery, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        snap = await store.snapshot(tenant, q, q.limit)
        times.append((time.perf_counter() - t0) * 1000)
        assert len(snap.rows) == q.limit
    return statistics.median(times)


async def main_async(runs: int, quick: bool, writes_only: bool) -> list[dict[str, Any]]:
    s = RedisSettings(redis_url=None)
    rows: list[dict[str, Any]] = []
    n_bench = 20_000 if quick else 100_000
    sizes = [10_000] if quick else [10_000, 100_000]
    async with local_redis(binary=s.redis_server) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        probe = aioredis.Redis.from_url(url)
        version = (await probe.info("server"))["redis_version"]
        await probe.aclose()
        print(f"redis-server {version} on port {port}; load average {os.getloadavg()[0]:.2f}")
        rows.append({"benchmark": f"redis-server version {version}", "median": None,
                     "unit": "", "vs XADD": None, "runs": None})  # fmt: skip

        def add(name: str, vals: list[float], unit: str, ref: float | None) -> None:
            med = statistics.median(vals)
            rows.append({"benchmark": name, "median": med, "unit": unit,
                         "vs XADD": (med / ref) if ref else None, "runs": len(vals)})  # fmt: skip
            print(f"  {name}: {med:,.1f} {unit}", flush=True)

        # Write rates, each run right after its redis-benchmark runs.
        n_single = 3_000 if quick else 10_000
        n_batch = 20_000 if quick else 100_000
        xadd_1s, xadd_ps, ones, fifties, fresh, again = [], [], [], [], [], []
        usage: list[dict[str, float]] = []
        for _ in range(runs):
            xadd_1s.append(await asyncio.to_thread(redis_benchmark, port, n_bench, 1))
            xadd_ps.append(await asyncio.to_thread(redis_benchmark, port, n_bench, 100))
            ones.append(await bench_single(url, s, n_single, 1))
            fifties.append(await bench_single(url, s, n_single, 50))
            f, a, use = await bench_batched(url, s, n_batch, 500)
            fresh.append(f)
            again.append(a)
            usage.append(use)
            print(f"  run: XADD {xadd_1s[-1]:,.0f}/s, -P 100 {xadd_ps[-1]:,.0f}/s; upsert_many"
                  f" {f:,.0f} rows/s (new), {a:,.0f} rows/s (rewrites); server per new row:"
                  f" CPU {use['cpu']:.1f} µs, in scripts {use.get('eval', 0):.1f} µs",
                  flush=True)  # fmt: skip
        xadd_1, xadd_p = statistics.median(xadd_1s), statistics.median(xadd_ps)
        add("redis-benchmark XADD (50 clients)", xadd_1s, "ops/s", xadd_1)
        add("redis-benchmark XADD (50 clients, -P 100)", xadd_ps, "ops/s", xadd_1)
        add("Writer.upsert, 1 in flight (demo entity)", ones, "rows/s", xadd_1)
        add("Writer.upsert, 50 in flight (demo entity)", fifties, "rows/s", xadd_1)
        add("Writer.upsert_many, new rows (batches of 500)", fresh, "rows/s", xadd_p)
        add("Writer.upsert_many, rewrites (batches of 500)", again, "rows/s", xadd_p)
        # Where the server's time goes per new row (commands issued by the scripts included).
        add("  server CPU (main thread) per new row", [u["cpu"] for u in usage], "µs", None)
        add("  in script calls (EVAL) per new row", [u.get("eval", 0) for u in usage], "µs", None)
        inner = sorted(
            {k for u in usage for k in u if k not in ("cpu", "eval") and u[k] >= 0.05},
            key=lambda k: -statistics.median(u.get(k, 0) for u in usage),
        )
        for k in inner:
            add(f"    of which {k.upper()}", [u.get(k, 0) for u in usage], "µs", None)
        if writes_only:
            rows.append({"benchmark": "load average (1 min) at the end",
                         "median": os.getloadavg()[0], "unit": "", "vs XADD": None,
                         "runs": None})  # fmt: skip
            return rows

        feed = [await bench_feed(url, s, n_batch) for _ in range(runs)]
        add("RedisFeed read + decode", [f[0] for f in feed], "changes/s", xadd_p)
        add("RedisFeed decode only", [f[1] for f in feed], "changes/s", None)

        for n in sizes:
            tenant = f"t{n}"
            await load_table(url, s, tenant, n)
            by_temp = LiveQuery(entity="asset", limit=50, sort=[SortKey(column="temp")])
            by_name_desc = LiveQuery(
                entity="asset", limit=50, sort=[SortKey(column="name", desc=True)]
            )
            with_eq = LiveQuery(
                entity="asset", limit=50, where=[eq("kind", "kind3")], sort=[SortKey(column="temp")]
            )
            async with RedisStore.from_url(url, settings=s) as store:
                for label, q in [("sort temp", by_temp), ("sort name desc", by_name_desc),
                                 ("eq kind + sort temp", with_eq)]:  # fmt: skip
                    ms = [await snapshot_ms(store, tenant, q, 1) for _ in range(runs + 2)]
                    add(f"snapshot 50 of {n:,}: {label}", ms, "ms", None)
            async with RedisStore.from_url(url, settings=s) as scan:
                scan.sort_index = False
                scan.value_index = False
                scan_runs = max(3, runs // 2) if n >= 100_000 else runs
                for label, q in [("sort temp", by_temp), ("eq kind + sort temp", with_eq)]:
                    ms = [await snapshot_ms(scan, tenant, q, 1) for _ in range(scan_runs)]
                    add(f"snapshot 50 of {n:,}: {label} (full scan)", ms, "ms", None)
        rows.append({"benchmark": "load average (1 min) at the end", "median": os.getloadavg()[0],
                     "unit": "", "vs XADD": None, "runs": None})  # fmt: skip
    return rows


async def masters_cpu(cluster: LocalRedisCluster) -> list[float]:
    """Each master's main-thread CPU seconds so far."""
    out = []
    for node in cluster.nodes:
        if node.role == "master":
            client = aioredis.Redis.from_url(node.url)
            cpu = await client.info("cpu")
            await client.aclose()
            out.append(cpu["used_cpu_user_main_thread"] + cpu["used_cpu_sys_main_thread"])
    return out


async def bench_cluster_writes(
    cluster: LocalRedisCluster, n: int, writers: int, batch: int
) -> tuple[float, list[float]]:
    """Rows/s of `upsert_many` of new demo rows by `writers` concurrent writers (one
    tenant each), and each master's CPU µs per row written."""
    s = RedisSettings(redis_url=None, redis_cluster=True)
    rows = list(demo_rows(n).items())
    per = n // writers
    stamp = time.monotonic_ns()
    async with Writer.from_url(cluster.url, entities=[ASSET], settings=s) as w:
        await w.upsert(f"warm{stamp}", "asset", "warm", rows[0][1])

        async def writer(k: int) -> None:
            mine = rows[k * per : (k + 1) * per]
            for start in range(0, len(mine), batch):
                await w.upsert_many(f"c{stamp}-{k}", "asset", mine[start : start + batch])

        before = await masters_cpu(cluster)
        t0 = time.perf_counter()
        await asyncio.gather(*(writer(k) for k in range(writers)))
        rate = per * writers / (time.perf_counter() - t0)
        after = await masters_cpu(cluster)
    return rate, [(a - b) * 1e6 / (per * writers) for a, b in zip(after, before, strict=True)]


async def cluster_async(runs: int, quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    n = 20_000 if quick else 100_000
    for masters in (1, 3):
        with LocalRedisCluster(masters=masters) as cluster:
            port = cluster.nodes[0].port
            xadds, rates, cpus = [], [], []
            for _ in range(runs):
                xadd_run = asyncio.to_thread(redis_benchmark, port, n, 100, masters)
                xadds.append(await xadd_run)
                rate, cpu = await bench_cluster_writes(cluster, n, 24, 500)
                rates.append(rate)
                cpus.append(cpu)
                print(f"  {masters} master(s): XADD -P 100 {xadds[-1]:,.0f}/s; upsert_many"
                      f" {rate:,.0f} rows/s; master CPU µs/row {[round(c, 1) for c in cpu]}",
                      flush=True)  # fmt: skip
            xadd = statistics.median(xadds)
            busiest = [max(c) for c in cpus]
            total = [sum(c) for c in cpus]
            capacity = [1e6 / b for b in busiest]  # the busiest master saturates first
            med = statistics.median
            for name, vals, unit, ref in [
                (f"{masters} master(s): redis-benchmark --cluster XADD (-P 100)", xadds, "ops/s",
                 xadd),
                (f"{masters} master(s): Writer.upsert_many, new rows, 24 writers", rates, "rows/s",
                 xadd),
                (f"{masters} master(s): CPU per row, all masters", total, "µs", None),
                (f"{masters} master(s): CPU per row, busiest master", busiest, "µs", None),
                (f"{masters} master(s): write capacity (1e6 / busiest master's µs)", capacity,
                 "rows/s", xadd),
            ]:  # fmt: skip
                m = med(vals)
                rows.append({"benchmark": name, "median": m, "unit": unit,
                             "vs XADD": m / ref if ref else None, "runs": len(vals)})  # fmt: skip
    rows.append({"benchmark": "load average (1 min) at the end", "median": os.getloadavg()[0],
                 "unit": "", "vs XADD": None, "runs": None})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5, help="runs per measurement (median)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--writes", action="store_true", help="only the write rates")
    ap.add_argument("--cluster", action="store_true", help="write rates on 1 and 3 masters")
    args = ap.parse_args()
    cols = ["benchmark", "median", "unit", "vs XADD", "runs"]
    if args.cluster:
        report("bench_redis_cluster", asyncio.run(cluster_async(args.runs, args.quick)), cols)
    else:
        report("bench_redis", asyncio.run(main_async(args.runs, args.quick, args.writes)), cols)


if __name__ == "__main__":
    main()
