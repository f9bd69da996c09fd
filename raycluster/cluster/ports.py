"""The small Protocols the shard and gateway runtimes are written against.

Redis implements them in production (`raycluster.redis`), the Ray layer adds a
delta transport over actor calls, and `raycluster.cluster.memory` implements
them in-process for fast tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Protocol

from raycluster.livequery import Feed

from .protocol import Control, Registration, WireFrame

__all__ = (
    "ControlBus",
    "DeltaBus",
    "Fencing",
    "Membership",
    "PartitionFeed",
    "SubscriptionRegistry",
)


class Membership(Protocol):
    """TTL heartbeats; any node reads the live set (sorted ids) without a scan."""

    async def heartbeat(self, shard_id: str) -> None:
        """Refresh a shard's liveness; call well inside the TTL."""
        ...

    async def live_shards(self) -> list[str]:
        """The ids of shards with an unexpired heartbeat, sorted."""
        ...

    async def leave(self, shard_id: str) -> None:
        """Remove a shard's heartbeat now (graceful stop)."""
        ...

    async def heartbeat_gateway(self, gateway_id: str) -> None:
        """Refresh a gateway's liveness."""
        ...

    async def live_gateways(self) -> list[str]:
        """The ids of gateways with an unexpired heartbeat, sorted."""
        ...

    async def leave_gateway(self, gateway_id: str) -> None:
        """Remove a gateway's heartbeat now."""
        ...


class ControlBus(Protocol):
    """Per-shard control streams, delivered at least once until acknowledged."""

    async def send_control(self, shard_id: str, control: Control) -> None:
        """Queue `control` for `shard_id` (kept until that shard acks it)."""
        ...

    def controls(self, shard_id: str) -> AsyncIterator[tuple[str, Control]]:
        """(message id, control) pairs for `shard_id`: first any unacked, then new ones."""
        ...

    async def ack(self, shard_id: str, msg_id: str) -> None:
        """Mark one control handled."""
        ...


class DeltaBus(Protocol):
    """Per-gateway delta channels: one message per batch of frames, in order."""

    async def send(self, gateway_id: str, frames: list[WireFrame]) -> None:
        """Deliver one batch; returns once the gateway's channel has it."""
        ...

    def deltas(self, gateway_id: str) -> AsyncIterator[list[WireFrame]]:
        """The batches sent to `gateway_id` from now on, in order."""
        ...

    async def drop(self, gateway_id: str) -> None:
        """Forget a gateway's channel (it closed, or it is gone for good)."""
        ...


class SubscriptionRegistry(Protocol):
    """Durable registrations, indexed by partition and by gateway; atomic per call."""

    async def put(self, reg: Registration, *, takeover: bool = False) -> None:
        """Create or replace a registration, atomically under `protocol.check_replace`.

        Raises `RegistrationConflict` (nothing written) if the sub id belongs
        to another tenant, or to another gateway and `takeover` is False.
        """
        ...

    async def get(self, sub_id: str) -> Registration | None:
        """One registration, or None."""
        ...

    async def delete(self, sub_id: str, gateway_id: str | None = None) -> None:
        """Remove a registration (no error if absent); with `gateway_id`, only if it holds it."""
        ...

    async def by_partition(self, p: int) -> list[Registration]:
        """Every registration of partition `p`."""
        ...

    async def by_gateway(self, gateway_id: str) -> list[Registration]:
        """Every registration held by one gateway."""
        ...

    async def ids_by_gateway(self, gateway_id: str) -> set[str]:
        """The sub ids of one gateway's registrations (cheap: no records read)."""
        ...


class Fencing(Protocol):
    """A counter per partition: every claim gets a larger epoch than any before."""

    async def claim(self, p: int) -> int:
        """A new epoch for partition `p`."""
        ...

    async def current(self, partitions: Iterable[int]) -> dict[int, int]:
        """The latest epoch of each partition (0 if never claimed)."""
        ...


class PartitionFeed(Feed, Protocol):
    """A `Feed` that follows the event streams of a changing set of partitions."""

    async def set_partitions(self, partitions: Iterable[int]) -> None:
        """Follow exactly `partitions`; a new one starts at its current end."""
        ...
