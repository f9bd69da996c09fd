"""A delta that several in-cluster gateways need is put in the object store once."""

from __future__ import annotations

import random
from typing import Any

from ray_helpers import (
    close_all,
    random_row,
    running_tier,
    shadow_writer,
    shard_handle,
    status,
    tier_settings,
    wait_exact,
)
from support import unique

from raycluster import LiveQuery, SortKey, eq
from raycluster.actors.gateway import share_deltas

PUMPS = LiveQuery(
    entity="asset", where=[eq("kind", "pump")], sort=[SortKey(column="name")], limit=8
)


def test_share_deltas_pulls_out_what_several_batches_carry() -> None:
    a, b, c = {"op": "enter"}, {"op": "leave"}, {"op": "move"}
    batches = [[["s1", 1, 7, a, 0], ["s1", 2, 7, b, 0]], [["s2", 5, 7, a, 0]], [["s3", 1, 7, c, 0]]]
    shared, out = share_deltas(batches)
    assert shared == [a]
    assert out == [[["s1", 1, 7, 0, 0], ["s1", 2, 7, b, 0]], [["s2", 5, 7, 0, 0]],
                   [["s3", 1, 7, c, 0]]]  # fmt: skip
    # Nothing in common, or a single batch: nothing shared, batches untouched.
    assert share_deltas([[["s1", 1, 7, b, 0]], [["s3", 1, 7, c, 0]]])[0] == []
    assert share_deltas(batches[:1]) == ([], batches[:1])


async def test_two_gateways_share_one_put_and_both_stay_exact(
    ray_namespace: str, redis_server: Any
) -> None:
    settings = tier_settings(unique("shared"), ray_namespace, shards=1, gateways=2)
    async with running_tier(settings, redis_server.url) as tier, shadow_writer(tier) as shadow:
        tenant = unique("shared")
        rnd = random.Random(5)
        await shadow.upsert_many(tenant, {f"a{i:03}": random_row(rnd) for i in range(30)})
        # The same query on both gateways: one shared view in the shard.
        subs = [await tier.subscribe(tenant, PUMPS, gateway_id=g) for g in tier.gateway_ids]
        try:
            (shard_id,) = (await status(tier))["live_shards"]
            shard = shard_handle(tier, shard_id)
            before = (await shard.status.remote())["shared_puts"]
            for k in range(20):
                row = random_row(rnd) | {"kind": "pump"}
                await shadow.upsert(tenant, f"a{rnd.randrange(40):03}", row)
                if k % 5 == 0:
                    await wait_exact([(s, tenant, PUMPS) for s in subs], shadow)
            await wait_exact([(s, tenant, PUMPS) for s in subs], shadow)
            assert (await shard.status.remote())["shared_puts"] > before
        finally:
            await close_all(subs)
