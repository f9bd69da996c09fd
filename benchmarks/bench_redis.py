"""Redis layer benchmarks, each beside redis-benchmark's XADD rate on the same server.

    python benchmarks/bench_redis.py [--runs 5] [--quick]

Runs against its own private `local_redis()` (never another server). Prints a
table of medians and writes benchmarks/results/bench_redis.json.
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
from raycluster.livequery import EntitySpec, LiveQuery, SortKey, eq
from raycluster.redis import (
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


def redis_benchmark(port: int, n: int, pipeline: int) -> float:
    """redis-benchmark's XADD rate (requests/s) on our server."""
    exe = shutil.which("redis-benchmark") or "/usr/bin/redis-benchmark"
    import subprocess

    args = [exe, "-h", "127.0.0.1", "-p", str(port), "-n", str(n), "-q", "-P", str(pipeline)]
    out = subprocess.run(
        [*args, "XADD", "benchstream", "*", "f", "v"],
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
    """Rows/s of `Writer.upsert`, `inflight` concurrent callers."""
    async with Writer.from_url(url, entities=[SPEC], settings=s) as w:
        await w.upsert("bench1", "asset", "warm", row(0))
        per = n // inflight

        async def worker(k: int) -> None:
            for i in range(per):
                j = k * per + i
                await w.upsert("bench1", "asset", f"s{j}", row(j))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(inflight)))
        return per * inflight / (time.perf_counter() - t0)


async def bench_batched(url: str, s: RedisSettings, n: int, batch: int) -> float:
    """Rows/s of `Writer.upsert_many` in batches of `batch`."""
    async with Writer.from_url(url, entities=[SPEC], settings=s) as w:
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            await w.upsert_many(
                "bench2", "asset", [(f"b{i}", row(i)) for i in range(start, start + batch)]
            )
        return n / (time.perf_counter() - t0)


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


async def main_async(runs: int, quick: bool) -> list[dict[str, Any]]:
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
        xadd_1 = statistics.median(
            [await asyncio.to_thread(redis_benchmark, port, n_bench, 1) for _ in range(runs)]
        )
        xadd_p = statistics.median(
            [await asyncio.to_thread(redis_benchmark, port, n_bench, 100) for _ in range(runs)]
        )
        rows.append({"benchmark": "redis-benchmark XADD (50 clients)", "median": xadd_1,
                     "unit": "ops/s", "vs XADD": 1.0, "runs": runs})  # fmt: skip
        rows.append({"benchmark": "redis-benchmark XADD (50 clients, -P 100)", "median": xadd_p,
                     "unit": "ops/s", "vs XADD": xadd_p / xadd_1, "runs": runs})  # fmt: skip

        def add(name: str, vals: list[float], unit: str, ref: float | None = xadd_1) -> None:
            med = statistics.median(vals)
            rows.append({"benchmark": name, "median": med, "unit": unit,
                         "vs XADD": (med / ref) if ref else None, "runs": len(vals)})  # fmt: skip
            print(f"  {name}: {med:,.1f} {unit}", flush=True)

        n_single = 3_000 if quick else 10_000
        add("Writer.upsert, 1 in flight",
            [await bench_single(url, s, n_single, 1) for _ in range(runs)], "rows/s")  # fmt: skip
        add("Writer.upsert, 50 in flight",
            [await bench_single(url, s, n_single, 50) for _ in range(runs)], "rows/s")  # fmt: skip
        n_batch = 20_000 if quick else 100_000
        add("Writer.upsert_many (batches of 500)",
            [await bench_batched(url, s, n_batch, 500) for _ in range(runs)], "rows/s",
            xadd_p)  # fmt: skip
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5, help="runs per measurement (median)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = ap.parse_args()
    rows = asyncio.run(main_async(args.runs, args.quick))
    report("bench_redis", rows, ["benchmark", "median", "unit", "vs XADD", "runs"])


if __name__ == "__main__":
    main()
