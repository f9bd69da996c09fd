"""Node loss on a multi-node Ray: how long until the clients it hit have a fresh window.

    python benchmarks/bench_node_loss.py [--runs 5] [--subs 60]

A private `ray.cluster_utils.Cluster` (several raylets on this machine, under
its own RAY_TMPDIR, on free ports) runs a tier with the default cadences of
configs/tier.yaml (heartbeat TTL 3 s, ownership every 0.25 s): shards spread
over three CPU nodes, two gateways on nodes with `rc_gateway`, the
controller on the head. `--subs` subscriptions through the gateway actors
(`Tier.subscribe(..., gateway_id=...)`, round-robin) stay open throughout.

* gateway node lost: the node of the gateway holding the most subscriptions
  is removed; time until every subscription it held has a complete fresh
  window (moved by the driver to the other gateway: new id, reset, window);
* shard node lost: the node of one shard is removed; time until every
  subscription of that shard's partitions has a complete fresh window (from
  the new owner, after the heartbeat TTL).

Before each loss a spare node of the same kind joins, so capacity stays; the
next run starts once the tier has settled. Prints the median and every run,
writes benchmarks/results/bench_node_loss.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The cluster's temp dirs and its "current cluster" file stay out of /tmp/ray,
# so `ray.init("auto")` elsewhere on this machine never finds this cluster.
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rcb", dir="/tmp"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray
from _report import report
from ray.cluster_utils import Cluster

from raycluster import EntitySpec, LiveQuery, SortKey, Subscription, Tier, TierSettings
from raycluster.cluster import owner, partition_of
from raycluster.redis import LocalRedis

ROOT = Path(__file__).resolve().parents[1]
ASSET = EntitySpec(name="asset", columns={"name": "str", "temp": "int"}, max_window=100)
QUERY = LiveQuery(entity="asset", sort=[SortKey(column="name")], limit=10)
TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def settings(name: str, namespace: str, url: str) -> TierSettings:
    return TierSettings.load(
        ROOT / "configs" / "tier.yaml",
        name=name,
        namespace=namespace,
        shards=3,
        gateways=2,
        shard_num_cpus=0.5,
        gateway_resources={"rc_gateway": 0.01},
        entities=[ASSET.model_dump()],
        redis={"redis_url": url, "key_prefix": name, "heartbeat_ttl_s": 3.0},
    )


class Bench:
    def __init__(self, cluster: Cluster, tier: Tier) -> None:
        self.cluster = cluster
        self.tier = tier
        self.nodes: dict[str, Any] = {}  # node id -> Node
        self.subs: list[Subscription] = []
        self.on_gateway: dict[int, str] = {}  # id(sub) -> gateway id it was subscribed through

    def add(self, **args: Any) -> None:
        # On the main thread (Ray installs signal handlers); nothing is measured meanwhile.
        node = self.cluster.add_node(**args)
        self.nodes[node.node_id] = node

    async def status(self) -> dict[str, Any]:
        st: dict[str, Any] = await asyncio.to_thread(self.tier.status)
        return st

    async def gateway_nodes(self) -> dict[str, str]:
        out = {}
        for gid in self.tier.gateway_ids:
            h = await asyncio.to_thread(self.tier.gateway, gid)
            out[gid] = (await h.status.remote())["node_id"]
        return out

    async def settle(self) -> None:
        """Every shard live and owning its partitions, every gateway ready."""
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            st = await self.status()
            shards = st["shards"]
            if (
                len(st["live_shards"]) == 3
                and all("error" not in s for s in shards.values())
                and st["partitions_owned"] == 256
            ):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"tier did not settle: {st}")
            await asyncio.sleep(0.5)
        for gid in self.tier.gateway_ids:
            h = await asyncio.to_thread(self.tier.gateway, gid)
            while True:
                try:
                    await asyncio.wait_for(h.ready.remote(), 10)
                    break
                except (ray.exceptions.ActorUnavailableError, TimeoutError):
                    if time.monotonic() > deadline:  # restarting after its node was lost
                        raise
                    await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)  # let a partition that moved back settle its resets

    async def lose(self, node_id: str, hit: list[Subscription]) -> float:
        """Remove the node; seconds until every subscription in `hit` has a fresh window."""
        fresh = [s.next_reset() for s in hit]
        start = time.monotonic()
        await asyncio.to_thread(self.cluster.remove_node, self.nodes.pop(node_id))
        await asyncio.wait_for(asyncio.gather(*fresh), TIMEOUT_S)
        return time.monotonic() - start

    async def gateway_loss(self) -> tuple[float, int]:
        count: dict[str, int] = {}
        for s in self.subs:
            gid = self.tier.gateway_of(s) or ""
            count[gid] = count.get(gid, 0) + 1
        victim = max(count, key=lambda g: count[g])
        hit = [s for s in self.subs if self.tier.gateway_of(s) == victim]
        node = (await self.gateway_nodes())[victim]
        return await self.lose(node, hit), len(hit)

    async def shard_loss(self) -> tuple[float, int]:
        st = await self.status()
        live = st["live_shards"]
        victim = "shard-0"
        node = st["shards"][victim]["node_id"]
        hit = [s for s in self.subs if owner(partition_of(s.tenant, "asset"), live) == victim]
        return await self.lose(node, hit), len(hit)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    ports = ("gcs_server_port", "dashboard_agent_listen_port", "metrics_export_port",
             "runtime_env_agent_port", "ray_client_server_port")  # fmt: skip
    head = {"num_cpus": 0, "include_dashboard": False, **{p: free_port() for p in ports}}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    rows: list[dict[str, Any]] = []
    try:
        namespace = f"bench-{os.getpid()}"
        ray.init(address=cluster.address, namespace=namespace, log_to_driver=False)
        nodes: dict[str, Any] = {}
        for args_ in [{"num_cpus": 1}] * 3 + [{"num_cpus": 0, "resources": {"rc_gateway": 1}}] * 2:
            node = cluster.add_node(**args_)
            nodes[node.node_id] = node
        with LocalRedis() as redis:
            tier = await asyncio.to_thread(
                Tier.start, settings(f"nl{os.getpid()}", namespace, redis.url)
            )
            b = Bench(cluster, tier)
            b.nodes.update(nodes)
            try:
                await b.settle()
                writer = tier.writer()
                rnd = random.Random(3)
                tenants = {}
                for i in range(args.subs // 2):
                    t = f"t{i}"
                    tenants[i] = t
                    seed = {
                        f"a{k:02}": {"name": f"n{rnd.randrange(99)}", "temp": rnd.randrange(99)}
                        for k in range(20)
                    }
                    await writer.upsert_many(t, "asset", seed)
                gids = tier.gateway_ids  # through the gateway actors: their loss is measured
                for i in range(args.subs):
                    gid = gids[i % len(gids)]
                    b.subs.append(await tier.subscribe(tenants[i // 2], QUERY, gateway_id=gid))
                for kind in ("gateway", "shard"):
                    times: list[float] = []
                    hits: list[int] = []
                    for _ in range(args.runs):
                        if kind == "gateway":
                            b.add(num_cpus=0, resources={"rc_gateway": 1})
                        else:
                            b.add(num_cpus=1)
                        await b.settle()
                        if kind == "gateway":
                            took, n = await b.gateway_loss()
                        else:
                            took, n = await b.shard_loss()
                        times.append(took)
                        hits.append(n)
                        print(f"{kind} node lost: {n} subscriptions fresh after {took:.2f}s",
                              flush=True)  # fmt: skip
                    rows.append({
                        "lost": f"{kind} node",
                        "subscriptions_hit": statistics.median(hits),
                        "median_s": round(statistics.median(times), 2),
                        "min_s": round(min(times), 2),
                        "max_s": round(max(times), 2),
                        "runs_s": [round(t, 2) for t in times],
                        "moved_by_driver": tier.moves["moved"] if kind == "gateway" else None,
                    })  # fmt: skip
                await writer.aclose()
            finally:
                for s in b.subs:
                    s.mark_closed()
                await asyncio.to_thread(tier.stop)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--subs", type=int, default=60)
    args = parser.parse_args()
    rows = asyncio.run(run(args))
    report("bench_node_loss", rows,
           ["lost", "subscriptions_hit", "median_s", "min_s", "max_s", "runs_s"])  # fmt: skip


if __name__ == "__main__":
    main()
