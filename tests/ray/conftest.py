"""Ray tier: one local Ray instance for the session, over the session's private Redis.

Every tier a test starts has its own name and key prefix (so tiers never see
each other's keys, actors or heartbeats) and is always stopped in teardown
(`ray_helpers.running_tier`). The Redis server (`redis_server`, of
`support.fixtures`) is one this process started on a free port; the
machine's own Redis on 6379 is never touched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from support import unique

os.environ["RAY_AUTH_MODE"] = "disabled"  # before ray.init: a local init writes a token

import ray


@pytest.fixture(scope="session")
def ray_namespace() -> Iterator[str]:
    """One local Ray instance for the whole session (logical CPUs), in its own namespace."""
    namespace = unique("rctest")
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
