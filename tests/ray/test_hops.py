"""How many hops a frame takes on the in-cluster path (`Tier.subscribe`).

A frame must travel shard → Redis (one XADD to the subscribing handle's own
delta stream) → the handle's own gateway, which reads it: per delivered
batch exactly one XADD, no actor call, and nothing through a gateway actor.
Counted on a Redis of this test alone (`INFO commandstats`), the shard's
actor-call counter, the gateway actors' frame counters and the own
gateway's batch counter. A frame that took an extra hop (a gateway actor, a
second stream) shows in one of them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from ray_helpers import ENTITY, running_tier, tier_settings
from support import private_redis, unique, wait_for

from raycluster import LiveQuery, SortKey, eq
from raycluster.actors import gateway_name, shard_name

TENANT = "hops"
SUBS = 5
CHANGES = 60


def _stats(url: str) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        info: dict[str, Any] = client.info("commandstats")
    finally:
        client.close()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


async def test_a_frame_takes_one_xadd_and_no_actor_call(ray_namespace: str) -> None:
    with private_redis() as srv:
        settings = tier_settings(unique("hops"), ray_namespace, shards=1, gateways=1)
        async with running_tier(settings, srv.url) as tier:
            writer = tier.writer()
            try:
                rows = {f"a{i:02}": {"name": f"n{i:02}", "kind": f"k{i % SUBS}", "temp": i}
                        for i in range(40)}  # fmt: skip
                await writer.upsert_many(TENANT, ENTITY, rows)
                by_name = [SortKey(column="name")]
                queries = [
                    LiveQuery(entity=ENTITY, where=[eq("kind", f"k{k}")], sort=by_name, limit=20)
                    for k in range(SUBS)
                ]
                subs = [await tier.subscribe(TENANT, q) for q in queries]
                (sid,) = tier.status()["live_shards"]
                shard = ray.get_actor(shard_name(tier.name, sid), namespace=tier.namespace)
                gw = ray.get_actor(gateway_name(tier.name, tier.gateway_ids[0]),
                                   namespace=tier.namespace)  # fmt: skip
                before = _stats(srv.url)
                calls0 = (await shard.status.remote())["ray_calls"]
                gw_frames0 = (await gw.status.remote())["frames"]
                batches0 = tier.own_gateway_status()["batches_received"]
                frames0 = sum(s.frames_in for s in subs)

                # Each change renames a row inside one window: one frame for one sub.
                for k in range(CHANGES):
                    agg = f"a{k % 40:02}"
                    await writer.upsert(TENANT, ENTITY, agg, {**rows[agg], "name": f"m{k:03}"})
                await wait_for(lambda: sum(s.frames_in for s in subs) - frames0 >= CHANGES, 30,
                               what="every frame applied")  # fmt: skip
                await asyncio.sleep(0.5)  # nothing more is on its way

                after = _stats(srv.url)
                xadds = after.get("xadd", 0) - before.get("xadd", 0)
                batches = tier.own_gateway_status()["batches_received"] - batches0
                assert 1 <= batches <= CHANGES
                # One XADD per change (its event) and one per delivered batch, no more.
                assert xadds == CHANGES + batches, (xadds, batches)
                assert (await shard.status.remote())["ray_calls"] == calls0  # no actor call
                assert (await gw.status.remote())["frames"] == gw_frames0  # no gateway actor
            finally:
                await writer.aclose()
