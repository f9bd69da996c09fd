"""The edge against a real tier: the session's private Redis, two in-process shards, a
gateway, uvicorn.

One edge serves the whole directory (session-scoped, on the session loop);
every test uses its own tenants (signed tokens name any tenant), so tests
never see each other's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from edge_helpers import (
    ASSET,
    BUFFER,
    CONNECTIONS_PER_TENANT,
    EDGE_MAX_WINDOW,
    PER_CONNECTION,
    PER_TENANT,
    SECRET,
    SEND_TIMEOUT_S,
    STATIC_TENANT,
    STATIC_TOKEN,
    Edge,
)
from support import fast_tier, unique, wait_for
from support.serving import served

from raycluster import connect
from raycluster._wiring import redis_shard
from raycluster.config import TierSettings
from raycluster.edge import create_app
from raycluster.redis import LocalRedis, RedisRegistry, Writer


@pytest.fixture(scope="session")
async def edge(redis_server: LocalRedis) -> AsyncIterator[Edge]:
    url = redis_server.url
    settings = TierSettings.load(
        **fast_tier(
            {
                "redis": {"key_prefix": unique("edge"), "redis_url": url},
                "entities": [ASSET.model_dump()],
                "edge": {
                    "tokens": {STATIC_TOKEN: STATIC_TENANT},
                    "hmac_secret": SECRET,
                    "buffer": BUFFER,
                    "max_window": EDGE_MAX_WINDOW,
                    "max_subscriptions_per_connection": PER_CONNECTION,
                    "max_subscriptions_per_tenant": PER_TENANT,
                    "max_connections_per_tenant": CONNECTIONS_PER_TENANT,
                    "send_timeout_s": SEND_TIMEOUT_S,
                    "keepalive_s": 0.5,
                },
            }
        )
    )
    shards = [redis_shard(f"shard-{i}", url, settings) for i in range(2)]
    runs = [asyncio.create_task(s.run()) for s, _ in shards]
    gateway = await connect(url, settings)
    app = create_app(gateway, settings)
    writer = Writer.from_url(url, entities=settings.entities, settings=settings.redis)
    registry = RedisRegistry.from_url(url, settings=settings.redis)
    try:
        async with served(app) as port:
            edge = Edge(
                f"http://127.0.0.1:{port}",
                port,
                app,
                app.state.hub,
                gateway,
                writer,
                registry,
                settings,
            )
            async with httpx.AsyncClient() as c:

                async def healthy() -> bool:
                    return (await c.get(edge.base + "/healthz")).status_code == 200

                await wait_for(healthy, 20, what="a healthy edge")
            yield edge
    finally:
        await gateway.aclose()
        for (shard, closers), run in zip(shards, runs, strict=True):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(shard.stop(), 10)
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run
            await closers.aclose()
        await writer.aclose()
        await registry.aclose()
