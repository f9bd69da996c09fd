"""Helpers of the Redis tier: waiting on conditions, breaking connections, inspecting
every node of a cluster alike, an oracle."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from raycluster.livequery import Cond, DeltaOp, LiveDelta, LiveQuery, SortKey
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


async def wait_for(
    cond: Callable[[], Awaitable[bool] | bool], timeout_s: float = 10.0, interval_s: float = 0.02
) -> None:
    """Return once `cond()` is true; fail after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    for _ in range(1_000_000):
        ok = cond()
        if not isinstance(ok, bool):
            ok = await ok
        if ok:
            return
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


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


# -- an oracle written from docs/semantics.md, sharing no code with the core -----------------


def _like(s: str, pattern: str, ignore_case: bool) -> bool:
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.fullmatch("".join(out), s, flags) is not None


def _kind(v: Any) -> int:
    """A value's type class in the documented order: booleans, numbers, strings."""
    return 0 if isinstance(v, bool) else 2 if isinstance(v, str) else 1


def _eq(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b) and a == b


def o_match(c: Cond, row: Mapping[str, Any]) -> bool:
    """Whether `row` satisfies one condition (SQL null semantics; a term compares
    values of one type class: false on another type, but `ne`/`not_in` true)."""
    if c.op == "or":
        return any(o_match(a, row) for a in c.args or ())
    if c.op == "and":
        return all(o_match(a, row) for a in c.args or ())
    v = row.get(c.column or "")
    if c.op == "is_null":
        return v is None
    if c.op == "is_not_null":
        return v is not None
    if v is None:
        return False
    if c.op == "in":
        return any(_eq(v, x) for x in c.values or [])
    if c.op == "not_in":
        return not any(_eq(v, x) for x in c.values or [])
    if c.op in ("like", "ilike"):
        return isinstance(v, str) and _like(v, str(c.value), c.op == "ilike")
    x = c.value
    if c.op == "ne":
        return not _eq(v, x)
    if _kind(v) != _kind(x):
        return False
    return {
        "eq": v == x,
        "ne": v != x,
        "gt": v > x,
        "gte": v >= x,
        "lt": v < x,
        "lte": v <= x,
    }[c.op]


def _cmp_vals(a: Any, b: Any, desc: bool) -> int:
    if a is None and b is None:
        return 0
    if a is None:
        return -1 if desc else 1
    if b is None:
        return 1 if desc else -1
    # false < true < numbers < strings
    a, b = (_kind(a), a), (_kind(b), b)
    r = (a > b) - (a < b)
    return -r if desc else r


def o_cmp(sort: Sequence[SortKey]) -> Callable[[tuple[Any, ...], tuple[Any, ...]], int]:
    """Compare (values…, id) tuples in total order."""

    def cmp(x: tuple[Any, ...], y: tuple[Any, ...]) -> int:
        for k, a, b in zip(sort, x, y, strict=False):
            r = _cmp_vals(a, b, k.desc)
            if r:
                return r
        return (x[-1] > y[-1]) - (x[-1] < y[-1])

    return cmp


def o_top(rows: RowMap, q: LiveQuery) -> list[tuple[str, int, dict[str, Any]]]:
    """The first `q.limit` matches strictly after `q.cursor`, by brute force."""
    sort = list(q.sort)
    cmp = o_cmp(sort)
    pos = lambda agg_id, row: (*(row.get(k.column) for k in sort), agg_id)  # noqa: E731
    hits = [
        (agg_id, v, row)
        for agg_id, (v, row) in rows.items()
        if all(o_match(c, row) for c in q.where)
        and (q.cursor is None or cmp(pos(agg_id, row), tuple(q.cursor.values)) > 0)
    ]
    hits.sort(key=functools.cmp_to_key(lambda a, b: cmp(pos(a[0], a[2]), pos(b[0], b[2]))))
    return hits[: q.limit]


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
