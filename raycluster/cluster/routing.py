"""Partition routing and rendezvous (HRW) ownership — bit-exact contracts.

Every node computes the same answers from the live set alone: no
coordinator. Removing a shard moves only the partitions it owned; adding one
moves only the partitions it wins.
See docs/architecture.md#routing.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

__all__ = ("PARTITIONS", "fnv1a64", "owned_by", "owner", "owns", "partition_of", "weight")

PARTITIONS = 256

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    """FNV-1a, 64 bits."""
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _MASK
    return h


@functools.lru_cache(maxsize=65_536)  # a pure-Python hash (~2 µs); shards ask per control
def partition_of(tenant: str, entity: str) -> int:
    """The partition of a (tenant, entity): its changes and subscriptions live there."""
    return fnv1a64(tenant.encode() + b"\x00" + entity.encode()) % PARTITIONS


def weight(shard: str, p: int) -> int:
    """The rendezvous weight of `shard` for partition `p`."""
    return fnv1a64(shard.encode() + b"\x00" + p.to_bytes(8, "little"))


def owner(p: int, live: Iterable[str]) -> str:
    """The owner of partition `p` among `live` shards ("" when none is live).

    The largest weight wins; a tie goes to the lexicographically smaller id.
    """
    best, best_w = "", -1
    for s in live:
        w = weight(s, p)
        if w > best_w or (w == best_w and s < best):
            best, best_w = s, w
    return best


def owns(shard: str, p: int, live: Iterable[str]) -> bool:
    """Whether `shard` owns partition `p` among `live`."""
    return owner(p, live) == shard


def owned_by(shard: str, live: Iterable[str]) -> frozenset[int]:
    """Every partition `shard` owns among `live`."""
    ids = list(live)
    return frozenset(p for p in range(PARTITIONS) if owner(p, ids) == shard)
