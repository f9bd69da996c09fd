"""Helpers of the Redis tier: fast settings, breaking connections, inspecting every node
of a cluster alike, the oracle with versions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from support import oracle

from raycluster.livequery import DeltaOp, LiveDelta, LiveQuery
from raycluster.redis import RedisSettings

RowMap = Mapping[str, tuple[int, dict[str, Any]]]


def quick_settings(*, redis_cluster: bool = False) -> RedisSettings:
    """Short blocking reads and backoffs, so reconnect tests finish quickly."""
    return RedisSettings(
        redis_url=None,
        redis_cluster=redis_cluster,
        feed_block_ms=200,
        bus_block_ms=200,
        reconnect_min_s=0.02,
        reconnect_max_s=0.2,
        socket_timeout_s=5.0,
    )


async def kill_clients(url: str) -> int:
    """CLIENT KILL every normal connection but this one, on the test's own server or on
    every node of the test's own cluster."""
    client = aioredis.Redis.from_url(url)
    try:
        if (await client.info("cluster")).get("cluster_enabled") != 1:
            return int(await client.client_kill_filter(_type="normal", skipme=True))
        # (a plain client has no `cluster_nodes`; CLUSTER NODES parses alike)
        nodes = await client.cluster("NODES")  # {"host:port": {"flags": ..., ...}}
    finally:
        await client.aclose()
    killed = 0
    for host_port, info in nodes.items():
        if "fail" in str(info.get("flags", "")):
            continue
        node = aioredis.Redis.from_url(f"redis://{host_port}")
        try:
            killed += int(await node.client_kill_filter(_type="normal", skipme=True))
        finally:
            await node.aclose()
    return killed


# -- whole-deployment inspection: one server, or every node of a cluster ------------------
#
# redis-py sends KEYS, DBSIZE, CLIENT LIST and INFO of a cluster client to one
# (default) node only; these ask every master (or every node) and merge.


def _masters(admin: Any) -> dict[str, Any]:
    return {"target_nodes": RedisCluster.PRIMARIES} if isinstance(admin, RedisCluster) else {}


async def all_keys(admin: Any, pattern: str = "*") -> list[bytes]:
    """KEYS `pattern` of the whole deployment."""
    return list(await admin.keys(pattern, **_masters(admin)))


async def db_size(admin: Any) -> int:
    """How many keys the whole deployment holds."""
    return int(await admin.dbsize(**_masters(admin)))


async def client_list(admin: Any) -> list[dict[str, Any]]:
    """CLIENT LIST of every node."""
    if not isinstance(admin, RedisCluster):
        return list(await admin.client_list())
    per_node = await admin.client_list(target_nodes=RedisCluster.ALL_NODES)
    return [c for clients in per_node.values() for c in clients]


async def reset_stats(admin: Any) -> None:
    """CONFIG RESETSTAT on every node."""
    if isinstance(admin, RedisCluster):
        await admin.config_resetstat(target_nodes=RedisCluster.ALL_NODES)
    else:
        await admin.config_resetstat()


async def commands_run(admin: Any) -> set[str]:
    """The `cmdstat_*` names of INFO commandstats, over every node."""
    if not isinstance(admin, RedisCluster):
        return set(await admin.info("commandstats"))
    per_node = await admin.info("commandstats", target_nodes=RedisCluster.ALL_NODES)
    return {name for stats in per_node.values() for name in stats}


# -- the oracle (`support.oracle`), with versions ------------------------------------


def o_top(rows: RowMap, q: LiveQuery) -> list[tuple[str, int, dict[str, Any]]]:
    """The first `q.limit` matches strictly after `q.cursor`, by brute force: (id, version,
    row)."""
    return [(agg_id, rows[agg_id][0], row) for agg_id, row in oracle.o_top(rows, q)]


def apply_frames(
    lst: list[tuple[str, int, dict[str, Any]]], frames: Sequence[LiveDelta]
) -> list[tuple[str, int, dict[str, Any]]]:
    """A maintained-mode client: apply frames to its list (ops: docs/architecture.md)."""
    for f in frames:
        if f.op == DeltaOp.RESET:
            lst.clear()
        elif f.op == DeltaOp.ENTER:
            assert f.new_index is not None and f.agg_id is not None and f.row is not None
            lst.insert(f.new_index, (f.agg_id, f.version, f.row))
        elif f.op == DeltaOp.LEAVE:
            assert f.old_index is not None
            assert lst[f.old_index][0] == f.agg_id, (lst[f.old_index], f)
            del lst[f.old_index]
        elif f.op == DeltaOp.MOVE:
            assert f.old_index is not None and f.new_index is not None
            old = lst.pop(f.old_index)
            assert old[0] == f.agg_id, (old, f)
            row = f.row if f.row is not None else old[2]
            lst.insert(f.new_index, (old[0], f.version, row))
        elif f.op == DeltaOp.UPDATE:
            assert f.new_index is not None and f.row is not None
            assert lst[f.new_index][0] == f.agg_id, (lst[f.new_index], f)
            lst[f.new_index] = (f.agg_id or "", f.version, f.row)
        else:
            raise AssertionError(f"unexpected frame {f}")
    return lst


async def stream_entries(client: Any, key: str) -> list[tuple[str, dict[str, str]]]:
    """Every entry of a stream, decoded."""
    raw: Any = await client.xrange(key)
    return [(i.decode(), {k.decode(): v.decode() for k, v in f.items()}) for i, f in raw]


async def snapshot_keys(admin: Any) -> dict[bytes, Any]:
    """Every key and its content: proves 'nothing written'."""
    out: dict[bytes, Any] = {}
    for key in sorted(await all_keys(admin)):
        kind = (await admin.type(key)).decode()
        if kind == "hash":
            out[key] = await admin.hgetall(key)
        elif kind == "set":
            out[key] = await admin.smembers(key)
        elif kind == "zset":
            out[key] = await admin.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            out[key] = await admin.xrange(key)
        else:
            out[key] = await admin.get(key)
    return out
