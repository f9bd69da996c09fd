"""An in-cluster gateway actor crashes (Ray restarts it) or dies for good: every
`Tier.subscribe` subscription it held moves to a live gateway (a new id, then a
`reset` and the window, numbered on from its last `seq`) and stays exact; the
dead incarnation's registrations leave Redis and no shard serves them.

(The loss of a gateway's whole node is in `test_multinode.py`.)
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import ray
from ray_helpers import (
    ENTITY,
    Shadow,
    StreamCheck,
    close_all,
    random_row,
    running_tier,
    shadow_writer,
    tier_settings,
    wait_exact,
    wait_nothing_leaked,
)
from support import unique, wait_for

import raycluster
from raycluster import LiveQuery, SortKey, Subscription, Tier, eq
from raycluster.redis import RedisRegistry

PUMPS = LiveQuery(
    entity=ENTITY,
    where=[eq("kind", "pump")],
    sort=[SortKey(column="temp", desc=True), SortKey(column="name")],
    limit=5,
)
BY_NAME = LiveQuery(entity=ENTITY, sort=[SortKey(column="name")], limit=6)
VICTIM, OTHER = "ray-gw-0", "ray-gw-1"


@pytest.fixture(scope="module")
async def tier(ray_namespace: str, redis_server: Any) -> AsyncIterator[Tier]:
    settings = tier_settings(unique("gwloss"), ray_namespace, gateways=2)
    async with running_tier(settings, redis_server.url) as t:
        yield t


@pytest.mark.parametrize("restart", [True, False], ids=["restarted", "dead-for-good"])
async def test_lost_gateway_moves_its_subscriptions_and_leaves_nothing_behind(
    tier: Tier, restart: bool
) -> None:
    assert tier.gateway_ids == [VICTIM, OTHER]
    rnd = random.Random(7)
    registry = RedisRegistry.from_url(tier.redis_url, settings=tier.settings.redis)
    remote = await raycluster.connect(tier.redis_url, tier.settings)
    subs: list[tuple[Subscription, str, LiveQuery]] = []
    try:
        async with shadow_writer(tier) as shadow:
            tenants = [unique("gwl") for _ in range(5)]
            for t in tenants:
                await shadow.upsert_many(t, {f"a{i:02}": random_row(rnd) for i in range(25)})
                for q in (PUMPS, BY_NAME):
                    subs.append((await tier.subscribe(t, q, gateway_id=VICTIM), t, q))
                subs.append((await tier.subscribe(t, PUMPS, gateway_id=OTHER), t, PUMPS))
                subs.append((await remote.subscribe(t, BY_NAME), t, BY_NAME))
            checks = {id(s): StreamCheck() for s, _, _ in subs}
            on_victim = {s.id for s, _, _ in subs[0::4] + subs[1::4]}
            moved_before = tier.moves["moved"]

            victim = await asyncio.to_thread(tier.gateway, VICTIM)
            await asyncio.to_thread(ray.kill, victim, no_restart=not restart)
            await write_some(shadow, tenants, rnd, 30)

            await wait_exact(subs, shadow, timeout_s=60)
            await wait_for(lambda: tier.moves["moved"] - moved_before == len(on_victim), 30,
                           what=lambda: f"moves {tier.moves}")  # fmt: skip
            assert not any(s.closed for s, _, _ in subs)
            assert not on_victim & {s.id for s, _, _ in subs}, "moved subscriptions got new ids"
            await write_some(shadow, tenants, rnd, 20)  # live frames flow after the move
            await wait_exact(subs, shadow, timeout_s=30)
            for s, _, _ in subs:
                checks[id(s)].take(s)

            live = {s.id for s, _, _ in subs}
            await wait_nothing_leaked(
                tier, registry, [VICTIM, OTHER, remote.id], live, timeout_s=60
            )
            assert tier.moves["failed"] == 0
    finally:
        await close_all(s for s, _, _ in subs)
        await remote.aclose()
        await registry.aclose()


async def write_some(shadow: Shadow, tenants: list[str], rnd: random.Random, n: int) -> None:
    """`n` random upserts and deletes over `tenants`."""
    for _ in range(n):
        t = rnd.choice(tenants)
        agg_id = f"a{rnd.randrange(30):02}"
        if rnd.random() < 0.2:
            await shadow.delete(t, agg_id)
        else:
            await shadow.upsert(t, agg_id, random_row(rnd))
