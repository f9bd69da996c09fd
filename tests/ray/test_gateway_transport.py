"""In-cluster gateways fed over their Redis delta stream (`gateway_transport: redis`)."""

from __future__ import annotations

import random
from typing import Any

import redis.asyncio as aioredis
from ray_helpers import (
    close_all,
    random_row,
    running_tier,
    shadow_writer,
    tier_settings,
    wait_exact,
)
from support import unique

from raycluster import LiveQuery, SortKey, eq
from raycluster.cluster.keys import Keys
from raycluster.redis import RedisRegistry

PUMPS = LiveQuery(
    entity="asset", where=[eq("kind", "pump")], sort=[SortKey(column="name")], limit=8
)


async def test_in_cluster_gateway_over_redis_stream_keeps_windows_exact(
    ray_namespace: str, redis_server: Any
) -> None:
    settings = tier_settings(unique("gwredis"), ray_namespace, shards=2, gateway_transport="redis")
    async with running_tier(settings, redis_server.url) as tier, shadow_writer(tier) as shadow:
        tenant = unique("gwredis")
        rnd = random.Random(7)
        await shadow.upsert_many(tenant, {f"a{i:03}": random_row(rnd) for i in range(30)})
        gid = tier.gateway_ids[0]  # through a gateway actor (its transport is measured)
        subs = [await tier.subscribe(tenant, PUMPS, gateway_id=gid) for _ in range(2)]
        registry = RedisRegistry.from_url(tier.redis_url, settings=tier.settings.redis)
        admin = aioredis.Redis.from_url(tier.redis_url)
        try:
            for s in subs:
                reg = await registry.get(s.id)
                assert reg is not None and reg.transport == "redis"
            for _ in range(20):
                await shadow.upsert(tenant, f"a{rnd.randrange(35):03}", random_row(rnd))
            await shadow.delete(tenant, "a002")
            await wait_exact([(s, tenant, PUMPS) for s in subs], shadow)
            # The frames came through the gateway's own stream, not by actor calls.
            channel = Keys(tier.settings.redis.key_prefix).delta_channel(tier.gateway_ids[0])
            assert await admin.xlen(channel) > 0
        finally:
            await close_all(subs)
            await registry.aclose()
            await admin.aclose()
