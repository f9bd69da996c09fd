"""Shards and gateways wired to Redis: the production composition of the runtimes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from raycluster._tasks import logged
from raycluster.cluster import Gateway, GatewayDeps, Shard, ShardDeps, Transport, WireFrame
from raycluster.cluster.ports import DeltaBus
from raycluster.config import TierSettings
from raycluster.redis import (
    RedisControlBus,
    RedisDeltaBus,
    RedisFeed,
    RedisFencing,
    RedisMembership,
    RedisRegistry,
    RedisStore,
)

__all__ = ("Closers", "FromStart", "redis_gateway", "redis_shard")


@dataclass
class Closers:
    """Everything a wiring opened, closed in reverse order."""

    items: list[Any] = field(default_factory=list)

    def add(self, obj: Any) -> Any:
        self.items.append(obj)
        return obj

    async def aclose(self) -> None:
        for obj in reversed(self.items):
            with logged(f"closing {type(obj).__name__}"):
                await obj.aclose()
        self.items.clear()


class FromStart:
    """A Redis delta bus read from the start of the channel.

    Gateway ids are unique per gateway instance, so the channel holds only
    this gateway's batches; reading from `0` means a batch that arrives before
    the first blocking read is not missed.
    """

    def __init__(self, bus: RedisDeltaBus) -> None:
        self.bus = bus

    async def send(self, gateway_id: str, frames: list[WireFrame]) -> None:
        await self.bus.send(gateway_id, frames)

    def deltas(self, gateway_id: str) -> AsyncIterator[list[WireFrame]]:
        return self.bus.deltas(gateway_id, last_id="0-0")

    async def drop(self, gateway_id: str) -> None:
        await self.bus.drop(gateway_id)


def redis_shard(
    shard_id: str, url: str, settings: TierSettings, extra_delta: Mapping[str, DeltaBus] = {}
) -> tuple[Shard, Closers]:
    """A shard over Redis; `extra_delta` adds transports (the Ray layer adds "ray")."""
    s = settings.redis
    c = Closers()
    store = c.add(RedisStore.from_url(url, settings=s, entities=settings.entities))
    feed = c.add(RedisFeed.from_url(url, settings=s))
    deps = ShardDeps(
        store=store,
        feed=feed,
        registry=c.add(RedisRegistry.from_url(url, settings=s)),
        members=c.add(RedisMembership.from_url(url, settings=s)),
        control=c.add(RedisControlBus.from_url(url, settings=s)),
        fencing=c.add(RedisFencing.from_url(url, settings=s)),
        delta={"redis": c.add(RedisDeltaBus.from_url(url, settings=s)), **extra_delta},
        entities=settings.entities,
    )
    shard = Shard(shard_id, deps, settings.shard)
    feed.on_gap = shard.feed_gap
    return shard, c


def redis_gateway(
    gateway_id: str | None,
    url: str,
    settings: TierSettings,
    *,
    transport: Transport = "redis",
) -> tuple[Gateway, Closers]:
    """A gateway over Redis; with transport "redis" it reads its own delta stream."""
    s = settings.redis
    c = Closers()
    delta = (
        FromStart(c.add(RedisDeltaBus.from_url(url, settings=s))) if transport == "redis" else None
    )
    deps = GatewayDeps(
        registry=c.add(RedisRegistry.from_url(url, settings=s)),
        members=c.add(RedisMembership.from_url(url, settings=s)),
        control=c.add(RedisControlBus.from_url(url, settings=s)),
        delta=delta,
        transport=transport,
        entities=settings.entities,
        limits=settings.limits,
    )
    return Gateway(gateway_id, deps, settings.gateway), c
