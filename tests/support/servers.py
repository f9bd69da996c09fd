"""Servers a test starts for itself: private Redis deployments on free ports.

Tests never connect to a server they did not start: the machine's own Redis
(on `SYSTEM_REDIS_PORT`) included. Every Redis a test starts comes from here,
which checks that once.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when a server starts: `support` stays light for the unit tier
    from raycluster.redis import LocalRedis, LocalRedisCluster

__all__ = (
    "REDIS_PASSWORD",
    "SYSTEM_REDIS_PORT",
    "free_port",
    "private_redis",
    "private_redis_cluster",
)

SYSTEM_REDIS_PORT = 6379  # the machine's own Redis: never ours to touch
# The password of the session's `secret_redis`: tests check it is never shown (issue 17).
REDIS_PASSWORD = "S3cretPW_test"


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_redis(**options: Any) -> Iterator[LocalRedis]:
    """A `LocalRedis(**options)` of the caller's own, started; closed on exit."""
    from raycluster.redis import LocalRedis

    with LocalRedis(**options) as srv:
        assert srv.port != SYSTEM_REDIS_PORT, "a test must never use the machine's Redis"
        yield srv


@contextmanager
def private_redis_cluster(**options: Any) -> Iterator[LocalRedisCluster]:
    """A `LocalRedisCluster(**options)` of the caller's own, started; closed on exit."""
    from raycluster.redis import LocalRedisCluster

    with LocalRedisCluster(**options) as cluster:
        assert all(n.port != SYSTEM_REDIS_PORT for n in cluster.nodes), (
            "a test must never use the machine's Redis"
        )
        yield cluster
