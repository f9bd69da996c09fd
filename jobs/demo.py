"""The main job: the tier on a local Ray with the embedded Redis, and a failover.

Starts three shards and an in-cluster gateway, writes rows, keeps a few live
windows (two through the in-cluster gateway, one through an external gateway
over Redis), prints them as they change, kills the shard that owns them
mid-way, shows the failover, and checks every window against a brute-force
recomputation at the end. Exit status 0 means every window was exact.

    python jobs/demo.py [--seconds 12] [--rate 200] [--config configs/tier.yaml]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray
from _oracle import top_n

import raycluster
from raycluster import LiveQuery, SortKey, Tier, TierSettings, eq, gt
from raycluster.cluster import owner, partition_of

ROOT = Path(__file__).resolve().parent.parent
KINDS, SITES = ["pump", "valve", "fan"], ["north", "south", "east"]


def random_asset(rnd: random.Random) -> dict[str, Any]:
    return {
        "name": f"asset-{rnd.randrange(1000):03}",
        "kind": rnd.choice(KINDS),
        "site": rnd.choice(SITES),
        "temp": rnd.randrange(100),
        "owner": f"u{rnd.randrange(5)}",
    }


def show(label: str, ids: list[str]) -> None:
    print(f"  {label:<24} {' '.join(ids)}", flush=True)


async def main(args: argparse.Namespace) -> int:
    rnd = random.Random(args.seed)
    settings = TierSettings.load(args.config, shards=3)
    t0 = time.monotonic()
    if not ray.is_initialized():
        # Logical CPUs: three shards and a gateway fit on any laptop.
        ray.init(num_cpus=max(4, os.cpu_count() or 1), namespace=settings.namespace)
    tier = Tier.start(settings)
    print(f"tier up in {time.monotonic() - t0:.1f}s: {len(tier.status()['live_shards'])} shards,"
          f" redis {tier.redis_url}", flush=True)  # fmt: skip
    writer = tier.writer()
    truth: dict[str, dict[str, Any]] = {}
    for i in range(300):
        row = random_asset(rnd)
        await writer.upsert("acme", "asset", f"a{i:03}", row)
        truth[f"a{i:03}"] = row
    queries = {
        "hot pumps (in-cluster)": LiveQuery(
            entity="asset", where=[eq("kind", "pump"), gt("temp", 50)],
            sort=[SortKey(column="temp", desc=True)], limit=5),
        "north by name (in-cluster)": LiveQuery(
            entity="asset", where=[eq("site", "north")], sort=[SortKey(column="name")], limit=5),
        "u1's assets (external)": LiveQuery(
            entity="asset", where=[eq("owner", "u1")], sort=[SortKey(column="name")], limit=5),
    }  # fmt: skip
    remote = await raycluster.connect(tier.redis_url, settings)
    subs = {}
    for label, q in queries.items():
        subs[label] = await (remote if "external" in label else tier).subscribe("acme", q)
    print("initial windows:")
    for label, sub in subs.items():
        show(label, sub.rows.ids)

    p = partition_of("acme", "asset")
    victim = owner(p, tier.status()["live_shards"])
    written, killed_at, failover_s = 0, None, None
    epochs = {label: sub.epoch for label, sub in subs.items()}
    last = {label: sub.rows.ids for label, sub in subs.items()}
    start = time.monotonic()
    while time.monotonic() - start < args.seconds:
        agg_id = f"a{rnd.randrange(320):03}"
        if rnd.random() < 0.1:
            await writer.delete("acme", "asset", agg_id)
            truth.pop(agg_id, None)
        else:
            row = random_asset(rnd)
            await writer.upsert("acme", "asset", agg_id, row)
            truth[agg_id] = row
        written += 1
        if killed_at is None and time.monotonic() - start > args.seconds / 3:
            print(f"--- killing {victim}, owner of partition {p} (acme/asset) ---", flush=True)
            ray.kill(ray.get_actor(f"{settings.name}:shard:{victim}", namespace=settings.namespace))
            killed_at = time.monotonic()
        if killed_at and failover_s is None and all(s.epoch > epochs[k] for k, s in subs.items()):
            failover_s = time.monotonic() - killed_at
            newest = max(s.epoch for s in subs.values())
            print(f"--- failover: every window reset (epoch {newest}) after {failover_s:.2f}s ---",
                  flush=True)  # fmt: skip
        for label, sub in subs.items():
            if sub.rows.ids != last[label]:
                last[label] = sub.rows.ids
                show(label, sub.rows.ids)
        await asyncio.sleep(1 / args.rate)

    # Quiet now: wait for the last frames, then compare with the truth.
    deadline = time.monotonic() + 10
    exact = False
    while time.monotonic() < deadline and not exact:
        await asyncio.sleep(0.2)
        exact = all(sub.rows.ids == top_n(truth, queries[k]) for k, sub in subs.items())
    print("final windows:")
    for label, sub in subs.items():
        want = top_n(truth, queries[label])
        show(label, sub.rows.ids)
        if sub.rows.ids != want:
            show("  truth", want)
    status = tier.status()
    print(f"summary: {written} writes, {sum(len(s.rows) for s in subs.values())} rows held, "
          f"failover {failover_s if failover_s is None else round(failover_s, 2)}s, "
          f"live shards {status['live_shards']}, exact: {exact}")  # fmt: skip
    for sub in subs.values():
        await sub.close()
    await remote.aclose()
    await writer.aclose()
    tier.stop()
    return 0 if exact else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "tier.yaml"))
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--rate", type=float, default=200.0, help="writes per second")
    ap.add_argument("--seed", type=int, default=7)
    raise SystemExit(asyncio.run(main(ap.parse_args())))
