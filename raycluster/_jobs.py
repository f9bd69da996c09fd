"""The jobs behind `raycluster demo` / `jobs/demo.py` and `raycluster serve` / `jobs/serve.py`.

Both need Ray, imported when a job runs (building their argument parsers does not).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

from raycluster._connect import connect
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
SERVE_STATUS_KEYS = (
    "live_shards", "subscriptions", "partitions_owned", "frames_per_s", "changes_per_s", "lag_ms",
)  # fmt: skip

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


def demo(args: argparse.Namespace) -> int:
    """Run the main job (see `jobs/demo.py`); 0 when every window was exact at the end."""
    return asyncio.run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    if not getattr(args, "redis_cluster", False):
        return await _demo_on(TierSettings.load(args.config, shards=3), args)
    from raycluster.redis import LocalRedisCluster

    with LocalRedisCluster(masters=3) as cluster:
        url = await asyncio.to_thread(cluster.start)
        print(f"local Redis Cluster: {len(cluster.urls)} masters, seed {url}", flush=True)
        redis = {"redis_url": url, "redis_cluster": True}
        return await _demo_on(TierSettings.load(args.config, shards=3, redis=redis), args)


async def _demo_on(settings: TierSettings, args: argparse.Namespace) -> int:
    import ray

    from raycluster.actors import Tier

    rnd = random.Random(args.seed)
    t0 = time.monotonic()
    if not ray.is_initialized():
        # Logical CPUs: three shards and a gateway fit on any laptop.
        ray.init(num_cpus=max(4, os.cpu_count() or 1), namespace=settings.namespace)
    tier = Tier.start(settings)
    print(f"tier up in {time.monotonic() - t0:.1f}s: {len(tier.status()['live_shards'])} shards,"
          f" redis {tier.redis_url}", flush=True)  # fmt: skip
    writer = tier.writer()
    truth: dict[str, dict[str, Any]] = {f"a{i:03}": _random_asset(rnd) for i in range(300)}
    await writer.upsert_many("acme", "asset", truth)
    queries = {
        "hot pumps (in-cluster)": LiveQuery(
            entity="asset", where=[eq("kind", "pump"), gt("temp", 50)],
            sort=[SortKey(column="temp", desc=True)], limit=5),
        "north by name (in-cluster)": LiveQuery(
            entity="asset", where=[eq("site", "north")], sort=[SortKey(column="name")], limit=5),
        "u1's assets (external)": LiveQuery(
            entity="asset", where=[eq("owner", "u1")], sort=[SortKey(column="name")], limit=5),
    }  # fmt: skip
    remote = await connect(tier.redis_url, settings)
    subs = {}
    for label, q in queries.items():
        subs[label] = await (remote if "external" in label else tier).subscribe("acme", q)
    print("initial windows:")
    for label, sub in subs.items():
        _show(label, sub.rows.ids)

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
            row = _random_asset(rnd)
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
                _show(label, sub.rows.ids)
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
        _show(label, sub.rows.ids)
        if sub.rows.ids != want:
            _show("  truth", want)
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


def serve(args: argparse.Namespace) -> int:
    """Start (or re-adopt) the tier and block, printing status lines, until SIGTERM/SIGINT.

    While actors are pending, prints what is ready, what waits on which
    resources and what the cluster has free; past `start_timeout_s` the start
    fails (`NotReadyError`, exit 1). Every actor of the tier is stopped before
    this returns, however it ends (a signal during the start included).
    """
    import ray

    from raycluster.actors import StartProgress, Tier
    from raycluster.actors.attach import attach_ray

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = TierSettings.load(args.config)
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
        print(f"serving tier {tier.name!r}: redis {tier.redis_url}, gateways {tier.gateway_ids}",
              flush=True)  # fmt: skip
        while True:
            time.sleep(args.status_every)
            st = tier.status()
            line = {k: st[k] for k in SERVE_STATUS_KEYS}
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
