"""Where a frame's time goes: per-hop timestamps from the write to the driver.

    python benchmarks/trace_hops.py [--rate 1000] [--seconds 5] [--runs 3]

Runs the latency workload of `bench_tier.py` (100 windows, fixed-rate
renames) on a local Ray with one shard, over the in-cluster path
(`Tier.subscribe`: the handle's own gateway in this process), through a
gateway actor (`subscribe(..., gateway_id=...)`: frames as object refs), and
over the Redis path (`raycluster.connect()`: an external gateway in this
process), and stamps every frame on its way, with no change to the package:
every Ray worker patches the hops at start-up (`worker_process_setup_hook`),
and so does this process. The stamps ride in the wire entry itself (a sixth
element), so each frame carries its own times across processes:

    write   the write script's time (`at`, Redis TIME, ms)
    match   the shard appended the frame to a gateway's outbox (the change matched)
    send    the shard handed the batch to its delta bus
    gw_in   the gateway received the batch (through a gateway actor: in the actor)
    driver  the subscription in this process got it

(A gateway actor's hand-over to the driver's stream is inside `driver`: the
actor class is pickled by value into its worker, out of reach of a patch.)

Prints the median and p99 of each hop per path, and writes
benchmarks/results/trace_hops.json. All clocks are this machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

HOPS = ("match", "send", "gw_in", "driver")
_SAMPLES: list[dict[str, float]] = []


def _stamp(entries: list[Any], hop: str) -> None:
    now = time.time() * 1000
    for e in entries:
        if isinstance(e, list) and len(e) >= 5:
            if len(e) == 5:
                e.append({})
            if isinstance(e[5], dict):
                e[5][hop] = now


def install() -> None:
    """Patch the hops in this process (Ray runs it in every worker at start-up)."""
    from raycluster.actors import gateway as actor_gw
    from raycluster.client import subscription
    from raycluster.cluster import gateway as cluster_gw
    from raycluster.cluster import shard
    from raycluster.redis import buses

    append = shard.Shard._append

    def _append(self: Any, served: Any, frames: Any) -> Any:
        ob = append(self, served, frames)
        _stamp(ob.frames[len(ob.frames) - len(frames) :], "match")
        return ob

    shard.Shard._append = _append  # type: ignore[method-assign]

    for cls in (actor_gw.RayDeltaBus, buses.RedisDeltaBus):
        send = cls.send

        async def _send(self: Any, gateway_id: str, frames: Any, _orig: Any = send) -> None:
            _stamp(frames, "send")
            await _orig(self, gateway_id, frames)

        cls.send = _send  # type: ignore[method-assign]

    receive = cluster_gw.Gateway.receive

    def _receive(self: Any, batch: Any) -> None:
        _stamp(batch, "gw_in")
        receive(self, batch)

    cluster_gw.Gateway.receive = _receive  # type: ignore[method-assign]

    deliver_wire = subscription.Subscription.deliver_wire

    def _deliver_wire(self: Any, entries: Any) -> None:
        now = time.time() * 1000
        for e in entries:
            if len(e) > 5 and isinstance(e[5], dict) and e[3].get("at"):
                _SAMPLES.append({"write": float(e[3]["at"]), **e[5], "driver": now})
        deliver_wire(self, entries)

    subscription.Subscription.deliver_wire = _deliver_wire  # type: ignore[method-assign]


def hop_table(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median and p99 (ms) of each hop over `samples` (from the previous stamp present)."""
    out: dict[str, dict[str, float]] = {}
    for hop in HOPS:
        vals = []
        for s in samples:
            if hop not in s:
                continue
            prev = max((s[h] for h in ("write", *HOPS[: HOPS.index(hop)]) if h in s), default=None)
            if prev is not None:
                vals.append(s[hop] - prev)
        if vals:
            vals.sort()
            out[hop] = {"p50": statistics.median(vals), "p99": vals[int(0.99 * (len(vals) - 1))]}
    total = sorted(s["driver"] - s["write"] for s in samples)
    if total:
        out["total"] = {"p50": statistics.median(total), "p99": total[int(0.99 * (len(total) - 1))]}
    return out


async def main(args: argparse.Namespace) -> None:
    import ray
    from _report import report
    from bench_tier import latency, settings

    from raycluster import Tier
    from raycluster.redis import LocalRedis

    install()
    env = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    ray.init(
        num_cpus=4, include_dashboard=False, namespace="raycluster-trace",
        runtime_env={"worker_process_setup_hook": "trace_hops.install", "env_vars": env},
    )  # fmt: skip
    rows: list[dict[str, Any]] = []
    srv = LocalRedis()
    url = srv.start()
    try:
        for label, transport, path in (
            ("in-cluster", "ray", "direct"),
            ("gateway actor", "ray", "actor"),
            ("Redis path", "ray", "redis"),
        ):
            tier = Tier.start(settings(f"trace-{transport}-{path}", url, 1,
                                       gateway_transport=transport))  # fmt: skip
            try:
                per_run = []
                for _ in range(args.runs):
                    _SAMPLES.clear()
                    await latency(tier, path, args.rate, args.seconds)
                    per_run.append(hop_table(list(_SAMPLES)))
            finally:
                await tier.aclose()
            for hop in (*HOPS, "total"):
                got = [r[hop] for r in per_run if hop in r]
                if got:
                    rows.append({
                        "path": label, "hop": hop,
                        "p50_ms": round(statistics.median(g["p50"] for g in got), 2),
                        "p99_ms": round(statistics.median(g["p99"] for g in got), 2),
                        "rate": args.rate, "runs": args.runs,
                    })  # fmt: skip
            report("trace_hops", rows, ["path", "hop", "p50_ms", "p99_ms", "rate", "runs"])
    finally:
        srv.stop()
        ray.shutdown()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000.0, help="writes per second")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds of writing per run")
    ap.add_argument("--runs", type=int, default=3)
    asyncio.run(main(ap.parse_args()))
