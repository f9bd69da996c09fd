"""The edge against a real tier: a private Redis, two in-process shards, a gateway, uvicorn.

One edge serves the whole directory (session-scoped, on the session loop);
every test uses its own tenants (signed tokens name any tenant), so tests
never see each other's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import uvicorn
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
    unique,
    wait_for,
)

from raycluster import connect
from raycluster._wiring import redis_shard
from raycluster.config import TierSettings
from raycluster.edge import create_app
from raycluster.redis import LocalRedis, RedisRegistry, Writer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    with LocalRedis() as srv:
        assert srv.port != 6379
        yield srv


@pytest.fixture(scope="session")
async def edge(redis_server: LocalRedis) -> AsyncIterator[Edge]:
    url = redis_server.url
    settings = TierSettings.load(
        redis={"heartbeat_ttl_s": 2.0, "key_prefix": unique("edge"), "redis_url": url},
        shard={"heartbeat_interval_s": 0.4, "ownership_interval_s": 0.2},
        gateway={"attempt_timeout_s": 1.0},
        entities=[ASSET.model_dump()],
        edge={
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
    )
    shards = [redis_shard(f"shard-{i}", url, settings) for i in range(2)]
    runs = [asyncio.create_task(s.run()) for s, _ in shards]
    gateway = await connect(url, settings)
    app = create_app(gateway, settings)
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started, 10, "uvicorn")
    writer = Writer.from_url(url, entities=settings.entities, settings=settings.redis)
    registry = RedisRegistry.from_url(url, settings=settings.redis)
    edge = Edge(
        f"http://127.0.0.1:{port}", port, app, app.state.hub, gateway, writer, registry, settings
    )
    async with httpx.AsyncClient() as c:

        async def healthy() -> bool:
            return (await c.get(edge.base + "/healthz")).status_code == 200

        await wait_for(healthy, 20, "a healthy edge")
    try:
        yield edge
    finally:
        app.state.hub.shutdown()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 15)
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
