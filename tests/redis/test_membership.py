"""Membership (TTL heartbeats on the server clock) and fencing epochs."""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis_helpers import commands_run, reset_stats
from support import wait_for

from raycluster.cluster.keys import Keys
from raycluster.redis import RedisFencing, RedisMembership, RedisSettings
from raycluster.redis._client import Client


@pytest.fixture
async def members(redis_url: str, settings: RedisSettings) -> Any:
    s = settings.model_copy(update={"heartbeat_ttl_s": 1.0})
    async with RedisMembership.from_url(redis_url, settings=s) as m:
        yield m


async def test_heartbeat_live_leave(members: RedisMembership, admin: Client, keys: Keys) -> None:
    await reset_stats(admin)
    assert await members.live_shards() == []
    for sid in ["shard-c", "shard-a", "shard-b"]:
        await members.heartbeat(sid, ttl_s=30)
    assert await members.live_shards() == ["shard-a", "shard-b", "shard-c"]
    assert 0 < await admin.pttl(keys.heartbeat_key("shard-a")) <= 30_000
    await members.leave("shard-b")
    assert await members.live_shards() == ["shard-a", "shard-c"]
    assert await admin.exists(keys.heartbeat_key("shard-b")) == 0
    stats = await commands_run(admin)
    assert not {"cmdstat_keys", "cmdstat_scan"} & stats  # the live set is never a scan


async def test_stopped_heartbeat_leaves_within_its_ttl(members: RedisMembership) -> None:
    await members.heartbeat("steady")
    await members.heartbeat("stops")
    assert await members.live_shards() == ["steady", "stops"]
    t0 = time.monotonic()

    async def stops_gone() -> bool:
        await members.heartbeat("steady")  # keeps beating well inside its 1 s TTL
        return await members.live_shards() == ["steady"]

    await wait_for(stops_gone, timeout_s=3, interval_s=0.1)
    assert time.monotonic() - t0 < 1.5
    assert await members.live_shards() == ["steady"]


async def test_expired_members_are_pruned_from_the_set(
    members: RedisMembership, admin: Client, keys: Keys
) -> None:
    await members.heartbeat("brief", ttl_s=0.05)
    assert await admin.zcard(keys.members()) == 1

    async def pruned() -> bool:
        return await members.live_shards() == [] and await admin.zcard(keys.members()) == 0

    await wait_for(pruned, timeout_s=2)
    assert await admin.exists(keys.heartbeat_key("brief")) == 0


async def test_gateways_are_separate(members: RedisMembership, admin: Client, keys: Keys) -> None:
    await members.heartbeat_gateway("gw-2", ttl_s=30)
    await members.heartbeat_gateway("gw-1", ttl_s=30)
    await members.heartbeat("shard-a", ttl_s=30)
    assert await members.live_gateways() == ["gw-1", "gw-2"]
    assert await members.live_shards() == ["shard-a"]
    assert await admin.exists(keys.gateway_heartbeat("gw-1")) == 1
    await members.leave_gateway("gw-1")
    assert await members.live_gateways() == ["gw-2"]


async def test_fencing_epochs(redis_url: str, settings: RedisSettings) -> None:
    async with RedisFencing.from_url(redis_url, settings=settings) as f:
        assert await f.current([1, 2]) == {1: 0, 2: 0}
        assert await f.claim(1) == 1
        assert await f.claim(1) == 2
        assert await f.claim(2) == 1
        assert await f.current([1, 2, 3]) == {1: 2, 2: 1, 3: 0}
        assert await f.current([]) == {}


async def test_key_prefix_separates_tiers(redis_url: str, settings: RedisSettings) -> None:
    other = settings.model_copy(update={"key_prefix": "t2"})
    async with (
        RedisMembership.from_url(redis_url, settings=settings) as a,
        RedisMembership.from_url(redis_url, settings=other) as b,
    ):
        await a.heartbeat("shard-a", ttl_s=30)
        await b.heartbeat("shard-b", ttl_s=30)
        assert await a.live_shards() == ["shard-a"]
        assert await b.live_shards() == ["shard-b"]
