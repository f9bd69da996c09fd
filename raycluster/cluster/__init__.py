"""Coordination: routing, key names, and (with the Ray tier) the shard and gateway runtimes."""

from .keys import DEFAULT_PREFIX, Keys, ctrl_stream, delta_channel, event_stream, heartbeat_key
from .routing import PARTITIONS, fnv1a64, owned_by, owner, owns, partition_of, weight

__all__ = (
    "DEFAULT_PREFIX",
    "PARTITIONS",
    "Keys",
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
