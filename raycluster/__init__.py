"""raycluster: a sharded live-query tier on Ray and Redis.

The core (`raycluster.livequery`) is imported eagerly; the Redis and Ray
layers load on first use of their names, so `import raycluster` pulls in
neither redis-py nor Ray.
"""

from typing import TYPE_CHECKING

from raycluster._lazy import lazy_attributes

from .errors import (
    ClosedError,
    ConfigError,
    ConflictError,
    DesyncError,
    InvalidArgument,
    InvalidQuery,
    InvalidRow,
    NotReadyError,
    RayclusterError,
    RegistrationConflict,
    UnavailableError,
)
from .livequery import (
    Cond,
    Cursor,
    DeltaOp,
    Engine,
    EntitySpec,
    LiveDelta,
    LiveQuery,
    MemoryStore,
    Row,
    SortKey,
    and_,
    eq,
    gt,
    gte,
    ilike,
    in_,
    is_not_null,
    is_null,
    like,
    lt,
    lte,
    ne,
    not_in,
    or_,
)

_LAZY = {
    "LiveList": "raycluster.client",
    "Subscription": "raycluster.client",
    "TierSettings": "raycluster.config",
    "RemoteGateway": "raycluster._connect",
    "connect": "raycluster._connect",
    "local_redis": "raycluster.redis",
    "RedisStore": "raycluster.redis",
    "RedisFeed": "raycluster.redis",
    "Writer": "raycluster.redis",
    "Tier": "raycluster.actors",
}

__all__ = (
    "ClosedError",
    "Cond",
    "ConfigError",
    "ConflictError",
    "Cursor",
    "DeltaOp",
    "DesyncError",
    "Engine",
    "EntitySpec",
    "InvalidArgument",
    "InvalidQuery",
    "InvalidRow",
    "LiveDelta",
    "LiveList",
    "LiveQuery",
    "MemoryStore",
    "NotReadyError",
    "RayclusterError",
    "RedisFeed",
    "RedisStore",
    "RegistrationConflict",
    "RemoteGateway",
    "Row",
    "SortKey",
    "Subscription",
    "Tier",
    "TierSettings",
    "UnavailableError",
    "Writer",
    "and_",
    "connect",
    "eq",
    "gt",
    "gte",
    "ilike",
    "in_",
    "is_not_null",
    "is_null",
    "like",
    "local_redis",
    "lt",
    "lte",
    "ne",
    "not_in",
    "or_",
)

if TYPE_CHECKING:
    from ._connect import RemoteGateway, connect
    from .actors import Tier
    from .client import LiveList, Subscription
    from .config import TierSettings
    from .redis import RedisFeed, RedisStore, Writer, local_redis

__getattr__ = lazy_attributes(__name__, globals(), _LAZY)
