"""Every input, over Redis (issue 16): mixed value types stay exact, bad input is
refused naming the field with nothing written, a failing script leaves nothing
behind. Each test runs on a standalone Redis and on a Redis Cluster."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from redis_helpers import apply_frames, o_top, snapshot_keys

from raycluster.cluster.keys import Keys
from raycluster.cluster.routing import partition_of
from raycluster.errors import InvalidQuery, InvalidRow
from raycluster.livequery import (
    Cond,
    Cursor,
    Engine,
    EntitySpec,
    LiveQuery,
    MemoryStore,
    SortKey,
    eq,
    gt,
    gte,
    in_,
    lt,
    ne,
    or_,
)
from raycluster.livequery.models import MAX_DEPTH
from raycluster.redis import RedisCommandError, RedisFeed, RedisSettings, RedisStore, Writer
from raycluster.redis._client import Client

pytestmark = pytest.mark.redis

T = "acme"
SPEC = EntitySpec(
    name="asset",
    columns={"name": "str", "kind": "str", "temp": "float", "n": "int", "on": "bool"},
)


@pytest.fixture
async def writer(redis_url: str, settings: RedisSettings) -> Any:
    async with Writer.from_url(redis_url, entities=[SPEC], settings=settings) as w:
        yield w


@pytest.fixture
async def free_writer(redis_url: str, settings: RedisSettings) -> Any:
    """A writer with no declared entity: any scalar in any column."""
    async with Writer.from_url(redis_url, settings=settings) as w:
        yield w


@pytest.fixture
async def store(redis_url: str, settings: RedisSettings) -> Any:
    async with RedisStore.from_url(redis_url, settings=settings) as s:
        yield s


def q(entity: str, *where: Any, sort: list[SortKey] | None = None, **kw: Any) -> LiveQuery:
    return LiveQuery(
        entity=entity, where=list(where), sort=sort or [], limit=kw.pop("limit", 10), **kw
    )


# -- 1, 2: values of several types in one column --------------------------------------


async def test_a_value_of_another_type_reaches_every_view(
    redis_url: str, settings: RedisSettings, free_writer: Writer, store: RedisStore
) -> None:
    """The issue's case over Redis: a str among ints in a sorted column of an
    undeclared entity; every window stays exact, no view fails."""
    for i in range(6):
        await free_writer.upsert(T, "thing", f"r{i}", {"x": i, "y": i % 2})
    feed = RedisFeed.from_url(redis_url, partitions=[partition_of(T, "thing")], settings=settings)
    try:
        async with Engine(store, store, feed, cushion=2) as engine:
            queries = [
                q("thing", sort=[SortKey(column="x")], limit=4),
                q("thing", sort=[SortKey(column="x", desc=True)], limit=3),
                q("thing", eq("y", 1)),
            ]
            subs = [await engine.subscribe(T, query) for query in queries]
            lists = [[(r.agg_id, r.version, r.vals) for r in s.snapshot] for s in subs]
            await free_writer.upsert(T, "thing", "r9", {"x": "zz", "y": 1})
            await free_writer.upsert(T, "thing", "r2", {"x": True, "y": 1})
            await free_writer.upsert(T, "thing", "r3", {"x": 2.5, "y": 0})
            await engine.settle()
            table = await store.rows(T, "thing")
            for sub, items in zip(subs, lists, strict=True):
                apply_frames(items, sub.drain())
                assert items == o_top(table, sub.query), sub.query
            assert engine.stats.dispatch_errors == 0
            assert lists[1][0][0] == "r9"  # strings first, descending
            assert "r9" in [i for i, _, _ in lists[2]]
            # A new subscription (a snapshot sorted on the column) answers too.
            late = await engine.subscribe(
                T, q("thing", sort=[SortKey(column="x")], cursor=Cursor(values=[1, "r1"]))
            )
            assert [(r.agg_id, r.version, r.vals) for r in late.snapshot] == o_top(
                table, late.query
            )
    finally:
        await feed.aclose()


async def test_or_does_not_depend_on_the_order_of_its_members(
    free_writer: Writer, store: RedisStore
) -> None:
    await free_writer.upsert(T, "thing", "hot", {"x": "hot", "y": "q"})
    await free_writer.upsert(T, "thing", "five", {"x": 5, "y": "p"})
    for where in (or_(gt("x", 0), eq("y", "q")), or_(eq("y", "q"), gt("x", 0))):
        snap = await store.snapshot(T, q("thing", where), 10)
        assert sorted(r.agg_id for r in snap.rows) == ["five", "hot"]
    snap = await store.snapshot(T, q("thing", ne("x", 5)), 10)
    assert [r.agg_id for r in snap.rows] == ["hot"]  # another type is not equal


# -- 6: integers are 64-bit, and order exactly ----------------------------------------

BIG = [
    2**53 - 1, 2**53, 2**53 + 1, 2**53 + 2, 2**63 - 2, 2**63 - 1, -(2**63), -(2**63) + 1,
    -(2**53) - 1, -(2**53), 0, None,
]  # fmt: skip


async def test_ints_beyond_2_53_order_exactly_on_both_stores(
    writer: Writer, redis_url: str, settings: RedisSettings
) -> None:
    """A numeric sort index holds doubles; reads still order and match 64-bit ints exactly
    (equal doubles are read together and ordered in Python), as MemoryStore does."""
    memory = MemoryStore([SPEC])
    rows = {
        f"b{i:02d}": {"n": v, "temp": v if v is None or abs(v) < 2**60 else 1.5}
        for i, v in enumerate(BIG)
    }
    await writer.upsert_many(T, "asset", rows)
    for agg_id, row in rows.items():
        memory.upsert(T, "asset", agg_id, row)
    queries = []
    for desc in (False, True):
        sort = [SortKey(column="n", desc=desc)]
        queries.append(q("asset", sort=sort, limit=3))
        for v in BIG:
            for agg_id in ("b00", "b99"):
                queries.append(q("asset", sort=sort, limit=3, cursor=Cursor(values=[v, agg_id])))
    queries += [
        q("asset", eq("n", 2**53 + 1)),
        q("asset", in_("n", [2**53, 2**63 - 1])),
        q("asset", gt("n", 2**53), sort=[SortKey(column="n")]),
        q("asset", gte("temp", 2**53), sort=[SortKey(column="temp", desc=True)]),
        q("asset", lt("n", -(2**53)), sort=[SortKey(column="n", desc=True)]),
    ]
    async with RedisStore.from_url(redis_url, entities=[SPEC], settings=settings) as store:
        table = await store.rows(T, "asset")
        for query in queries:
            snap = await store.snapshot(T, query, query.limit)
            mem = await memory.snapshot(T, query, query.limit)
            got = [(r.agg_id, r.version, r.vals) for r in snap.rows]
            assert got == o_top(table, query), query
            assert [r.agg_id for r in mem.rows] == [r.agg_id for r in snap.rows], query
        assert store.plans["walk"] > 0 and store.plans["sets"] > 0  # the indexes answered


async def test_ints_beyond_64_bits_are_refused(
    writer: Writer, free_writer: Writer, store: RedisStore
) -> None:
    with pytest.raises(InvalidQuery) as info:
        eq("n", 10**400)
    assert info.value.field == "where.value"
    with pytest.raises(ValidationError, match="64-bit"):
        Cursor(values=[2**64, "a"])
    with pytest.raises(ValidationError, match=r"where\.0\.value"):
        LiveQuery.model_validate(
            {"entity": "asset", "where": [{"op": "eq", "column": "n", "value": 2**63}], "limit": 1}
        )
    for w in (writer, free_writer):
        with pytest.raises(InvalidRow) as info:
            await w.upsert(T, "asset", "a1", {"n": 2**63})
        assert info.value.field == "row.n"
    assert await store.rows(T, "asset") == {}


# -- 3: a row is an object; a delete is `delete` ---------------------------------------


@pytest.mark.parametrize("row", [None, [("name", "x")], "name", 5])
async def test_upsert_refuses_a_row_that_is_not_an_object(
    writer: Writer, free_writer: Writer, admin: Client, row: Any
) -> None:
    for w in (writer, free_writer):
        await w.upsert(T, "asset", "a1", {"name": "ok"})
        before = await snapshot_keys(admin)
        with pytest.raises(InvalidRow) as info:
            await w.upsert(T, "asset", "a1", row)
        assert info.value.field == "row"
        with pytest.raises(InvalidRow) as info:
            await w.upsert_many(T, "asset", [("a2", {"name": "x"}), ("a1", row)])
        assert info.value.field == "rows.1.row"
        assert await snapshot_keys(admin) == before
        assert await w.get(T, "asset", "a1") == (before_version(before, w), {"name": "ok"})


def before_version(before: dict[bytes, Any], w: Writer) -> int:
    raw = before[w.keys.row(T, "asset", "a1").encode()]
    return int(raw[b"v"])


async def test_write_many_deletes_only_with_a_none_row(writer: Writer) -> None:
    await writer.upsert(T, "asset", "a1", {"name": "ok"})
    out = await writer.write_many(T, "asset", [("a1", None, None)])
    assert out[0].status == "ok" and await writer.get(T, "asset", "a1") is None


# -- 9: write tuples of the wrong shape -------------------------------------------------


@pytest.mark.parametrize(
    ("writes", "field"),
    [
        ([("a1", {"name": "x"}, None), ("a2", {"name": "y"})], "writes.1"),
        ([("a1",)], "writes.0"),
        ([("a1", {"name": "x"}, None, 3)], "writes.0"),
        (["a1"], "writes.0"),
        ([None], "writes.0"),
        ("abc", "writes"),
    ],
)
async def test_write_many_refuses_writes_of_the_wrong_shape(
    writer: Writer, admin: Client, writes: Any, field: str
) -> None:
    with pytest.raises(InvalidRow) as info:
        await writer.write_many(T, "asset", writes)
    assert info.value.field == field
    assert await snapshot_keys(admin) == {}


@pytest.mark.parametrize(
    ("rows", "field"),
    [
        ([("a1", {"name": "x"}), ("a2",)], "rows.1"),
        ([("a1", {"name": "x"}, None)], "rows.0"),
        (["ab"], "rows.0"),
        ("abc", "rows"),
        (5, "rows"),
    ],
)
async def test_upsert_many_refuses_pairs_of_the_wrong_shape(
    writer: Writer, admin: Client, rows: Any, field: str
) -> None:
    with pytest.raises(InvalidRow) as info:
        await writer.upsert_many(T, "asset", rows)
    assert info.value.field == field
    assert await snapshot_keys(admin) == {}


# -- 5: names on every read and write call ---------------------------------------------

BAD_NAMES = [
    (None, "asset", "a1", "tenant"),
    (5, "asset", "a1", "tenant"),
    ("", "asset", "a1", "tenant"),
    ("a:b", "asset", "a1", "tenant"),
    ("\ud800", "asset", "a1", "tenant"),
    ("acme", None, "a1", "entity"),
    ("acme", "as:set", "a1", "entity"),
    ("acme", "asset", None, "agg_id"),
    ("acme", "asset", 5, "agg_id"),
    ("acme", "asset", "\udfff", "agg_id"),
]


@pytest.mark.parametrize(("tenant", "entity", "agg_id", "field"), BAD_NAMES)
async def test_writer_calls_refuse_bad_names(
    free_writer: Writer, admin: Client, tenant: Any, entity: Any, agg_id: Any, field: str
) -> None:
    calls = [
        free_writer.get(tenant, entity, agg_id),
        free_writer.version(tenant, entity, agg_id),
        free_writer.upsert(tenant, entity, agg_id, {"x": 1}),
        free_writer.delete(tenant, entity, agg_id),
        free_writer.upsert_many(tenant, entity, [(agg_id, {"x": 1})]),
        free_writer.write_many(tenant, entity, [(agg_id, None, None)]),
    ]
    for i, call in enumerate(calls):
        with pytest.raises(InvalidRow) as info:
            await call
        want = (
            field
            if i < 4 or field != "agg_id"
            else ("rows.0.agg_id" if i == 4 else "writes.0.agg_id")
        )
        assert info.value.field == want, i
        str(info.value).encode()  # printable: a lone surrogate is quoted, never raised
    assert await snapshot_keys(admin) == {}


@pytest.mark.parametrize(
    ("tenant", "entity", "agg_id", "field"), [b for b in BAD_NAMES if b[3] != "agg_id"]
)
async def test_store_reads_refuse_bad_names(
    store: RedisStore, tenant: Any, entity: Any, agg_id: Any, field: str
) -> None:
    calls = [store.rows(tenant, entity), store.rows_at(tenant, entity)]
    if isinstance(entity, str):  # a query's entity is a string by its own validation
        query = q(entity)
        calls += [store.snapshot(tenant, query, 5), store.refill(tenant, query, None, 5)]
    for call in calls:
        with pytest.raises(InvalidQuery) as info:
            await call
        assert info.value.field == field
        str(info.value).encode()


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("not a query", None, 5), "query"),
        ((q("asset"), None, 0), "limit"),
        ((q("asset"), None, True), "limit"),
        ((q("asset"), None, "5"), "limit"),
        ((q("asset"), "a1", 5), "after"),
        ((q("asset"), Cursor(values=[1, "a1"]), 5), "after.values"),
        ((q("asset", sort=[SortKey(column="n")]), Cursor(values=["a1"]), 5), "after.values"),
    ],
)
async def test_store_reads_refuse_bad_arguments(store: RedisStore, args: Any, field: str) -> None:
    query, after, limit = args
    with pytest.raises(InvalidQuery) as info:
        await store.refill(T, query, after, limit)
    assert info.value.field == field


# -- 4: prefixes cannot overlap; a failing script writes nothing -----------------------


@pytest.mark.parametrize("prefix", ["app:row", "a:", ":", "a{b}", ""])
def test_prefixes_that_could_overlap_are_refused(prefix: str) -> None:
    with pytest.raises(ValidationError, match="key_prefix"):
        RedisSettings(key_prefix=prefix)
    with pytest.raises(ValueError, match="prefix"):
        Keys(prefix)


def _victims(keys: Keys) -> dict[str, tuple[str, str]]:
    """Keys a write of acme/asset writes, and a command that gives each the wrong type."""
    p = partition_of(T, "asset")
    return {
        "stream": (keys.event_stream(p), "set"),
        "ids": (keys.table(T, "asset"), "set"),
        "index": (keys.sort_lex(T, "asset", "name"), "set"),
        "numeric index": (keys.sort_num(T, "asset", "n"), "hset"),
        "counter": (keys.event_seq(p), "hset"),
        "counter value": (keys.event_seq(p), "set"),  # a string, but not a number
        "counts": (keys.index_counts(T, "asset"), "set"),
        "row": (keys.row(T, "asset", "a2"), "set"),
    }


@pytest.mark.parametrize(
    "victim",
    ["stream", "ids", "index", "numeric index", "counter", "counter value", "counts", "row"],
)
@pytest.mark.parametrize("how", ["upsert", "delete", "upsert_many", "write_many"])
async def test_a_write_that_meets_a_key_of_another_type_writes_nothing(
    writer: Writer, admin: Client, keys: Keys, victim: str, how: str
) -> None:
    """What two tiers with overlapping prefixes did: the script failed after storing
    the row and its event. Now it checks every key before its first write."""
    await writer.upsert(T, "asset", "a1", {"name": "one", "n": 1})
    await writer.upsert(T, "asset", "a2", {"name": "two", "n": 2})
    key, cmd = _victims(keys)[victim]
    if key == keys.row(T, "asset", "a2"):
        await admin.delete(key)
    if cmd == "set":
        await admin.set(key, "not-a-number")
    else:
        await admin.delete(key)
        await admin.hset(key, "f", "v")
    before = await snapshot_keys(admin)
    with pytest.raises(RedisCommandError) as info:
        if how == "upsert":
            await writer.upsert(T, "asset", "a2", {"name": "new", "n": 5})
        elif how == "delete":
            await writer.delete(T, "asset", "a2")
        elif how == "upsert_many":  # distinct new upserts: the grouped-entries path
            await writer.upsert_many(T, "asset", {"a2": {"name": "x", "n": 3}, "a3": {"name": "y"}})
        else:  # a delete among them: the row-by-row path
            await writer.write_many(
                T,
                "asset",
                [("a3", {"name": "z"}, None), ("a1", None, None), ("a2", {"n": 7}, None)],
            )
    assert key in str(info.value) or "WRONGTYPE" in str(info.value)  # (HMGET's own)
    assert await snapshot_keys(admin) == before


# -- 7: a condition's fields fit its operator -------------------------------------------


@pytest.mark.parametrize(
    ("cond", "field"),
    [
        ({"op": "eq", "column": "n", "value": "hot", "values": [1]}, "values"),
        ({"op": "is_null", "column": "n", "value": 5}, "value"),
        ({"op": "in", "column": "n", "value": 1, "values": [1]}, "value"),
        ({"op": "in", "column": "kind", "values": "abc"}, "values"),
        ({"op": "or", "args": [{"op": "is_null", "column": "n"}], "value": 1}, "value"),
    ],
)
async def test_stray_fields_are_refused_before_a_read(
    store: RedisStore, cond: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError, match=field):
        LiveQuery.model_validate({"entity": "asset", "where": [cond], "limit": 5})


# -- 8: nesting ------------------------------------------------------------------------


async def test_nesting_to_the_bound_reads_and_deeper_is_refused(
    free_writer: Writer, store: RedisStore
) -> None:
    await free_writer.upsert(T, "thing", "a", {"x": 1})
    await free_writer.upsert(T, "thing", "b", {"x": "1"})
    c = eq("x", 1)
    for _ in range(MAX_DEPTH):
        c = or_(c, eq("y", 2))
    snap = await store.snapshot(T, q("thing", c), 5)
    assert [r.agg_id for r in snap.rows] == ["a"]
    deeper = Cond.model_construct(op="or", column=None, value=None, values=None, args=[c])
    query = LiveQuery.model_construct(
        entity="thing", where=[deeper], sort=[], limit=5, cursor=None, mode="maintained"
    )
    with pytest.raises(InvalidQuery) as info:
        await store.snapshot(T, query, 5)
    assert info.value.field.startswith("where.0")
