"""In-process implementations of the cluster Protocols, for fast tests and demos.

They keep the same guarantees as the Redis ones where the runtimes rely on
them: heartbeats expire after a TTL (on an injectable clock), controls stay
until acknowledged and are redelivered to a restarted consumer, delta batches
arrive in order, registry calls are atomic (single-threaded), claims get
increasing epochs.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable

from raycluster.livequery import EntitySpec, FeedBatch, MemoryStore
from raycluster.livequery.memory import MemoryFeed

from .keys import DEFAULT_KEYS, Keys
from .protocol import Control, Registration, WireFrame, check_replace
from .routing import partition_of

__all__ = (
    "MemoryControlBus",
    "MemoryDeltaBus",
    "MemoryFencing",
    "MemoryMembership",
    "MemoryPartitionFeed",
    "MemoryRegistry",
    "partitioned_store",
)


def partitioned_store(
    entities: Iterable[EntitySpec] = (), keys: Keys = DEFAULT_KEYS
) -> MemoryStore:
    """A `MemoryStore` whose changes travel on per-partition sources, like Redis."""
    return MemoryStore(
        entities, partition=lambda tenant, entity: keys.event_stream(partition_of(tenant, entity))
    )


class MemoryPartitionFeed:
    """A shard's feed over a `partitioned_store`: follows its owned partitions."""

    def __init__(self, store: MemoryStore, keys: Keys = DEFAULT_KEYS) -> None:
        self._keys = keys
        self._feed: MemoryFeed = store.feed(())

    async def set_partitions(self, partitions: Iterable[int]) -> None:
        """Follow exactly `partitions`."""
        self._feed.set_sources(self._keys.event_stream(p) for p in partitions)

    def batches(self) -> AsyncIterator[FeedBatch]:
        """Changes of the followed partitions, in order."""
        return self._feed.batches()

    async def head(self) -> dict[str, str]:
        """Where each followed partition stands."""
        return await self._feed.head()


class _Leases:
    """Members with an expiry each: `renew` one, list the unexpired, `drop` one."""

    def __init__(self, ttl_s: float, clock: Callable[[], float]) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._expiry: dict[str, float] = {}

    def renew(self, member: str) -> None:
        self._expiry[member] = self.clock() + self.ttl_s

    def live(self) -> list[str]:
        now = self.clock()
        return sorted(m for m, exp in self._expiry.items() if exp > now)

    def drop(self, member: str) -> None:
        self._expiry.pop(member, None)


class MemoryMembership:
    """Heartbeats with a TTL on `clock` (seconds)."""

    def __init__(self, ttl_s: float = 3.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._shards = _Leases(ttl_s, clock)
        self._gateways = _Leases(ttl_s, clock)

    async def heartbeat(self, shard_id: str) -> None:
        """Refresh a shard."""
        self._shards.renew(shard_id)

    async def live_shards(self) -> list[str]:
        """Unexpired shards, sorted."""
        return self._shards.live()

    async def leave(self, shard_id: str) -> None:
        """Drop a shard now."""
        self._shards.drop(shard_id)

    async def heartbeat_gateway(self, gateway_id: str) -> None:
        """Refresh a gateway."""
        self._gateways.renew(gateway_id)

    async def live_gateways(self) -> list[str]:
        """Unexpired gateways, sorted."""
        return self._gateways.live()

    async def leave_gateway(self, gateway_id: str) -> None:
        """Drop a gateway now."""
        self._gateways.drop(gateway_id)


class MemoryControlBus:
    """Per-shard control logs; entries stay until acknowledged."""

    def __init__(self) -> None:
        self._logs: dict[str, list[tuple[str, Control]]] = {}
        self._acked: dict[str, set[str]] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._ids = itertools.count(1)

    def _event(self, shard_id: str) -> asyncio.Event:
        return self._events.setdefault(shard_id, asyncio.Event())

    async def send_control(self, shard_id: str, control: Control) -> None:
        """Append to the shard's log."""
        self._logs.setdefault(shard_id, []).append((f"{next(self._ids)}-0", control))
        self._event(shard_id).set()

    async def controls(self, shard_id: str) -> AsyncIterator[tuple[str, Control]]:
        """Unacked entries from the start, then new ones as they come."""
        i = 0
        event = self._event(shard_id)
        while True:
            log = self._logs.get(shard_id, [])
            acked = self._acked.get(shard_id, set())
            while i < len(log):
                msg_id, control = log[i]
                i += 1
                if msg_id not in acked:
                    yield msg_id, control
            event.clear()
            if i >= len(self._logs.get(shard_id, [])):
                await event.wait()

    async def ack(self, shard_id: str, msg_id: str) -> None:
        """Mark handled."""
        self._acked.setdefault(shard_id, set()).add(msg_id)

    def unacked(self, shard_id: str) -> int:
        """How many controls of `shard_id` are not acknowledged (for tests)."""
        acked = self._acked.get(shard_id, set())
        return sum(1 for m, _ in self._logs.get(shard_id, []) if m not in acked)


class MemoryDeltaBus:
    """Per-gateway in-order channels, retained (bounded) until their gateway reads them."""

    def __init__(self, maxlen: int = 100_000) -> None:
        self._channels: dict[str, tuple[deque[list[WireFrame]], asyncio.Event]] = {}
        self._maxlen = maxlen
        self.sent = 0

    def _channel(self, gateway_id: str) -> tuple[deque[list[WireFrame]], asyncio.Event]:
        ch = self._channels.get(gateway_id)
        if ch is None:
            ch = self._channels[gateway_id] = (deque(maxlen=self._maxlen), asyncio.Event())
        return ch

    async def send(self, gateway_id: str, frames: list[WireFrame]) -> None:
        """Append one batch to the gateway's channel."""
        self.sent += 1
        queue, ready = self._channel(gateway_id)
        queue.append(frames)
        ready.set()

    async def drop(self, gateway_id: str) -> None:
        """Forget the gateway's channel."""
        self._channels.pop(gateway_id, None)

    async def deltas(self, gateway_id: str) -> AsyncIterator[list[WireFrame]]:
        """Every batch of the channel not yet read, then new ones (one reader per gateway)."""
        queue, ready = self._channel(gateway_id)
        while True:
            while queue:
                yield queue.popleft()
            ready.clear()
            await ready.wait()


class MemoryRegistry:
    """Registrations in dicts, indexed by partition and gateway."""

    def __init__(self) -> None:
        self._regs: dict[str, Registration] = {}

    async def put(self, reg: Registration, *, takeover: bool = False) -> None:
        """Create or replace (the registry's rule: `protocol.check_replace`)."""
        old = self._regs.get(reg.sub_id)
        if old is not None:
            check_replace(reg, old.tenant, old.gateway_id, takeover=takeover)
        self._regs[reg.sub_id] = reg

    async def get(self, sub_id: str) -> Registration | None:
        """One, or None."""
        return self._regs.get(sub_id)

    async def delete(self, sub_id: str, gateway_id: str | None = None) -> None:
        """Remove (absent is fine); with `gateway_id`, only if that gateway holds it."""
        old = self._regs.get(sub_id)
        if old is not None and gateway_id in (None, old.gateway_id):
            del self._regs[sub_id]

    async def by_partition(self, p: int) -> list[Registration]:
        """Every registration of partition `p`."""
        return [r for r in self._regs.values() if r.partition == p]

    async def by_gateway(self, gateway_id: str) -> list[Registration]:
        """Every registration of one gateway."""
        return [r for r in self._regs.values() if r.gateway_id == gateway_id]

    async def ids_by_gateway(self, gateway_id: str) -> set[str]:
        """The sub ids of one gateway's registrations."""
        return {r.sub_id for r in self._regs.values() if r.gateway_id == gateway_id}


class MemoryFencing:
    """Epoch counters per partition."""

    def __init__(self) -> None:
        self._epochs: dict[int, int] = {}

    async def claim(self, p: int) -> int:
        """Next epoch of `p`."""
        e = self._epochs[p] = self._epochs.get(p, 0) + 1
        return e

    async def current(self, partitions: Iterable[int]) -> dict[int, int]:
        """Latest epochs."""
        return {p: self._epochs.get(p, 0) for p in partitions}
