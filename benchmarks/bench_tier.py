"""Tier benchmarks on a local Ray with a private Redis.

    python benchmarks/bench_tier.py [--quick] [--runs 3]

* write → client latency p50/p99 at fixed write rates, 100 windows, over the
  in-cluster path (`Tier.subscribe`: the handle's own gateway in this
  process), through a gateway actor (`subscribe(..., gateway_id=...)`:
  object refs), and the Redis path (`raycluster.connect()`: an external
  gateway), all in the same run;
* the most changes/s one shard sustains with 10,000 subscriptions (each
  change renames a row inside its window: one frame per change), per path;
* failover: a shard killed for good → every client reset by a new owner.

Latency is measured per frame as receive time minus the write's server time
(`at`, stamped by the write script), so both clocks are this machine's.
Prints a table of medians and writes benchmarks/results/bench_tier.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray
from _report import report

import raycluster
from raycluster import EntitySpec, LiveQuery, SortKey, Tier, TierSettings, eq
from raycluster.cluster import owner, partition_of
from raycluster.redis import LocalRedis

ASSET = EntitySpec(name="asset", columns={"owner": "str", "name": "str"}, max_window=100)
T = "bench"


def settings(
    name: str, url: str, shards: int, ttl_s: float = 2.0, gateway_transport: str = "ray"
) -> TierSettings:
    return TierSettings.load(
        name=name,
        shards=shards,
        gateway_transport=gateway_transport,
        shard_num_cpus=0.5,
        entities=[ASSET.model_dump()],
        redis={"redis_url": url, "key_prefix": name, "heartbeat_ttl_s": ttl_s},
        shard={"heartbeat_interval_s": 0.4, "ownership_interval_s": 0.2},
    )


def pct(vals: list[float], q: float) -> float:
    if not vals:
        return float("nan")
    s = sorted(vals)
    return s[min(len(s) - 1, int(q * len(s)))]


async def preload(w: Any, rows: int, owners: int) -> None:
    batch = {f"a{i:06}": {"owner": f"u{i % owners}", "name": f"n{i:06}"} for i in range(rows)}
    items = list(batch.items())
    for k in range(0, len(items), 1000):
        await w.upsert_many(T, "asset", items[k : k + 1000])


async def _subscribe(tier: Tier, remote: Any, path: str, q: LiveQuery) -> Any:
    """`path`: "direct" (`Tier.subscribe`: the handle's own gateway), "actor" (through
    the tier's first gateway actor: object refs), "redis" (`connect()`: an external
    gateway)."""
    if path == "redis":
        return await remote.subscribe(T, q)
    if path == "actor":
        return await tier.subscribe(T, q, gateway_id=tier.gateway_ids[0])
    return await tier.subscribe(T, q)


async def latency(tier: Tier, path: str, rate: float, seconds: float) -> dict[str, Any]:
    """Fixed-rate renames; per-frame write → client latency."""
    owners = 100
    w = tier.writer()
    await preload(w, 1000, owners)
    remote = await raycluster.connect(tier.redis_url, tier.settings) if path == "redis" else None
    subs = []
    for i in range(owners):
        q = LiveQuery(entity="asset", where=[eq("owner", f"u{i}")],
                      sort=[SortKey(column="name")], limit=10)  # fmt: skip
        subs.append(await _subscribe(tier, remote, path, q))
    lat: list[float] = []

    async def consume(sub: Any) -> None:
        async for f in sub:
            if f.delta.op.value != "reset" and f.delta.at:
                lat.append(time.time() * 1000 - f.delta.at)

    readers = [asyncio.create_task(consume(s)) for s in subs]
    rnd = random.Random(1)
    n = int(rate * seconds)
    t0 = time.monotonic()
    for k in range(n):
        i = rnd.randrange(1000)
        await w.upsert(T, "asset", f"a{i:06}", {"owner": f"u{i % owners}", "name": f"m{k:07}"})
        delay = t0 + (k + 1) / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    achieved = n / (time.monotonic() - t0)
    deadline = time.monotonic() + 10
    while len(lat) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for s in subs:
        await s.close()
    for r in readers:
        r.cancel()
    if remote is not None:
        await remote.aclose()
    await w.aclose()
    return {"p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "frames": len(lat),
            "writes": n, "write_rate": achieved}  # fmt: skip


async def throughput(
    tier: Tier, path: str, subs_n: int, rows: int, changes: int, runs: int
) -> dict[str, Any]:
    """Renames written as fast as possible; changes/s until every frame reached its client.

    Clients are this driver's `Subscription`s (see `_subscribe` for the
    paths), so a frame counts once its client applied it.
    """
    w = tier.writer()
    await preload(w, rows, subs_n)
    remote = await raycluster.connect(tier.redis_url, tier.settings) if path == "redis" else None
    sem = asyncio.Semaphore(200)
    subs: list[Any] = []

    async def sub(i: int) -> None:
        q = LiveQuery(entity="asset", where=[eq("owner", f"u{i}")],
                      sort=[SortKey(column="name")], limit=10)  # fmt: skip
        async with sem:
            subs.append(await _subscribe(tier, remote, path, q))

    t0 = time.monotonic()
    await asyncio.gather(*(sub(i) for i in range(subs_n)))
    setup_s = time.monotonic() - t0

    async def frames_in() -> int:
        n = 0
        for s in subs:
            n += s.frames_in
            s.drain()  # nobody iterates: keep the queues short
        return n

    rnd = random.Random(2)

    async def write(tag: str) -> None:
        plan = [rnd.randrange(rows) for _ in range(changes)]
        items = [(f"a{i:06}", {"owner": f"u{i % subs_n}", "name": f"{tag}{k:07}"})
                 for k, i in enumerate(plan)]  # fmt: skip

        async def part(its: list[tuple[str, dict[str, Any]]]) -> None:
            for k in range(0, len(its), 500):
                await w.upsert_many(T, "asset", its[k : k + 500])

        await asyncio.gather(*(part(items[j::2]) for j in range(2)))

    async def drained(base: int, t0: float) -> tuple[int, float]:
        while await frames_in() - base < changes and time.monotonic() - t0 < 120:
            await asyncio.sleep(0.02)
        return await frames_in() - base, time.monotonic() - t0

    (shard_id,) = tier.status()["live_shards"]
    shard = ray.get_actor(f"{tier.name}:shard:{shard_id}", namespace=tier.namespace)
    pid = await shard.pid.remote()
    out: dict[str, list[float]] = {"live": [], "write": [], "drain": [], "frames": [],
                                   "drain_frames": []}  # fmt: skip
    for run in range(runs):
        # Live: written as fast as this writer can; the shard keeps up or lags.
        base, t0 = await frames_in(), time.monotonic()
        await write(f"m{run}")
        write_s = time.monotonic() - t0
        got, elapsed = await drained(base, t0)
        # Backlog: the shard is paused (SIGSTOP; the TTL is long) while the same
        # number of changes is written, then drains it: its own ceiling,
        # whatever the writer's speed.
        base = await frames_in()
        os.kill(pid, signal.SIGSTOP)
        try:
            await write(f"b{run}")
        finally:
            os.kill(pid, signal.SIGCONT)
        backlog_got, backlog_s = await drained(base, time.monotonic())
        out["live"].append(got / elapsed)
        out["write"].append(changes / write_s)
        out["drain"].append(backlog_got / backlog_s)
        out["frames"].append(got)
        out["drain_frames"].append(backlog_got)
    for s in subs:
        await s.close()
    if remote is not None:
        await remote.aclose()
    await w.aclose()
    return {"setup_s": setup_s, **out}


async def failover(tier: Tier, runs: int) -> list[float]:
    """Kill the owner of the subscriptions' partition for good; time until all are reset."""
    w = tier.writer()
    await preload(w, 100, 10)
    subs = []
    for i in range(10):
        q = LiveQuery(entity="asset", where=[eq("owner", f"u{i}")],
                      sort=[SortKey(column="name")], limit=5)  # fmt: skip
        subs.append(await tier.subscribe(T, q))
    times = []
    p = partition_of(T, "asset")
    for _ in range(runs):
        live = tier.status()["live_shards"]
        victim = owner(p, live)
        epochs = [s.epoch for s in subs]
        h = ray.get_actor(f"{tier.name}:shard:{victim}", namespace=tier.namespace)
        t0 = time.monotonic()
        ray.kill(h)
        while any(s.epoch == e for s, e in zip(subs, epochs, strict=True)):
            await asyncio.sleep(0.01)
        times.append(time.monotonic() - t0)
        # Let the controller start the dead shard again, and ownership settle back.
        while len(tier.status()["live_shards"]) < len(live):
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
    for s in subs:
        await s.close()
    await w.aclose()
    return times


COLUMNS = ["benchmark", "p50_ms", "p99_ms", "changes_per_s", "write_rate", "setup_s",
           "frames", "median_s", "target", "load", "runs", "error"]  # fmt: skip
LABELS = {"direct": "in-cluster", "actor": "gateway actor", "redis": "Redis"}


async def main(args: argparse.Namespace) -> None:
    ray.init(num_cpus=4, include_dashboard=False, namespace="raycluster-bench")
    rows: list[dict[str, Any]] = []
    srv = LocalRedis()
    url = srv.start()

    async def section(
        name: str, tier_name: str, shards: int, body: Any, ttl_s: float = 2.0,
        gateway_transport: str = "ray",
    ) -> None:  # fmt: skip
        if args.only and not any(o in name for o in args.only):
            return
        # One failing section is recorded and the others still run; the table
        # is written after every section, so a stopped run keeps what it had.
        tier = Tier.start(settings(tier_name, url, shards, ttl_s, gateway_transport))
        try:
            rows.extend(await body(tier))
        except Exception as e:
            rows.append({"benchmark": name, "error": f"{type(e).__name__}: {e}"[:160]})
        finally:
            tier.stop()
        report("bench_tier", rows, COLUMNS)

    async def failovers(tier: Tier) -> list[dict[str, Any]]:
        times = await failover(tier, args.runs)
        return [{"benchmark": "failover (kill owner for good, TTL 2 s)",
                 "median_s": statistics.median(times), "target": "<= TTL + 1 s = 3 s",
                 "runs": [round(t, 2) for t in times]}]  # fmt: skip

    async def latencies(tier: Tier, paths: tuple[str, ...] = ("direct", "redis")) -> Any:
        # The paths take turns within each run, so both sides of a comparison see
        # the same machine, and which goes first alternates from run to run; the
        # load average is recorded beside each rate.
        out = []
        for rate in [200, 1000] if args.quick else [200, 1000, 2000]:
            res: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
            load = []
            for i in range(args.runs):
                for path in paths if i % 2 == 0 else paths[::-1]:
                    res[path].append(await latency(tier, path, rate, 2.0 if args.quick else 5.0))
                load.append(os.getloadavg()[0])
            for path in paths:
                label = LABELS[path]
                if tier.settings.gateway_transport == "redis":
                    label += " over Redis"
                rs = res[path]
                out.append({"benchmark": f"latency {label} path @ {rate}/s",
                            "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                            "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                            "target": "p99 <= 20 ms" if rate == 1000 else "",
                            "load": round(statistics.median(load), 2),
                            "runs": [f"{r['p50_ms']:.1f}/{r['p99_ms']:.1f}"
                                     for r in rs]})  # fmt: skip
        return out

    subs_n, nrows, changes = (1000, 10_000, 20_000) if args.quick else (10_000, 100_000, 100_000)
    subs_n, nrows, changes = args.subs or subs_n, args.rows or nrows, args.changes or changes

    def throughputs(path: str) -> Any:
        async def run(tier: Tier) -> list[dict[str, Any]]:
            r = await throughput(tier, path, subs_n, nrows, changes, args.runs)
            name = f"one shard, {subs_n} subs, {LABELS[path]} path"
            med = statistics.median
            return [{"benchmark": f"{name}, live writes",
                     "changes_per_s": med(r["live"]), "write_rate": med(r["write"]),
                     "setup_s": r["setup_s"], "frames": f"{min(r['frames'])}/{changes}",
                     "runs": [round(x) for x in r["live"]]},
                    {"benchmark": f"{name}, draining a backlog",
                     "changes_per_s": med(r["drain"]), "target": ">= 10000 changes/s",
                     "frames": f"{min(r['drain_frames'])}/{changes}",
                     "runs": [round(x) for x in r["drain"]]}]  # fmt: skip

        return run

    try:
        await section("failover", "bench-fo", 3, failovers)
        # The in-cluster and Redis paths side by side (the same machine, turn about),
        # then the gateway actors alone (they load the machine more).
        await section("latency", "bench-lat", 1, latencies)
        await section("latency gateway actor", "bench-lat-gw", 1,
                      lambda t: latencies(t, ("actor",)))  # fmt: skip
        # Gateway actors reading their Redis delta stream (gateway_transport).
        await section("latency gateway actor over redis", "bench-lat-rt", 1,
                      lambda t: latencies(t, ("actor",)), gateway_transport="redis")  # fmt: skip
        for path in ("direct", "actor", "redis"):
            await section(f"one shard, {subs_n} subs, {path} path", f"bench-tp-{path}", 1,
                          throughputs(path), ttl_s=60.0)  # fmt: skip
    finally:
        srv.stop()
        ray.shutdown()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--subs", type=int, help="subscriptions of the throughput sections")
    ap.add_argument("--rows", type=int, help="rows of the throughput sections")
    ap.add_argument("--changes", type=int, help="changes written by the throughput sections")
    ap.add_argument("--only", action="append", help="run sections whose name contains this")
    asyncio.run(main(ap.parse_args()))
