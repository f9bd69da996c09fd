"""Coordination: routing, key names, and (with the Ray tier) the shard and gateway runtimes."""

from .gateway import Gateway, GatewayDeps, GatewayOptions
from .keys import DEFAULT_PREFIX, Keys, ctrl_stream, delta_channel, event_stream, heartbeat_key
from .ports import ControlBus, DeltaBus, Fencing, Membership, PartitionFeed, SubscriptionRegistry
from .protocol import Control, GatewayDelta, Registration, Transport, WireFrame
from .routing import PARTITIONS, fnv1a64, owned_by, owner, owns, partition_of, weight
from .shard import Shard, ShardDeps, ShardOptions

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
