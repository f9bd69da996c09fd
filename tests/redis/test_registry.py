"""RedisRegistry: registrations and their partition/gateway indexes, atomically."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from raycluster.cluster.keys import Keys
from raycluster.cluster.protocol import Registration
from raycluster.cluster.routing import partition_of
from raycluster.errors import RegistrationConflict
from raycluster.livequery import LiveQuery, SortKey, eq
from raycluster.redis import RedisRegistry, RedisSettings
from raycluster.redis._client import Client

Q = LiveQuery(entity="asset", where=[eq("kind", "pump")], sort=[SortKey(column="name")], limit=10)


def reg(sub: str, tenant: str = "acme", gw: str = "gw-1", **kw: Any) -> Registration:
    return Registration(sub_id=sub, tenant=tenant, query=Q, gateway_id=gw, **kw)


@pytest.fixture
async def registry(redis_url: str, settings: RedisSettings) -> Any:
    async with RedisRegistry.from_url(redis_url, settings=settings) as r:
        yield r


async def test_put_get_lookups_delete(registry: RedisRegistry) -> None:
    p_acme, p_rival = partition_of("acme", "asset"), partition_of("rival", "asset")
    await registry.put(reg("s2"))
    await registry.put(reg("s1", transport="ray"))
    await registry.put(reg("s3", tenant="rival", gw="gw-2"))
    assert await registry.get("s1") == reg("s1", transport="ray")
    assert await registry.get("nope") is None
    assert [r.sub_id for r in await registry.by_partition(p_acme)] == ["s1", "s2"]
    assert [r.sub_id for r in await registry.by_partition(p_rival)] == ["s3"]
    assert await registry.by_partition_num(p_acme) == 2
    assert [r.sub_id for r in await registry.by_gateway("gw-1")] == ["s1", "s2"]
    assert await registry.ids_by_gateway("gw-1") == {"s1", "s2"}
    await registry.delete("s1")
    await registry.delete("s1")  # absent: no error
    assert await registry.remove("s1") is False
    assert [r.sub_id for r in await registry.by_gateway("gw-1")] == ["s2"]
    assert await registry.ids_by_gateway("gw-1") == {"s2"}
    assert await registry.by_partition_num(p_acme) == 1


async def test_replacing_moves_the_index_entries(
    registry: RedisRegistry, admin: Client, keys: Keys
) -> None:
    await registry.put(reg("s1", gw="gw-1"))
    await registry.put(reg("s1", gw="gw-2"), takeover=True)
    assert await registry.by_gateway("gw-1") == []
    assert await admin.smembers(keys.gateway_regs("gw-1")) == set()
    assert [r.gateway_id for r in await registry.by_gateway("gw-2")] == ["gw-2"]


async def test_a_sub_id_stays_its_tenants(
    registry: RedisRegistry, admin: Client, keys: Keys
) -> None:
    """Another tenant can never replace a registration, takeover or not; nothing is written."""
    await registry.put(reg("s1", gw="gw-1"))
    before = await admin.hgetall(keys.registration("s1"))
    for takeover in (False, True):
        with pytest.raises(RegistrationConflict, match="another tenant"):
            await registry.put(reg("s1", tenant="rival", gw="gw-2"), takeover=takeover)
    assert await admin.hgetall(keys.registration("s1")) == before
    assert await admin.smembers(keys.gateway_regs("gw-2")) == set()
    assert await admin.smembers(keys.partition_regs(partition_of("rival", "asset"))) == set()
    # Nor may another gateway of the same tenant, unless it takes the subscription over.
    with pytest.raises(RegistrationConflict, match="another gateway"):
        await registry.put(reg("s1", gw="gw-2"))
    await registry.put(reg("s1", gw="gw-1"))  # its own gateway may replace it
    # A gateway deletes only what it holds.
    await registry.delete("s1", "gw-2")
    assert await registry.get("s1") is not None
    await registry.delete("s1", "gw-1")
    assert await registry.get("s1") is None


async def test_records_without_a_tenant_field_are_still_bound(
    registry: RedisRegistry, admin: Client, keys: Keys
) -> None:
    """A record written before the `t` field existed is bound by the tenant in its JSON."""
    await registry.put(reg("s1", gw="gw-1"))
    await admin.hdel(keys.registration("s1"), "t")
    with pytest.raises(RegistrationConflict):
        await registry.put(reg("s1", tenant="rival", gw="gw-1"))


async def test_delete_gateway(registry: RedisRegistry) -> None:
    for i in range(5):
        await registry.put(reg(f"s{i}", gw="gw-1" if i % 2 else "gw-2"))
    assert await registry.delete_gateway("gw-1") == 2
    assert await registry.by_gateway("gw-1") == []
    assert len(await registry.by_gateway("gw-2")) == 3


async def test_concurrent_writers_leave_consistent_indexes(
    redis_url: str, settings: RedisSettings, admin: Client, keys: Keys
) -> None:
    """Many writers moving one registration between gateways: it ends in exactly one set."""
    regs = [RedisRegistry.from_url(redis_url, settings=settings) for _ in range(4)]
    try:

        async def churn(r: RedisRegistry, k: int) -> None:
            for i in range(30):
                await r.put(reg("s1", gw=f"gw-{(k + i) % 3}"), takeover=True)
                if i % 7 == 0:
                    await r.delete("s1")

        await asyncio.gather(*(churn(r, k) for k, r in enumerate(regs)))
        final = await regs[0].get("s1")
        holders = [
            gw
            for gw in ("gw-0", "gw-1", "gw-2")
            if await admin.sismember(keys.gateway_regs(gw), "s1")
        ]
        if final is None:
            assert holders == []
        else:
            assert holders == [final.gateway_id]
    finally:
        for r in regs:
            await r.aclose()
