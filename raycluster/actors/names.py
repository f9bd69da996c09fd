"""Actor names of a tier (all in the tier's namespace)."""

from __future__ import annotations

__all__ = ("controller_name", "gateway_name", "ingester_name", "shard_name")


def controller_name(tier: str) -> str:
    """The controller of tier `tier`."""
    return f"{tier}:controller"


def shard_name(tier: str, shard_id: str) -> str:
    """The actor of one shard."""
    return f"{tier}:shard:{shard_id}"


def gateway_name(tier: str, gateway_id: str) -> str:
    """The actor of one in-cluster gateway."""
    return f"{tier}:gateway:{gateway_id}"


def ingester_name(tier: str, slot: str) -> str:
    """The actor of the tier's Postgres ingester of replication slot `slot`."""
    return f"{tier}:ingester:{slot}"
