"""Multi-node scenarios on a private `ray.cluster_utils.Cluster` (run by `test_multinode.py`).

Usage: `python multinode_run.py RESULTS.json` with `RAY_TMPDIR` set to a
private directory. Several raylets run on this machine:

    head  CPU 1, rc_gateway    shards; a gateway (where the lost one restarts)
    s1    CPU 1                shards
    s2    CPU 1                shards
    g1    rc_gateway           a gateway
    c1    rc_control           the controller
    c2    rc_control           added once the controller runs on c1; it restarts here

The tier places the controller on `rc_control`, gateways on `rc_gateway`
(spread), shards spread over the CPU nodes. In-cluster (`Tier.subscribe`,
through both gateways) and external (`raycluster.connect`) subscriptions of
tenants on every shard stay open throughout while a writer keeps writing;
the scenarios run in order, each removing one node (`remove_node` is a node
failure), and after each every window equals the brute-force truth, every
stream read so far is in order (no gap, no stale frame), nothing is closed,
and exactly the live subscriptions are registered in Redis and served.
Results are written as JSON: `{scenario: {"ok": bool, "error": str, "seconds": float}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import os
import random
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# `support` and the Ray tier's helpers (pytest puts both on a test's path, not on this
# script's).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray
from ray.cluster_utils import Cluster
from ray_helpers import (
    ENTITY,
    Shadow,
    StreamCheck,
    random_row,
    running_tier,
    shadow_writer,
    status,
    tenants_on,
    tier_settings,
    wait_converged,
    wait_exact,
    wait_nothing_leaked,
)
from ray_procs import head_args
from support import private_redis, unique, wait_for

import raycluster
from raycluster import LiveQuery, RemoteGateway, SortKey, Subscription, Tier, eq
from raycluster._tasks import checkpoint
from raycluster.redis import RedisRegistry

SCENARIOS = ("spread", "shard_node", "gateway_node", "controller_node")
STEP_TIMEOUT_S = 90.0  # each wait of a scenario (a loaded 2-core machine)
# Every thread's stack goes to stderr this long after the start (before the test's
# 420 s bound), so a run that hangs says where.
STACKS_AFTER_S = 380.0
PUMPS = LiveQuery(
    entity=ENTITY,
    where=[eq("kind", "pump")],
    sort=[SortKey(column="temp", desc=True), SortKey(column="name")],
    limit=5,
)
BY_NAME = LiveQuery(entity=ENTITY, sort=[SortKey(column="name")], limit=6)


class World:
    """The cluster, the tier and the open subscriptions the scenarios share."""

    def __init__(self, cluster: Cluster, nodes: dict[str, Any], tier: Tier, shadow: Shadow,
                 remote: RemoteGateway, registry: RedisRegistry) -> None:  # fmt: skip
        self.cluster = cluster
        self.nodes = nodes
        self.tier = tier
        self.shadow = shadow
        self.remote = remote
        self.registry = registry
        self.rnd = random.Random(11)
        self.tenants: list[str] = []
        self.subs: list[tuple[Subscription, str, LiveQuery]] = []
        self.checks: dict[int, StreamCheck] = {}
        self.via: dict[int, str] = {}  # in-cluster subscription -> the gateway it started on

    def node_name(self, node_id: str) -> str:
        return next((n for n, node in self.nodes.items() if node.node_id == node_id), node_id)

    async def shard_nodes(self) -> dict[str, str]:
        st = await status(self.tier)
        return {sid: self.node_name(s.get("node_id", "?")) for sid, s in st["shards"].items()}

    async def gateway_nodes(self) -> dict[str, str]:
        out = {}
        for gid in self.tier.gateway_ids:
            h = await asyncio.to_thread(self.tier.gateway, gid)
            out[gid] = self.node_name((await h.status.remote())["node_id"])
        return out

    async def controller_node(self) -> str:
        return self.node_name((await status(self.tier))["controller_node"])

    async def write(self, n: int) -> None:
        for _ in range(n):
            t = self.rnd.choice(self.tenants)
            agg_id = f"a{self.rnd.randrange(30):02}"
            if self.rnd.random() < 0.2:
                await self.shadow.delete(t, agg_id)
            else:
                await self.shadow.upsert(t, agg_id, random_row(self.rnd))

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        """Keep writing (about 20 changes/s) while the body runs."""

        async def loop() -> None:
            while True:
                checkpoint()  # Python 3.11's wait_for (in redis-py) may lose our cancel
                await self.write(1)
                await asyncio.sleep(0.05)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=STEP_TIMEOUT_S)
            assert done, "the writer did not stop after its cancellation"
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def remove(self, name: str) -> None:
        node = self.nodes.pop(name)
        await asyncio.to_thread(self.cluster.remove_node, node)

    async def check_all(self) -> None:
        """Exact windows, in-order streams, nothing closed, exactly the live ones registered."""
        await wait_exact(self.subs, self.shadow, timeout_s=STEP_TIMEOUT_S)
        await self.write(20)  # live frames flow afterwards
        await wait_exact(self.subs, self.shadow, timeout_s=STEP_TIMEOUT_S)
        closed = [s.id for s, _, _ in self.subs if s.closed]
        assert not closed, f"closed: {closed}"
        for s, _, _ in self.subs:
            self.checks[id(s)].take(s)
        live = {s.id for s, _, _ in self.subs}
        own = [self.tier.own_gateway_id] if self.tier.own_gateway_id else []
        gws = [*self.tier.gateway_ids, *own, self.remote.id]
        await wait_nothing_leaked(self.tier, self.registry, gws, live, STEP_TIMEOUT_S)


async def open_subscriptions(w: World) -> None:
    """Two tenants per shard; each: two queries through one gateway actor, one through
    the other, one through the driver's own gateway (frames straight from the shards),
    one external."""
    live = (await status(w.tier))["live_shards"]
    for k, sid in enumerate(live):
        for t in tenants_on(sid, live, 2, f"mn{k}"):
            w.tenants.append(t)
            await w.shadow.upsert_many(t, {f"a{i:02}": random_row(w.rnd) for i in range(25)})
            ids = w.tier.gateway_ids
            g0, g1 = ids[len(w.tenants) % 2], ids[(len(w.tenants) + 1) % 2]
            for gid, q in ((g0, PUMPS), (g0, BY_NAME), (g1, BY_NAME)):
                sub = await w.tier.subscribe(t, q, gateway_id=gid)
                w.subs.append((sub, t, q))
                w.via[id(sub)] = gid
            w.subs.append((await w.tier.subscribe(t, PUMPS), t, PUMPS))  # its own gateway
            w.subs.append((await w.remote.subscribe(t, PUMPS), t, PUMPS))
    w.checks = {id(s): StreamCheck() for s, _, _ in w.subs}
    await w.check_all()


# -- scenarios ----------------------------------------------------------------------


async def spread(w: World) -> None:
    shards = await w.shard_nodes()
    assert sorted(shards.values()) == ["head", "s1", "s2"], shards  # one per CPU node
    gateways = await w.gateway_nodes()
    assert sorted(gateways.values()) == ["g1", "head"], gateways  # spread, on rc_gateway
    assert await w.controller_node() == "c1"


async def shard_node(w: World) -> None:
    before = await w.shard_nodes()
    lost = [sid for sid, n in before.items() if n == "s1"]
    async with w.writing():
        await w.remove("s1")
        await wait_converged(w.tier, 3, timeout_s=STEP_TIMEOUT_S)  # restarted elsewhere
    after = await w.shard_nodes()
    assert all(after[sid] in ("head", "s2") for sid in lost), after
    await w.check_all()


async def gateway_node(w: World) -> None:
    gateways = await w.gateway_nodes()
    (lost,) = [gid for gid, n in gateways.items() if n == "g1"]
    on_lost = sum(1 for s, _, _ in w.subs if w.via.get(id(s)) == lost)
    moved = w.tier.moves["moved"]
    async with w.writing():
        await w.remove("g1")
        await wait_for(lambda: w.tier.moves["moved"] - moved >= on_lost, STEP_TIMEOUT_S,
                       what=lambda: f"{on_lost} moves: {w.tier.moves}")  # fmt: skip
    await w.check_all()
    assert w.tier.moves["failed"] == 0

    async def restarted() -> bool:  # on the head, the one node left with rc_gateway
        try:
            return (await asyncio.wait_for(w.gateway_nodes(), 10))[lost] == "head"
        except Exception:  # still restarting
            return False

    await wait_for(restarted, STEP_TIMEOUT_S, interval_s=0.5, what=f"{lost} on the head")
    await w.check_all()  # its restart removed nothing live


async def controller_node(w: World) -> None:
    async with w.writing():
        await w.remove("c1")

        async def moved() -> bool:
            try:
                return await asyncio.wait_for(w.controller_node(), 10) == "c2"
            except Exception:  # restarting: unavailable for a moment
                return False

        await wait_for(moved, STEP_TIMEOUT_S, interval_s=0.5, what="controller on c2")
    await wait_converged(w.tier, 3, timeout_s=STEP_TIMEOUT_S)
    await w.check_all()


# -- driver -------------------------------------------------------------------------


def _dump_tasks() -> None:
    """Where every asyncio task waits (a hang's cause; faulthandler shows only threads)."""
    print("asyncio tasks:", file=sys.stderr)
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


async def run(results: dict[str, Any], out: Path) -> None:
    asyncio.get_running_loop().call_later(STACKS_AFTER_S - 5, _dump_tasks)
    steps: dict[str, Callable[[World], Awaitable[None]]] = {
        "spread": spread,
        "shard_node": shard_node,
        "gateway_node": gateway_node,
        "controller_node": controller_node,
    }
    cluster = Cluster(initialize_head=True, head_node_args=head_args(
        num_cpus=1, resources={"rc_gateway": 1}))  # fmt: skip
    nodes = {"head": cluster.head_node}
    try:
        nodes["s1"] = cluster.add_node(num_cpus=1)
        nodes["s2"] = cluster.add_node(num_cpus=1)
        nodes["g1"] = cluster.add_node(num_cpus=0, resources={"rc_gateway": 1})
        nodes["c1"] = cluster.add_node(num_cpus=0, resources={"rc_control": 1})
        namespace = unique("mn")
        ray.init(address=cluster.address, namespace=namespace, log_to_driver=False)
        settings = tier_settings(
            unique("multi"), namespace, shards=3, shard_num_cpus=0.5, gateways=2,
            controller_resources={"rc_control": 0.01}, gateway_resources={"rc_gateway": 0.01},
        )  # fmt: skip
        with private_redis() as redis:
            async with running_tier(settings, redis.url) as tier, shadow_writer(tier) as shadow:
                # Where the controller can restart (after it was placed on c1). On the
                # main thread: Ray installs signal handlers for a node it starts.
                nodes["c2"] = cluster.add_node(num_cpus=0, resources={"rc_control": 1})
                registry = RedisRegistry.from_url(tier.redis_url, settings=tier.settings.redis)
                remote = await raycluster.connect(tier.redis_url, tier.settings)
                w = World(cluster, nodes, tier, shadow, remote, registry)
                try:
                    await open_subscriptions(w)
                    for name, step in steps.items():
                        print("start", name, flush=True)
                        start = time.monotonic()
                        try:
                            await step(w)
                            results[name] = {"ok": True}
                        except BaseException as e:
                            results[name] = {"ok": False, "error": "".join(
                                traceback.format_exception(e))[-6000:]}  # fmt: skip
                            if not isinstance(e, Exception):
                                raise
                        results[name]["seconds"] = round(time.monotonic() - start, 1)
                        await asyncio.to_thread(out.write_text, json.dumps(results, indent=1))
                        print(name, results[name], flush=True)
                finally:
                    await remote.aclose()
                    await registry.aclose()
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> int:
    out = Path(sys.argv[1])
    results: dict[str, Any] = {}
    faulthandler.dump_traceback_later(STACKS_AFTER_S)
    try:
        asyncio.run(run(results, out))
    except BaseException:
        results.setdefault("_driver", {"ok": False, "error": traceback.format_exc()[-6000:]})
        print(traceback.format_exc(), file=sys.stderr, flush=True)
    out.write_text(json.dumps(results, indent=1))
    return 0 if all(r.get("ok") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
