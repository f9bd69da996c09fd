"""Redis tier: a private redis-server for the session, flushed before every test.

The server is started by this process (`LocalRedis`) on a free port; nothing
here ever connects to a server it did not start (the machine's own Redis on
6379 included), and FLUSHALL only ever goes to our own server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from raycluster.redis import LocalRedis, RedisSettings

_SYSTEM_PORT = 6379


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    """One private server for the whole tier."""
    with LocalRedis() as srv:
        assert srv.port != _SYSTEM_PORT
        yield srv


def _flush(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


@pytest.fixture
def redis_url(redis_server: LocalRedis) -> str:
    """The session server's URL, emptied for this test."""
    _flush(redis_server.url)
    return redis_server.url


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[LocalRedis]:
    """A server of this test alone, with AOF persistence: `restart()` keeps the data."""
    with LocalRedis(data_dir=tmp_path / "redis", appendonly=True, appendfsync="always") as srv:
        assert srv.port != _SYSTEM_PORT
        yield srv


@pytest.fixture
def settings() -> RedisSettings:
    """Short blocking reads and backoffs, so reconnect tests finish quickly."""
    return RedisSettings(
        redis_url=None,
        feed_block_ms=200,
        bus_block_ms=200,
        reconnect_min_s=0.02,
        reconnect_max_s=0.2,
        socket_timeout_s=5.0,
    )


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A raw client of the test's server (for inspecting and breaking things)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
