"""Ray tier: one local Ray instance for the session and a private Redis.

Every tier a test starts has its own name and key prefix (so tiers never see
each other's keys, actors or heartbeats) and is always stopped in teardown
(`ray_helpers.running_tier`). The Redis server is one this process started on
a free port; the machine's own Redis on 6379 is never touched.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

os.environ["RAY_AUTH_MODE"] = "disabled"  # before ray.init: a local init writes a token

import ray
from ray_helpers import PASSWORD

from raycluster.redis import LocalRedis

_SYSTEM_REDIS_PORT = 6379


@pytest.fixture(scope="session")
def ray_namespace() -> Iterator[str]:
    """One local Ray instance for the whole session (logical CPUs), in its own namespace."""
    namespace = f"rctest-{uuid.uuid4().hex[:8]}"
    # address="local": always a fresh instance, never a cluster someone else started.
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        namespace=namespace,
        log_to_driver=False,
    )
    try:
        yield namespace
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    """A private redis-server for every tier of the session (tiers use their own prefixes)."""
    with LocalRedis() as srv:
        assert srv.port != _SYSTEM_REDIS_PORT
        yield srv


@pytest.fixture(scope="session")
def secret_redis() -> Iterator[LocalRedis]:
    """A private redis-server that requires `PASSWORD` (its `url` carries it)."""
    with LocalRedis(password=PASSWORD) as srv:
        assert srv.port != _SYSTEM_REDIS_PORT
        yield srv
