"""A shard's background work never dies silently, and rebuilds do not stall controls.

A flusher that fails outside its send (here: a registration naming a
transport the shard does not have) is logged, counted in `status()` and
keeps running, and delivery to every other gateway goes on. While a
partition is rebuilt, controls for other partitions are answered.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from cluster_harness import Cluster, in_sync
from support import wait_for
from test_cluster_runtime import BY_NAME, SHARDS, STEADY_TTL_S, seed, start, tenant_owned_by

from raycluster.cluster import Control, Registration, partition_of

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster(ttl_s=STEADY_TTL_S)
    try:
        yield c
    finally:
        await c.aclose()


async def test_failing_flusher_is_counted_and_others_keep_delivering(cluster: Cluster) -> None:
    await start(cluster)
    tenant = tenant_owned_by("shard-a", list(SHARDS))
    seed(cluster, tenant)
    shard = cluster.shards["shard-a"]
    # A registration whose transport the shard has no bus for: its flusher fails.
    reg = Registration(
        sub_id="odd", tenant=tenant, query=BY_NAME, gateway_id="gw-odd", transport="redis"
    )
    await cluster.registry.put(reg)
    control = Control(
        op="subscribe", sub_id="odd", gateway_id="gw-odd", tenant=tenant,
        partition=partition_of(tenant, "asset"),
    )  # fmt: skip
    await cluster.control.send_control("shard-a", control)
    await wait_for(lambda: shard.status()["flush_errors"] >= 2, what="flush errors counted")
    odd = shard._outboxes["gw-odd"].task
    assert odd is not None and not odd.done()  # it keeps trying, it did not die

    gw, _ = await cluster.gateway("gw-1")
    sub = await gw.subscribe(tenant, BY_NAME)
    cluster.store.upsert(tenant, "asset", "new", {"name": "", "kind": "fan", "n": 0})
    await wait_for(lambda: in_sync(cluster.store, sub), what="the healthy gateway served")


async def test_controls_of_other_partitions_are_answered_during_a_rebuild(
    cluster: Cluster,
) -> None:
    await start(cluster, ("shard-a",))
    both = ["shard-a", "shard-b"]
    slow = tenant_owned_by("shard-b", both, prefix="slow")
    fast = tenant_owned_by("shard-b", both, prefix="fast")
    p_slow, p_fast = partition_of(slow, "asset"), partition_of(fast, "asset")
    assert p_slow != p_fast
    rng = random.Random(1)
    seed(cluster, slow, rng=rng)
    seed(cluster, fast, rng=rng)
    gw, _ = await cluster.gateway("gw-1")
    # Distinct views on `slow`'s partition: its rebuild reads the store once per view.
    for k in range(30):
        await gw.subscribe(slow, BY_NAME.model_copy(update={"limit": 2 + k}))
    cluster.read_delay_s = 0.3  # every store read of shard-b takes this long
    b = cluster.start_shard("shard-b")  # gains both partitions, rebuilds `slow`'s for ~9 s
    await wait_for(lambda: p_slow in b._claiming and p_fast in b.owned, what="rebuilding")
    sub = await gw.subscribe(fast, BY_NAME)  # one read: answered while the rebuild runs
    assert p_slow in b._claiming, "the subscribe waited for the other partition's rebuild"
    assert in_sync(cluster.store, sub)


async def test_a_rebuild_and_a_control_serving_one_subscription_together_serve_it_once(
    cluster: Cluster,
) -> None:
    """A claim's rebuild and a control can both serve one subscription at once
    (a control that passed the claim check just before the claim began): the
    second waits for the first, and the subscription stays served, once."""
    cluster.read_delay_s = 0.2  # each subscribe reads the store for this long
    await start(cluster, ("shard-a",))
    shard = cluster.shards["shard-a"]
    seed(cluster, "acme")
    gw, _ = await cluster.gateway("gw-1")
    sub = await gw.subscribe("acme", BY_NAME)
    reg = await cluster.registry.get(sub.id)
    assert reg is not None
    await shard._unserve(sub.id)

    await asyncio.gather(shard._serve(reg), shard._serve(reg))
    assert [s.id for s in shard.engine.subscriptions()] == [sub.id]
    served = shard.served[sub.id]
    assert served.sub is not None and not served.sub.closed
    cluster.store.upsert("acme", "asset", "late", {"name": "", "kind": "fan", "n": 0})
    await wait_for(lambda: in_sync(cluster.store, sub), what="still served after the race")

    # A reanchor racing a rebuild of the older revision is applied, in either order.
    for first_new in (False, True):
        await shard._unserve(sub.id)
        newer = reg.model_copy(
            update={"rev": reg.rev + 1, "query": BY_NAME.model_copy(update={"limit": 3})}
        )
        both = (newer, reg) if first_new else (reg, newer)
        await asyncio.gather(*(shard._serve(r) for r in both))
        served = shard.served[sub.id]
        assert served.rev == newer.rev and served.sub is not None
        assert len(served.sub.current_frames()) == 1 + 3
    assert len(shard._per_sub) == 0  # no lock outlives its users
