"""The edge beside the tier on Ray: browsers' protocol, Ray shards, a shard failure.

The edge runs its external gateway over the tier's Redis (as `raycluster
edge` does); clients speak SSE and WebSocket through `EdgeClient`. Killing the
owning shard actor must leave every edge client exact, after a `reset` of a
newer epoch.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray_helpers import (
    ENTITY,
    close_all,
    random_row,
    running_tier,
    shadow_writer,
    shard_handle,
    shard_ids,
    tier_settings,
    wait_exact,
)
from support import unique, wait_for
from support.serving import served

import raycluster
from raycluster import LiveQuery, SortKey, Tier, eq
from raycluster.cluster import owner, partition_of
from raycluster.edge import EdgeClient, EdgeSettings, create_app

TOKEN = "edge-on-tier-token"
PUMPS = LiveQuery(
    entity=ENTITY,
    where=[eq("kind", "pump")],
    sort=[SortKey(column="temp", desc=True), SortKey(column="name")],
    limit=6,
)


@contextlib.asynccontextmanager
async def edge_beside(tier: Tier, tenant: str) -> AsyncIterator[str]:
    """An edge over the tier's Redis on a free loopback port; yields its base URL."""
    settings = tier.settings.model_copy(update={"edge": EdgeSettings(tokens={TOKEN: tenant})})
    gateway = await raycluster.connect(tier.redis_url, settings)
    app = create_app(gateway, settings)
    try:
        async with served(app) as port:
            yield f"http://127.0.0.1:{port}"
    finally:
        await gateway.aclose()


async def test_edge_clients_stay_exact_across_a_shard_kill(
    ray_namespace: str, redis_server: Any
) -> None:
    settings = tier_settings(unique("edgetier"), ray_namespace)
    async with running_tier(settings, redis_server.url) as tier, shadow_writer(tier) as shadow:
        tenant = unique("edge")
        rnd = random.Random(11)
        await shadow.upsert_many(tenant, {f"a{i:03}": random_row(rnd) for i in range(40)})
        async with edge_beside(tier, tenant) as base, EdgeClient(base, TOKEN) as client:
            subs = [await client.subscribe(PUMPS, transport=t) for t in ("sse", "ws")]
            try:
                want = [(s, tenant, PUMPS) for s in subs]
                await wait_exact(want, shadow)
                for _ in range(15):
                    await shadow.upsert(tenant, f"a{rnd.randrange(45):03}", random_row(rnd))
                await wait_exact(want, shadow)

                # The owner of the tenant's partition dies; a new owner resets the windows.
                victim = owner(partition_of(tenant, ENTITY), shard_ids(3))
                epochs = [s.epoch for s in subs]
                ray.kill(shard_handle(tier, victim))
                await wait_for(
                    lambda: all(s.epoch > e for s, e in zip(subs, epochs, strict=True)),
                    30,
                    what="a newer-epoch reset on every edge client",
                )
                for _ in range(15):
                    await shadow.upsert(tenant, f"a{rnd.randrange(45):03}", random_row(rnd))
                await shadow.delete(tenant, "a001")
                await wait_exact(want, shadow)
            finally:
                await close_all(subs)
