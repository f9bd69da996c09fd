"""Redis Cluster: a master fails over to its replica under a live shard and gateway.

Redis Cluster replicates asynchronously. A failover the operator asks for
(`CLUSTER FAILOVER`) waits for the replica to catch up: nothing acknowledged
is lost. A master that dies can take its last acknowledged writes with it:
the promoted replica never had them. The tier cannot bring those back, but
it must not keep showing them: the feed sees the partition's event counter
go back (`feed_gaps`), the shard re-reads its views (`gap_repairs`), and every
window is exact against what the cluster now holds.

Each test runs its own cluster (three masters, one replica each) and an
in-process shard and gateway wired as the tier wires them (`_wiring`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from support import fast_tier, private_redis_cluster, wait_for

from raycluster._wiring import redis_gateway, redis_shard
from raycluster.cluster import Gateway, Shard, partition_of
from raycluster.config import TierSettings
from raycluster.errors import UnavailableError
from raycluster.livequery import EntitySpec, LiveQuery, SortKey
from raycluster.redis import LocalRedisCluster, RedisStore, Writer

SPEC = EntitySpec(name="asset", columns={"name": "str", "temp": "int"}, max_window=100)
QUERY = LiveQuery(entity="asset", sort=[SortKey(column="name")], limit=10)
TENANT = "acme"


@pytest.fixture
def cluster() -> Iterator[LocalRedisCluster]:
    with private_redis_cluster(masters=3, replicas=1) as c:
        yield c


class Tier:
    """One shard, one gateway and a writer over the cluster."""

    def __init__(self, url: str) -> None:
        self.settings = TierSettings.load(
            **fast_tier(
                {
                    "name": "failover",
                    "redis": {"redis_cluster": True, "reconnect_max_s": 0.5},
                    "entities": [SPEC.model_dump()],
                }
            )
        )
        s = self.settings.redis
        self.shard: Shard
        self.gateway: Gateway
        self.shard, self._shard_closers = redis_shard("shard-0", url, self.settings)
        self.gateway, self._gateway_closers = redis_gateway(None, url, self.settings)
        self.writer = Writer.from_url(url, settings=s, entities=[SPEC])
        self.store = RedisStore.from_url(url, settings=s, entities=[SPEC])
        self._run: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Tier:
        self._run = asyncio.create_task(self.shard.run())
        await self.gateway.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._run is not None
        self._run.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._run
        with contextlib.suppress(Exception):
            await self.gateway.aclose()
        await self._gateway_closers.aclose()
        await self._shard_closers.aclose()
        await self.writer.aclose()
        await self.store.aclose()

    async def upsert(self, agg_id: str, row: dict[str, Any]) -> None:
        """Write until a master acknowledges (the slot may be between masters)."""
        for _ in range(200):
            try:
                await self.writer.upsert(TENANT, "asset", agg_id, row)
                return
            except UnavailableError:
                await asyncio.sleep(0.1)
        raise AssertionError(f"no master took the write of {agg_id}")

    async def upsert_many(self, rows: dict[str, dict[str, Any]]) -> None:
        """Write a batch (one pipelined call on the slot's master) until one is acknowledged."""
        for _ in range(200):
            try:
                await self.writer.upsert_many(TENANT, "asset", rows)
                return
            except UnavailableError:
                await asyncio.sleep(0.1)
        raise AssertionError("no master took the batch")

    async def truth(self) -> list[str]:
        """The first window's ids, read from what the cluster holds now."""
        return [r.agg_id for r in (await self.store.snapshot(TENANT, QUERY, QUERY.limit)).rows]


@contextlib.asynccontextmanager
async def tier_on(cluster: LocalRedisCluster) -> AsyncIterator[Tier]:
    async with Tier(cluster.url) as t:
        yield t


async def wait_exact(t: Tier, sub: Any, timeout_s: float = 30) -> list[str]:
    """Wait until the subscription's window equals the store's; return it."""
    want: list[str] = []

    async def exact() -> bool:
        nonlocal want
        want = await t.truth()
        return sub.rows.complete and sub.rows.ids == want

    await wait_for(
        exact,
        timeout_s,
        interval_s=0.1,
        what=lambda: (
            f"window {sub.rows.ids} (complete: {sub.rows.complete}) == store {want};"
            f" shard {t.shard.status()}; feed {t.shard.deps.feed.stats}"  # type: ignore[attr-defined]
        ),
    )
    return want


def partition_master(cluster: LocalRedisCluster, t: Tier) -> Any:
    stream = t.settings.redis.keys.event_stream(partition_of(TENANT, "asset"))
    return cluster.master_of_key(stream)


async def test_a_requested_failover_loses_no_acknowledged_write(
    cluster: LocalRedisCluster,
) -> None:
    rnd = random.Random(7)
    async with tier_on(cluster) as t:
        for i in range(20):
            await t.upsert(f"r{i:02}", {"name": f"n{i:02}", "temp": i})
        sub = await t.gateway.subscribe(TENANT, QUERY)
        acked: dict[str, str] = {}

        async def write_on() -> None:
            for i in range(300):  # single writes, and every tenth a batch of five
                name = f"m{rnd.randrange(10**6):06}"
                await t.upsert(f"w{i:03}", {"name": name, "temp": i})
                acked[f"w{i:03}"] = name
                if i % 10 == 0:
                    batch = {f"b{i:03}-{j}": f"m{rnd.randrange(10**6):06}" for j in range(5)}
                    await t.upsert_many({k: {"name": v, "temp": i} for k, v in batch.items()})
                    acked.update(batch)
                await asyncio.sleep(0.005)

        writing = asyncio.create_task(write_on())
        await asyncio.sleep(0.3)
        await asyncio.to_thread(cluster.failover, partition_master(cluster, t))
        await writing
        rows = await t.store.rows(TENANT, "asset")
        assert {i: rows[i][1]["name"] for i in acked} == acked  # every acknowledged write
        await t.upsert("last", {"name": "a-last", "temp": 0})
        window = await wait_exact(t, sub)
        assert window[0] == "last"
        assert t.shard.counters["feed_gaps"] == 0


async def test_a_dead_masters_lost_writes_are_dropped_from_every_window(
    cluster: LocalRedisCluster,
) -> None:
    async with tier_on(cluster) as t:
        for i in range(20):
            await t.upsert(f"r{i:02}", {"name": f"n{i:02}", "temp": i})
        sub = await t.gateway.subscribe(TENANT, QUERY)
        await wait_exact(t, sub)
        master = partition_master(cluster, t)
        (replica,) = cluster.replicas_of(master)
        assert replica.pid is not None
        # The replica stops taking the master's stream: frozen, and its link cut (else
        # its kernel would still take in what the master sends).
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            admin = redis.Redis.from_url(master.url)
            try:
                admin.client_kill_filter(_type="replica")
            finally:
                admin.close()
            for i in range(5):  # acknowledged by the master alone; they enter the window
                await t.upsert(f"lost{i}", {"name": f"a{i}", "temp": i})
            await wait_exact(t, sub)
            assert sub.rows.ids[:5] == [f"lost{i}" for i in range(5)]
            cluster.kill(master)
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        await asyncio.to_thread(cluster.wait_ready)  # the replica takes over without them
        rows = await t.store.rows(TENANT, "asset")
        assert not any(i.startswith("lost") for i in rows)  # Redis lost them
        # A batch first: the writer's raw pipeline must find the new master itself.
        await t.upsert_many({"after": {"name": "b-after", "temp": 0}})
        window = await wait_exact(t, sub)
        assert not any(i.startswith("lost") for i in window) and "after" in window
        assert t.shard.counters["feed_gaps"] >= 1
        assert t.shard.counters["gap_repairs"] >= 1
