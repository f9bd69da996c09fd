"""CLI tier: a private Redis for the session and one in-process shard per test.

The CLI runs as a subprocess against them (`python -m raycluster.cli`), with
a config file naming the test's own key prefix, in a working directory of
its own (so no `./configs/tier.yaml` is picked up) and with no `RAYCLUSTER_*`
variables inherited. Nothing here touches a Redis it did not start.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cli_helpers import PASSWORD, Tier1, start_tier1

from raycluster.redis import LocalRedis

_SYSTEM_REDIS_PORT = 6379


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    """One private redis-server for the directory (each test has its own key prefix)."""
    with LocalRedis() as srv:
        assert srv.port != _SYSTEM_REDIS_PORT
        yield srv


@pytest.fixture
async def tier1(redis_server: LocalRedis, tmp_path: Path) -> AsyncIterator[Tier1]:
    """One shard over the private Redis, a writer, and a config file for the CLI."""
    async with start_tier1(redis_server.url, tmp_path) as t:
        yield t


@pytest.fixture(scope="session")
def secret_redis() -> Iterator[LocalRedis]:
    """A private redis-server that requires `PASSWORD`."""
    with LocalRedis(password=PASSWORD) as srv:
        assert srv.port != _SYSTEM_REDIS_PORT
        yield srv


@pytest.fixture
async def secret_tier1(secret_redis: LocalRedis, tmp_path: Path) -> AsyncIterator[Tier1]:
    """`tier1` over the password-protected Redis (its config holds the password in the URL)."""
    async with start_tier1(secret_redis.url, tmp_path) as t:
        yield t
