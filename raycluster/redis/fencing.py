"""`RedisFencing`: the per-partition epoch counters that fence ownership changes (DESIGN §5).

A shard that gains partition p claims it (INCR `Keys.epoch(p)`) and stamps
every frame with that epoch; gateways drop frames older than the newest
`reset` they saw, so a former owner can never interleave with the new one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis

from ._client import make_client, resolve_url
from .errors import translate_errors
from .settings import RedisSettings

__all__ = ("RedisFencing",)


class RedisFencing:
    """Partition epochs in Redis (the `Fencing` port): every claim is larger than any before."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        settings: RedisSettings | None = None,
        owns_client: bool = False,
    ) -> None:
        self.settings = settings if settings is not None else RedisSettings()
        self.keys = self.settings.keys
        self._client = client
        self._owns_client = owns_client

    @classmethod
    def from_url(
        cls, url: str | None = None, *, settings: RedisSettings | None = None
    ) -> RedisFencing:
        """Fencing with its own connection pool (closed by `aclose`)."""
        s = settings if settings is not None else RedisSettings()
        client = make_client(resolve_url(url, s), s, name="raycluster-fencing")
        return cls(client, settings=s, owns_client=True)

    async def __aenter__(self) -> RedisFencing:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool if this object created it."""
        if self._owns_client:
            await self._client.aclose()

    async def claim(self, p: int) -> int:
        """A new epoch for partition `p` (one INCR: atomic, never repeats)."""
        with translate_errors(f"claim partition {p}"):
            return int(await self._client.incr(self.keys.epoch(p)))

    async def current(self, partitions: Iterable[int]) -> dict[int, int]:
        """The latest epoch of each partition (0 if never claimed)."""
        parts = list(partitions)
        if not parts:
            return {}
        with translate_errors("read partition epochs"):
            raw: Any = await self._client.mget([self.keys.epoch(p) for p in parts])
        return {p: int(v or 0) for p, v in zip(parts, raw, strict=True)}
