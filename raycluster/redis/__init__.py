"""The Redis layer: row store and writer, partition feed, membership, buses, registry.

Implements the core's ports (`Snapshotter`, `Refiller`, `Feed`) and the
cluster's (membership, control bus, delta bus, registry) over one Redis 6.2+
server, with redis-py's asyncio client. `local_redis()` starts a private
server for tests and for a tier with no Redis configured;
`local_redis_cluster()` a private Redis Cluster for tests and the demo.
"""

from .buses import (
    BusStats,
    ControlMessage,
    ControlPairs,
    ControlStream,
    DeltaStream,
    RedisControlBus,
    RedisDeltaBus,
)
from .errors import RedisCommandError, RedisUnavailable
from .feed import FeedStats, RedisFeed
from .fencing import RedisFencing
from .local import (
    LocalRedis,
    LocalRedisError,
    local_redis,
    local_redis_for_process,
    redis_server_binary,
    redis_url_or_local,
)
from .local_cluster import ClusterNode, LocalRedisCluster, local_redis_cluster
from .membership import RedisMembership
from .registry import RedisRegistry, Registration
from .settings import RedisSettings
from .store import RedisStore
from .writer import Outcome, Writer

__all__ = (
    "BusStats",
    "ClusterNode",
    "ControlMessage",
    "ControlPairs",
    "ControlStream",
    "DeltaStream",
    "FeedStats",
    "LocalRedis",
    "LocalRedisCluster",
    "LocalRedisError",
    "Outcome",
    "RedisCommandError",
    "RedisControlBus",
    "RedisDeltaBus",
    "RedisFeed",
    "RedisFencing",
    "RedisMembership",
    "RedisRegistry",
    "RedisSettings",
    "RedisStore",
    "RedisUnavailable",
    "Registration",
    "Writer",
    "local_redis",
    "local_redis_cluster",
    "local_redis_for_process",
    "redis_server_binary",
    "redis_url_or_local",
)
