"""Coordination: routing, key names, the gateway ↔ shard protocol, and the runtimes.

Routing, keys, protocol, ports and options import eagerly (pydantic only);
the shard and gateway runtimes load on first use of their names.
"""

from typing import TYPE_CHECKING

from raycluster._lazy import lazy_attributes

from .keys import DEFAULT_PREFIX, Keys, ctrl_stream, delta_channel, event_stream, heartbeat_key
from .options import GatewayOptions, ShardOptions
from .ports import ControlBus, DeltaBus, Fencing, Membership, PartitionFeed, SubscriptionRegistry
from .protocol import Control, GatewayDelta, Registration, Transport, WireFrame
from .routing import PARTITIONS, fnv1a64, owned_by, owner, owns, partition_of, weight

if TYPE_CHECKING:
    from .gateway import Gateway, GatewayDeps
    from .shard import Shard, ShardDeps

__all__ = (
    "DEFAULT_PREFIX",
    "PARTITIONS",
    "Control",
    "ControlBus",
    "DeltaBus",
    "Fencing",
    "Gateway",
    "GatewayDelta",
    "GatewayDeps",
    "GatewayOptions",
    "Keys",
    "Membership",
    "PartitionFeed",
    "Registration",
    "Shard",
    "ShardDeps",
    "ShardOptions",
    "SubscriptionRegistry",
    "Transport",
    "WireFrame",
    "ctrl_stream",
    "delta_channel",
    "event_stream",
    "fnv1a64",
    "heartbeat_key",
    "owned_by",
    "owner",
    "owns",
    "partition_of",
    "weight",
)

_LAZY = {
    "Gateway": ".gateway",
    "GatewayDeps": ".gateway",
    "Shard": ".shard",
    "ShardDeps": ".shard",
}

__getattr__ = lazy_attributes(__name__, globals(), _LAZY)
