"""Static proof (for mypy) that the Redis adapters fit the core's and cluster's ports.

Nothing here runs; mypy checks each assignment against its Protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ()

if TYPE_CHECKING:
    from raycluster.cluster.ports import (
        ControlBus,
        DeltaBus,
        Fencing,
        Membership,
        PartitionFeed,
        SubscriptionRegistry,
    )
    from raycluster.livequery.ports import Feed, Refiller, Snapshotter

    from .buses import RedisControlBus, RedisDeltaBus
    from .feed import RedisFeed
    from .fencing import RedisFencing
    from .membership import RedisMembership
    from .registry import RedisRegistry
    from .store import RedisStore

    def _fits(
        store: RedisStore,
        feed: RedisFeed,
        members: RedisMembership,
        ctrl: RedisControlBus,
        delta: RedisDeltaBus,
        registry: RedisRegistry,
        fencing: RedisFencing,
    ) -> None:
        _snap: Snapshotter = store
        _refill: Refiller = store
        _feed: Feed = feed
        _pfeed: PartitionFeed = feed
        _members: Membership = members
        _ctrl: ControlBus = ctrl
        _delta: DeltaBus = delta
        _registry: SubscriptionRegistry = registry
        _fencing: Fencing = fencing
