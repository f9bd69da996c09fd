"""`RedisFencing`: the per-partition epoch counters that fence ownership changes.

A shard that gains partition p claims it (INCR `Keys.epoch(p)`) and stamps
every frame with that epoch; gateways drop frames older than the newest
`reset` they saw, so a former owner can never interleave with the new one.
See docs/architecture.md#ownership-and-fencing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._client import ClientComponent
from .errors import translate_errors

__all__ = ("RedisFencing",)


class RedisFencing(ClientComponent):
    """Partition epochs in Redis (the `Fencing` port): every claim is larger than any before."""

    client_name = "raycluster-fencing"

    async def claim(self, p: int) -> int:
        """A new epoch for partition `p` (one INCR: atomic, never repeats)."""
        with translate_errors(f"claim partition {p}"):
            return int(await self._client.incr(self.keys.epoch(p)))

    async def current(self, partitions: Iterable[int]) -> dict[int, int]:
        """The latest epoch of each partition (0 if never claimed)."""
        parts = list(partitions)
        if not parts:
            return {}
        keys = [self.keys.epoch(p) for p in parts]
        with translate_errors("read partition epochs"):
            raw: Any
            if self.settings.redis_cluster:
                # One GET each, pipelined: on Redis Cluster the epochs live on many nodes.
                async with self._client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.get(key)
                    raw = await pipe.execute()
            else:  # one command (a shard reads every owned partition's epoch each reconcile)
                raw = await self._client.mget(keys)
        return {p: int(v or 0) for p, v in zip(parts, raw, strict=True)}
