"""Fixtures every test folder may use (a pytest plugin, registered by `tests/conftest.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from .servers import REDIS_PASSWORD, private_redis

if TYPE_CHECKING:
    from raycluster.redis import LocalRedis

__all__ = ("redis_server", "secret_redis")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    """One private redis-server for the session, on a free port.

    Shared: every test that uses it keeps to key prefixes and tenants of its own
    and never flushes it or reads server-wide state (the Redis folder, which does
    both, has deployments of its own).
    """
    with private_redis() as srv:
        yield srv


@pytest.fixture(scope="session")
def secret_redis() -> Iterator[LocalRedis]:
    """One private redis-server for the session that requires `REDIS_PASSWORD` (its `url`
    carries it); shared as `redis_server` is."""
    with private_redis(password=REDIS_PASSWORD) as srv:
        yield srv
