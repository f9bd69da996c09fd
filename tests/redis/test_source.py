"""`SourceWriter`: positioned, idempotent writes of a source, on one Redis and on a cluster."""

from __future__ import annotations

from typing import Any

import pytest
from redis_helpers import snapshot_keys, stream_entries

from raycluster.cluster.routing import partition_of
from raycluster.errors import InvalidRow
from raycluster.livequery import EntitySpec
from raycluster.redis import RedisCommandError, RedisSettings, RedisStore
from raycluster.redis.source import SourceWrite, SourceWriter

pytestmark = pytest.mark.redis

SPEC = EntitySpec(name="item", columns={"name": "str", "n": "int", "tag": "str"},
                  sortable=["name", "n"])  # fmt: skip


def pos(lsn: int, i: int, sub: int = 0) -> str:
    return f"{lsn:016x}{i:08x}{sub:04x}"


def up(p: str, tenant: str, agg_id: str, **row: Any) -> SourceWrite:
    return SourceWrite(p, tenant, "item", agg_id, row)


def rm(p: str, tenant: str, agg_id: str) -> SourceWrite:
    return SourceWrite(p, tenant, "item", agg_id, None)


async def events(admin: Any, settings: RedisSettings, tenant: str) -> list[dict[str, str]]:
    key = settings.keys.event_stream(partition_of(tenant, "item"))
    return [f for _, f in await stream_entries(admin, key) if f["t"] == tenant]


async def test_positions_make_reapplying_a_no_op(
    redis_url: str, settings: RedisSettings, admin: Any
) -> None:
    sw = SourceWriter.from_url(redis_url, settings=settings, entities=[SPEC], source="s1")
    store = RedisStore.from_url(redis_url, settings=settings, entities=[SPEC])
    try:
        batch = [
            up(pos(10, 1), "acme", "a", name="x", n=1, tag="t"),
            up(pos(10, 2), "rival", "a", name="y", n=2),
            up(pos(10, 3), "acme", "b", name="z", n=3),
            rm(pos(11, 1), "acme", "a"),
            up(pos(12, 1), "acme", "b", name="z2", n=3),
        ]
        first = await sw.apply(batch, atomic_writes=2)
        assert (first.applied, first.skipped, first.unchanged) == (5, 0, 0)
        assert first.calls == 3  # acme: 4 writes in calls of 2; rival: 1
        before = await events(admin, settings, "acme")
        again = await sw.apply(batch, atomic_writes=3)
        assert (again.applied, again.skipped) == (0, 5)
        assert await events(admin, settings, "acme") == before  # no event re-written
        rows = await store.rows("acme", "item")
        assert {k: r for k, (_, r) in rows.items()} == {"b": {"name": "z2", "n": 3}}
        assert rows["b"][0] == 2  # two writes, two versions

        # A later write of the row as it is writes nothing; a changed one does.
        same = await sw.apply([up(pos(13, 1), "acme", "b", name="z2", n=3)], atomic_writes=10)
        assert (same.applied, same.unchanged) == (0, 1)
        changed = await sw.apply([up(pos(13, 2), "acme", "b", name="z3", n=3)], atomic_writes=10)
        assert changed.applied == 1
        assert len(await events(admin, settings, "acme")) == len(before) + 1

        p = partition_of("acme", "item")
        assert (await sw.watermarks([p]))[p] == pos(13, 2)
        # A part of a batch applied before a crash: the rest applies, the part is skipped.
        tail = [up(pos(14, 1), "acme", "c", name="c"), up(pos(14, 2), "acme", "d", name="d")]
        await sw.apply(tail[:1], atomic_writes=10)
        resumed = await sw.apply(tail, atomic_writes=10)
        assert (resumed.applied, resumed.skipped) == (1, 1)
    finally:
        await sw.aclose()
        await store.aclose()


async def test_truncate_copy_and_sweep(redis_url: str, settings: RedisSettings) -> None:
    sw = SourceWriter.from_url(redis_url, settings=settings, entities=[SPEC], source="s2")
    store = RedisStore.from_url(redis_url, settings=settings, entities=[SPEC])
    try:
        rows = [up(pos(1, i), "acme", f"r{i:03}", name=f"n{i}", n=i) for i in range(1, 251)]
        await sw.apply(rows, atomic_writes=100)
        # Tenants sharing acme's partition: their truncates share one position.
        same_p = [t for t in (f"t{i}" for i in range(3000))
                  if partition_of(t, "item") == partition_of("acme", "item")][:3]  # fmt: skip
        assert len(same_p) == 3
        tenants = ["acme", *same_p, "rival"]
        others = [up(pos(1, 300 + i), t, "x", name="o") for i, t in enumerate(tenants[1:])]
        await sw.apply(others, atomic_writes=100)
        assert await sw.truncate(pos(2, 1), "item", tenants, chunk=60) == 250 + 4
        for t in tenants[1:]:
            assert await store.rows(t, "item") == {}
        assert await store.rows("acme", "item") == {}
        # Once done, the truncate's position is recorded: again, it deletes nothing.
        await sw.apply([up(pos(2, 0), "acme", "late", name="old")], atomic_writes=10)
        assert await store.rows("acme", "item") == {}  # (before the truncate: skipped)
        await sw.apply([up(pos(3, 1), "acme", "new", name="new")], atomic_writes=10)
        assert await sw.truncate(pos(2, 1), "item", tenants, chunk=60) == 0
        assert set(await store.rows("acme", "item")) == {"new"}

        # A copy marks what it writes; the sweep deletes the rest.
        await sw.apply([up(pos(4, i), "acme", f"k{i:04}", name="k") for i in range(1500)],
                       atomic_writes=500)  # fmt: skip
        keep = [up("", "acme", f"k{i:04}", name="k") for i in range(0, 1500, 3)]
        keep.append(up("", "acme", "fresh", name="f", n=1))
        stats = await sw.copy(7, keep, atomic_writes=200)
        assert (stats.applied, stats.unchanged) == (1, 500)
        assert await sw.sweep(7, "acme", "item") == 1000 + 1  # the others and "new"
        live = await store.rows("acme", "item")
        assert set(live) == {w.agg_id for w in keep}
        assert await sw.sweep(7, "acme", "item") == 0
    finally:
        await sw.aclose()
        await store.aclose()


async def test_bookkeeping_and_validation(redis_url: str, settings: RedisSettings) -> None:
    sw = SourceWriter.from_url(redis_url, settings=settings, entities=[SPEC], source="s3")
    try:
        await sw.add_tenants("item", ["b", "a", "a"])
        assert await sw.tenants("item") == ["a", "b"]
        await sw.set_owners("item", {"1": "a", "2": "b"})
        await sw.set_owners("item", {"1": None, "3": "a"})
        assert await sw.owners("item", ["1", "2", "3", "4"]) == {"2": "b", "3": "a"}
        await sw.clear_owners("item")
        assert await sw.owners("item", ["2"]) == {}
        await sw.set_state({"gen": 3, "status": "streaming"})
        assert await sw.state() == {"gen": "3", "status": "streaming"}
        assert await sw.watermarks([5]) == {5: ""}
        await sw.set_watermarks([5, 6], pos(9, 0))
        assert await sw.watermarks([5, 6]) == {5: pos(9, 0), 6: pos(9, 0)}
        with pytest.raises(InvalidRow) as e:
            await sw.apply([up(pos(1, 1), "acme", "x", name=3)], atomic_writes=10)
        assert e.value.field == "writes.0.row.name"
        with pytest.raises(ValueError):
            SourceWriter.from_url(redis_url, settings=settings, source="a:b")
    finally:
        await sw.aclose()


async def test_scripts_are_loaded_again_after_a_flush(
    redis_url: str, settings: RedisSettings, admin: Any
) -> None:
    sw = SourceWriter.from_url(redis_url, settings=settings, entities=[SPEC], source="s4")
    try:
        await sw.apply([up(pos(1, 1), "acme", "a", name="x")], atomic_writes=10)
        await admin.script_flush()
        stats = await sw.apply([up(pos(1, 2), "acme", "b", name="y")], atomic_writes=10)
        assert stats.applied == 1
        await admin.script_flush()
        assert await sw.sweep(1, "acme", "item") == 2
    finally:
        await sw.aclose()


@pytest.mark.parametrize(
    ("how", "victim"),
    [(how, victim)
     for how in ("apply", "copy", "truncate", "sweep")
     for victim in ("stream", "ids of the second group", "index", "watermark")
     if victim != "watermark" or how in ("apply", "truncate")],  # (copy, sweep: none)
)  # fmt: skip
async def test_a_source_call_that_meets_a_key_of_another_type_writes_nothing(
    redis_url: str, settings: RedisSettings, admin: Any, victim: str, how: str
) -> None:
    """The source scripts plan, check every key they write, then write (as WRITE does)."""
    sw = SourceWriter.from_url(redis_url, settings=settings, entities=[SPEC], source="s5")
    try:
        # Two tenants of one partition: one call, two groups.
        other = next(t for t in (f"t{i}" for i in range(3000))
                     if partition_of(t, "item") == partition_of("acme", "item"))  # fmt: skip
        await sw.apply([up(pos(1, 1), "acme", "a", name="x", n=1),
                        up(pos(1, 2), other, "a", name="y", n=2)], atomic_writes=10)  # fmt: skip
        keys, p = settings.keys, partition_of("acme", "item")
        key = {
            "stream": keys.event_stream(p),
            "ids of the second group": keys.table(other, "item"),
            "index": keys.sort_lex(other, "item", "name"),
            "watermark": keys.source_position("s5", p),
        }[victim]
        await admin.delete(key)
        await admin.hset(key, "f", "v")
        before = await snapshot_keys(admin)
        with pytest.raises(RedisCommandError) as info:
            if how == "apply":
                await sw.apply([up(pos(2, 1), "acme", "b", name="z"), rm(pos(2, 2), other, "a"),
                                up(pos(2, 3), other, "c", name="w")], atomic_writes=10)  # fmt: skip
            elif how == "copy":
                await sw.copy(3, [up("", "acme", "b", name="z"), up("", other, "c", name="w")],
                              atomic_writes=10)  # fmt: skip
            elif how == "truncate":
                # (one call per tenant: a truncate lands in steps)
                await sw.truncate(pos(2, 1), "item", [other], chunk=10)
            else:
                await sw.sweep(3, other, "item")
        assert key in str(info.value) or "WRONGTYPE" in str(info.value)
        assert await snapshot_keys(admin) == before
    finally:
        await sw.aclose()
