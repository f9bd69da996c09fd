"""A sub id stays its tenant's (docs/architecture.md#hostile-clients), in the runtimes.

The registry refuses another tenant's registration under a taken sub id, a
shard never changes the tenant or gateway of a sub it serves on the word of a
registration alone, and a takeover (a verified resume through another
gateway) moves a subscription without ever showing one tenant's rows to
another — also across a failover, when the new owner rebuilds from the registry.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
from cluster_harness import Cluster, in_sync, wait_for
from test_cluster_runtime import PUMPS_BY_TEMP, SHARDS, random_asset, seed, served_by, start

from raycluster.cluster import owner, partition_of
from raycluster.cluster.protocol import OP_SUBSCRIBE, Control
from raycluster.errors import ClosedError, RegistrationConflict

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def fragile() -> AsyncIterator[Cluster]:
    c = Cluster()
    yield c
    await c.aclose()


def write(c: Cluster, tenant: str, n: int, seed_: int) -> None:
    rng = random.Random(seed_)
    for i in range(n):
        c.store.upsert(tenant, "asset", f"a{rng.randrange(40):03}", random_asset(rng, i))


async def test_another_tenant_cannot_take_a_sub_id_even_across_a_failover(
    fragile: Cluster,
) -> None:
    c = fragile
    await start(c)
    gw_a, _ = await c.gateway("gw-a")
    gw_b, _ = await c.gateway("gw-b")
    seed(c, "acme")
    seed(c, "rival", rng=random.Random(7))
    sub = await gw_a.subscribe("acme", PUMPS_BY_TEMP)

    with pytest.raises(RegistrationConflict, match="another tenant"):
        await gw_b.subscribe("rival", PUMPS_BY_TEMP, sub_id=sub.id, resume=True)
    reg = await c.registry.get(sub.id)
    assert reg is not None and (reg.tenant, reg.gateway_id) == ("acme", "gw-a")
    assert gw_b.subscriptions() == []

    # The owner dies; its successor rebuilds from the registry: still acme's, on gw-a.
    epoch0 = sub.epoch
    await c.kill(owner(partition_of("acme", "asset"), SHARDS))
    await wait_for(lambda: sub.epoch > epoch0, 10, what="failover")
    write(c, "acme", 20, 1)
    write(c, "rival", 20, 2)
    await wait_for(lambda: in_sync(c.store, sub), what="acme's window after the failover")
    assert gw_b.counters["frames"] == 0
    assert sum(s.counters["conflicts"] for s in c.shards.values()) == 0


async def test_a_registration_changed_behind_the_shards_back_is_not_adopted(
    fragile: Cluster,
) -> None:
    """A tampered record (another tenant, another gateway) plus a forged control: ignored."""
    c = fragile
    await start(c)
    gw_a, _ = await c.gateway("gw-a")
    gw_b, _ = await c.gateway("gw-b")
    seed(c, "acme")
    sub = await gw_a.subscribe("acme", PUMPS_BY_TEMP)
    holder = served_by(c, sub.id)[0]
    reg = await c.registry.get(sub.id)
    assert reg is not None
    forged = reg.model_copy(update={"tenant": "rival", "gateway_id": "gw-b"})
    c.registry._regs[sub.id] = forged  # what no registry write could do
    control = Control(
        op=OP_SUBSCRIBE,
        sub_id=sub.id,
        gateway_id="gw-b",
        tenant="rival",
        partition=forged.partition,
    )
    await c.control.send_control(holder, control)
    await wait_for(lambda: c.shards[holder].counters["conflicts"] == 1, what="the conflict")
    # Still served for acme on gw-a: live frames keep arriving there, none at gw-b.
    write(c, "acme", 20, 3)
    await wait_for(lambda: in_sync(c.store, sub), what="acme's window")
    assert c.shards[holder].served[sub.id].reg.tenant == "acme"
    assert gw_b.counters["frames"] == 0


async def test_a_resume_through_another_gateway_takes_the_subscription_over(
    fragile: Cluster,
) -> None:
    c = fragile
    await start(c)
    gw_a, _ = await c.gateway("gw-a")
    gw_b, _ = await c.gateway("gw-b")
    seed(c, "acme")
    old = await gw_a.subscribe("acme", PUMPS_BY_TEMP)
    new = await gw_b.subscribe("acme", PUMPS_BY_TEMP, sub_id=old.id, resume=True)
    assert new.id == old.id
    holder = served_by(c, old.id)[0]
    assert c.shards[holder].counters["handovers"] == 1
    assert c.shards[holder].served[old.id].reg.gateway_id == "gw-b"
    reg = await c.registry.get(old.id)
    assert reg is not None and reg.gateway_id == "gw-b"

    write(c, "acme", 20, 4)
    await wait_for(lambda: in_sync(c.store, new), what="the new gateway's window")
    # The old gateway's audit finds the sub moved and ends it there.
    await wait_for(lambda: old.closed, what="the old subscription closed")
    assert gw_a.counters["taken_over"] == 1
    with pytest.raises(ClosedError):
        await gw_a.reanchor(old.id, None, 3)
    # The old gateway's clean-up cannot remove what it no longer holds.
    await gw_a.unsubscribe(old.id)
    assert await c.registry.get(old.id) is not None
    assert c.shards[holder].counters["conflicts"] == 0


async def test_tenant_scoped_calls_ignore_another_tenants_sub(fragile: Cluster) -> None:
    c = fragile
    await start(c)
    gw, _ = await c.gateway("gw-a")
    seed(c, "acme")
    sub = await gw.subscribe("acme", PUMPS_BY_TEMP)
    with pytest.raises(ClosedError):
        await gw.reanchor(sub.id, None, 3, tenant="rival")
    await gw.unsubscribe(sub.id, tenant="rival")
    await gw.resync(sub.id, tenant="rival")
    assert not sub.closed and await c.registry.get(sub.id) is not None
