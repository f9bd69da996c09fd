"""A subscribe that races a partition claim (the tier's Redis wiring, driven in-process).

Seen on Ray (fixed in 6c1d30b): external gateways that connected while shards
were still claiming partitions (right after `Tier.start`, or during a
failover) sometimes never got their first window: the claim deleted their
fresh registration because the gateway was missing from a live-gateway
snapshot taken before it started, and `subscribe` raised `UnavailableError`
after `request_deadline_s`. Here that interleaving is forced every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from ray_helpers import ENTITY, tier_settings
from support import unique, wait_for

from raycluster import LiveQuery, SortKey
from raycluster._wiring import redis_gateway, redis_shard
from raycluster.cluster import partition_of
from raycluster.redis import RedisRegistry

QUERY = LiveQuery(entity=ENTITY, sort=[SortKey(column="name")], limit=3)


async def test_claim_keeps_a_registration_made_while_it_runs(redis_server: Any) -> None:
    settings = tier_settings(unique("race"), "unused", gateway={"request_deadline_s": 4.0})
    url = redis_server.url
    tenant = unique("race")
    p = partition_of(tenant, ENTITY)
    sub_id = uuid.uuid4().hex
    shard, shard_closers = redis_shard("shard-0", url, settings)
    gateway, gateway_closers = redis_gateway(None, url, settings)
    registry = RedisRegistry.from_url(url, settings=settings.redis)
    subscribing: asyncio.Task[Any] | None = None
    real_claim = shard.deps.fencing.claim

    async def claim(q: int) -> int:
        # The shard has read the live gateways; now a new gateway starts and
        # registers a subscription on q before the claim reads q's registrations.
        nonlocal subscribing
        if q == p and subscribing is None:
            await gateway.start()
            subscribing = asyncio.create_task(gateway.subscribe(tenant, QUERY, sub_id=sub_id))

            async def registered() -> bool:
                return await registry.get(sub_id) is not None

            await wait_for(registered, 10, what="the registration")
        return await real_claim(q)

    shard.deps.fencing.claim = claim  # type: ignore[method-assign]
    running = asyncio.create_task(shard.run())
    try:
        await wait_for(lambda: subscribing is not None, 30, what="the claim of the partition")
        assert subscribing is not None
        sub = await asyncio.wait_for(subscribing, 30)  # was: UnavailableError
        assert sub.rows.complete
        assert await registry.get(sub_id) is not None
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running
        with contextlib.suppress(Exception):
            await gateway.aclose()
        await gateway_closers.aclose()
        await shard_closers.aclose()
        await registry.aclose()
