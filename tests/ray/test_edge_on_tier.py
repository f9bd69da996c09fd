"""The edge beside the tier on Ray: browsers' protocol, Ray shards, a shard failure.

The edge runs its external gateway over the tier's Redis (as `raycluster
edge` does); clients speak SSE and WebSocket through `EdgeClient`. Killing the
owning shard actor must leave every edge client exact, after a `reset` of a
newer epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import ray
import uvicorn
from ray_helpers import (
    ENTITY,
    close_all,
    random_row,
    running_tier,
    shadow_writer,
    shard_handle,
    shard_ids,
    tier_settings,
    unique,
    wait_exact,
    wait_for,
)

import raycluster
from raycluster import LiveQuery, SortKey, Tier, eq
from raycluster.cluster import owner, partition_of
from raycluster.edge import EdgeClient, EdgeSettings, create_app

pytestmark = pytest.mark.ray

TOKEN = "edge-on-tier-token"
PUMPS = LiveQuery(
    entity=ENTITY,
    where=[eq("kind", "pump")],
    sort=[SortKey(column="temp", desc=True), SortKey(column="name")],
    limit=6,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def edge_beside(tier: Tier, tenant: str) -> AsyncIterator[str]:
    """An edge over the tier's Redis on a free loopback port; yields its base URL."""
    settings = tier.settings.model_copy(update={"edge": EdgeSettings(tokens={TOKEN: tenant})})
    gateway = await raycluster.connect(tier.redis_url, settings)
    app = create_app(gateway, settings)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started, 15, what="uvicorn")
        yield f"http://127.0.0.1:{port}"
    finally:
        app.state.hub.shutdown()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 15)
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
