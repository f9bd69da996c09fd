"""The tier on Ray over Redis Cluster: a crashed shard fails over exactly, as on one Redis.

The same tier as `test_failover`, with `redis.redis_cluster: true` against a
private cluster of three masters: keys take their hash-tagged form, shards
read each partition stream on its own, and every in-cluster and external
subscription gets a newer-epoch reset and then exact live frames.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator

import pytest
import ray
from ray_helpers import (
    close_all,
    owner_of,
    random_row,
    running_tier,
    shadow_writer,
    shard_handle,
    shard_ids,
    tier_settings,
    wait_exact,
)
from support import HEARTBEAT_TTL_S, OWNERSHIP_INTERVAL_S, private_redis_cluster, unique, wait_for

import raycluster
from raycluster import LiveQuery, SortKey, Tier, eq
from raycluster.redis import LocalRedisCluster

PUMPS = LiveQuery(
    entity="asset",
    where=[eq("kind", "pump")],
    sort=[SortKey(column="temp", desc=True), SortKey(column="name")],
    limit=5,
)


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    with private_redis_cluster(masters=3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
async def tier(ray_namespace: str, redis_cluster: LocalRedisCluster) -> AsyncIterator[Tier]:
    settings = tier_settings(unique("rcluster"), ray_namespace, redis={"redis_cluster": True})
    async with running_tier(settings, redis_cluster.url) as t:
        yield t


async def test_a_crashed_shard_fails_over_exactly_on_redis_cluster(tier: Tier) -> None:
    rnd = random.Random(11)
    tenant = unique("crash")
    remote = await raycluster.connect(tier.redis_url, tier.settings)
    subs = []
    try:
        async with shadow_writer(tier) as shadow:
            await shadow.upsert_many(tenant, {f"a{i:03}": random_row(rnd) for i in range(30)})
            subs = [await tier.subscribe(tenant, PUMPS), await remote.subscribe(tenant, PUMPS)]
            await wait_exact([(s, tenant, PUMPS) for s in subs], shadow)
            epochs = [s.epoch for s in subs]
            ray.kill(shard_handle(tier, owner_of(tenant, shard_ids(3))), no_restart=False)

            def reset() -> bool:
                return all(
                    s.epoch > e and s.rows.complete for s, e in zip(subs, epochs, strict=True)
                )

            await wait_for(reset, HEARTBEAT_TTL_S + OWNERSHIP_INTERVAL_S + 30, what="the reset")
            await wait_exact([(s, tenant, PUMPS) for s in subs], shadow)
            for _ in range(10):  # live frames flow again
                await shadow.upsert(tenant, f"a{rnd.randrange(40):03}", random_row(rnd))
            await shadow.upsert(tenant, "top", {"name": "t", "kind": "pump", "temp": 1000})
            await wait_exact([(s, tenant, PUMPS) for s in subs], shadow)
            assert "top" in subs[0].rows.ids  # (after any pump whose temp is null)
    finally:
        await close_all(subs)
        await remote.aclose()
