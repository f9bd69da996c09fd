"""The Redis layer: row store and writer, partition feed, membership, buses, registry.

Implements the core's ports (`Snapshotter`, `Refiller`, `Feed`) and the
cluster's (membership, control bus, delta bus, registry) over one Redis 6.2+
server or a Redis Cluster, with redis-py's asyncio client. `local_redis()`
starts a private server for tests and for a tier with no Redis configured;
`local_redis_cluster()` a private Redis Cluster for tests and the demo.

Importing the package loads only its settings (pydantic); everything else
(redis-py, the scripts, the local server launchers) loads on first use of
its name.
"""

from typing import TYPE_CHECKING

from raycluster._lazy import lazy_attributes

from .settings import RedisSettings

if TYPE_CHECKING:
    from ._client import make_client
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
    from .secrets import SharedSecrets
    from .source import SourceStatus, SourceWriter
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
    "SharedSecrets",
    "SourceStatus",
    "SourceWriter",
    "Writer",
    "local_redis",
    "local_redis_cluster",
    "local_redis_for_process",
    "make_client",
    "redis_server_binary",
    "redis_url_or_local",
)

_LAZY = {
    "make_client": "._client",
    "BusStats": ".buses",
    "ControlMessage": ".buses",
    "ControlPairs": ".buses",
    "ControlStream": ".buses",
    "DeltaStream": ".buses",
    "RedisControlBus": ".buses",
    "RedisDeltaBus": ".buses",
    "RedisCommandError": ".errors",
    "RedisUnavailable": ".errors",
    "FeedStats": ".feed",
    "RedisFeed": ".feed",
    "RedisFencing": ".fencing",
    "LocalRedis": ".local",
    "LocalRedisError": ".local",
    "local_redis": ".local",
    "local_redis_for_process": ".local",
    "redis_server_binary": ".local",
    "redis_url_or_local": ".local",
    "ClusterNode": ".local_cluster",
    "LocalRedisCluster": ".local_cluster",
    "local_redis_cluster": ".local_cluster",
    "RedisMembership": ".membership",
    "RedisRegistry": ".registry",
    "Registration": ".registry",
    "SharedSecrets": ".secrets",
    "SourceStatus": ".source",
    "SourceWriter": ".source",
    "RedisStore": ".store",
    "Outcome": ".writer",
    "Writer": ".writer",
}

__getattr__ = lazy_attributes(__name__, globals(), _LAZY)
