"""Redis tier: private Redis deployments of this folder alone, flushed before every test.

Every test that takes `redis_url` runs twice: on a standalone server
(`LocalRedis`) and on a Redis Cluster of three masters (`LocalRedisCluster`),
with `settings` in the matching form. Both are started by this process on
free ports (`support.servers`), and only this folder's tests use them: they
flush them and read server-wide state (CLIENT LIST, INFO commandstats), which
the session's shared `redis_server` (other folders' tiers run on it) must not
see. FLUSHALL only ever goes to these servers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis_helpers import quick_settings
from support import private_redis, private_redis_cluster

from raycluster.cluster.keys import Keys
from raycluster.redis import LocalRedis, LocalRedisCluster, RedisSettings
from raycluster.redis._client import Client


@pytest.fixture(scope="session")
def standalone_server() -> Iterator[LocalRedis]:
    """The folder's standalone server."""
    with private_redis() as srv:
        yield srv


@pytest.fixture(scope="session")
def redis_cluster_server() -> Iterator[LocalRedisCluster]:
    """The folder's Redis Cluster (three masters)."""
    with private_redis_cluster(masters=3) as cluster:
        yield cluster


@pytest.fixture(scope="session", params=["standalone", "cluster"])
def redis_backend(request: pytest.FixtureRequest) -> str:
    """Which deployment the test runs on."""
    return str(request.param)


def _flush(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


@pytest.fixture
def redis_url(redis_backend: str, request: pytest.FixtureRequest) -> str:
    """The session deployment's URL (a seed node's, for the cluster), emptied for this test."""
    if redis_backend == "cluster":
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster_server")
        for node in cluster.nodes:
            if node.role == "master":
                _flush(node.url)
        return cluster.url
    server: LocalRedis = request.getfixturevalue("standalone_server")
    _flush(server.url)
    return server.url


@pytest.fixture
def restartable(tmp_path: Path, redis_backend: str) -> Iterator[LocalRedis]:
    """A server of this test alone, with AOF persistence: `restart()` keeps the data.

    Standalone only (the cluster's failover has its own tests)."""
    if redis_backend == "cluster":
        pytest.skip("restarts one standalone server")
    with private_redis(data_dir=tmp_path / "redis", appendonly=True, appendfsync="always") as srv:
        yield srv


@pytest.fixture
def settings(redis_backend: str) -> RedisSettings:
    """Short blocking reads and backoffs, so reconnect tests finish quickly; keys and
    clients in the form of the test's deployment."""
    return quick_settings(redis_cluster=redis_backend == "cluster")


@pytest.fixture
def keys(settings: RedisSettings) -> Keys:
    """Key names in the form of the test's deployment (`settings.keys`)."""
    return settings.keys


@pytest.fixture
async def admin(redis_url: str, redis_backend: str) -> AsyncIterator[Client]:
    """A raw client of the test's deployment (for inspecting and breaking things)."""
    client: Client = (
        RedisCluster.from_url(redis_url)
        if redis_backend == "cluster"
        else aioredis.Redis.from_url(redis_url)
    )
    try:
        yield client
    finally:
        await client.aclose()
