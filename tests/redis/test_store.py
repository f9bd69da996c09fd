"""RedisStore: exact total order, keyset reads, every read plan, atomic snapshots."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from redis_helpers import all_keys, o_top, stream_entries

from raycluster.cluster.keys import Keys
from raycluster.cluster.routing import partition_of
from raycluster.errors import InvalidQuery
from raycluster.livequery import (
    Cond,
    Cursor,
    EntitySpec,
    LiveQuery,
    SortKey,
    eq,
    gt,
    gte,
    ilike,
    in_,
    is_not_null,
    is_null,
    like,
    lt,
    ne,
    or_,
)
from raycluster.redis import RedisSettings, RedisStore, Writer
from raycluster.redis._client import Client
from raycluster.redis._index import canon, lex_member, score_text
from raycluster.redis.scripts import WRITE

pytestmark = pytest.mark.redis

SPEC = EntitySpec(
    name="asset",
    columns={
        "name": "str",
        "kind": "str",
        "temp": "float",
        "n": "int",
        "on": "bool",
        "note": "str",
    },
    max_window=100,
)
P = partition_of("acme", "asset")
NAMES = ["", "a", "ab", "abc", "b", "ba", "B", "é", "z\x00", "z", "zz", "pump 1", "Pump 2"]
KINDS = ["pump", "valve", "tank", "fan"]


def rand_row(rng: random.Random) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": rng.choice([*NAMES, None]),
        "kind": rng.choice(KINDS),
        "temp": rng.choice([None, -1.5, 0.0, 2.0, 2.5, 10.0, 40.25, 99.0]),
        "n": rng.choice([None, -3, 0, 1, 2, 7, 2**40]),
        "on": rng.choice([None, True, False]),
    }
    if rng.random() < 0.5:
        row["note"] = rng.choice(["x", "y", None])
    return row


def rand_cond(rng: random.Random) -> Cond:
    pick = rng.randrange(11)
    if pick == 0:
        return eq("kind", rng.choice(KINDS))
    if pick == 1:
        return in_("kind", rng.sample(KINDS, rng.randint(1, 3)))
    if pick == 2:
        return gt("temp", rng.choice([0.0, 2, 10.0]))
    if pick == 3:
        return lt("n", rng.choice([0, 2, 10]))
    if pick == 4:
        return is_null(rng.choice(["note", "temp", "name"]))
    if pick == 5:
        return is_not_null(rng.choice(["note", "temp", "name"]))
    if pick == 6:
        return like("name", rng.choice(["a%", "%b%", "_", "z%"]))
    if pick == 7:
        return ilike("name", rng.choice(["p%", "%UMP%"]))
    if pick == 8:
        return eq("on", rng.choice([True, False]))
    if pick == 9:
        return or_(eq("kind", "fan"), gte("n", 2))
    return ne("n", 7)


def rand_query(rng: random.Random, rows: list[dict[str, Any]]) -> LiveQuery:
    cols = ["name", "kind", "temp", "n", "on", "note"]
    sort = [SortKey(column=c, desc=rng.random() < 0.5) for c in rng.sample(cols, rng.randint(0, 2))]
    where = [rand_cond(rng) for _ in range(rng.randint(0, 2))]
    cursor = None
    if rows and rng.random() < 0.3:
        row = rng.choice(rows)
        cursor = Cursor(values=[*(row.get(k.column) for k in sort), f"a{rng.randrange(60)}"])
    return LiveQuery(
        entity="asset", where=where, sort=sort, limit=rng.randint(1, 20), cursor=cursor
    )


def as_tuples(snap_rows: list[Any]) -> list[tuple[str, int, dict[str, Any]]]:
    return [(r.agg_id, r.version, r.vals) for r in snap_rows]


@pytest.fixture
async def writer(redis_url: str, settings: RedisSettings) -> Any:
    async with Writer.from_url(redis_url, entities=[SPEC], settings=settings) as w:
        yield w


async def populate(writer: Writer, rng: random.Random, n_ops: int, ids: int) -> None:
    for _ in range(n_ops):
        agg_id = f"a{rng.randrange(ids)}"
        if rng.random() < 0.15:
            await writer.delete("acme", "asset", agg_id)
        else:
            await writer.upsert("acme", "asset", agg_id, rand_row(rng))


@pytest.mark.parametrize("variant", ["indexed", "no-sort-index", "no-value-index"])
async def test_reads_match_the_oracle(
    writer: Writer, redis_url: str, settings: RedisSettings, variant: str
) -> None:
    rng = random.Random(7)
    await populate(writer, rng, 600, 60)
    store = RedisStore.from_url(
        redis_url,
        settings=settings,
        entities=[SPEC],
    )
    store.sort_index = variant != "no-sort-index"
    store.value_index = variant != "no-value-index"
    async with store:
        table = await store.rows("acme", "asset")
        live = [row for _, row in table.values()]
        for _ in range(150):
            q = rand_query(rng, live)
            snap = await store.snapshot("acme", q, q.limit)
            assert as_tuples(snap.rows) == o_top(table, q), q
            assert snap.source == settings.keys.event_stream(P)
            for r in snap.rows:
                assert r.cursor.values == [*(r.vals.get(k.column) for k in q.sort), r.agg_id]
            if snap.rows:
                after = snap.rows[-1].cursor
                more = await store.refill("acme", q, after, 7)
                nxt = q.model_copy(update={"cursor": after, "limit": 7})
                assert as_tuples(more.rows) == o_top(table, nxt), nxt
        if variant == "indexed":
            assert {"sets", "walk", "walk+"} <= set(store.plans)
        elif variant == "no-sort-index":
            assert store.plans["all"] > 0


async def test_empty_table_snapshot(redis_url: str, settings: RedisSettings) -> None:
    async with RedisStore.from_url(redis_url, settings=settings) as store:
        snap = await store.snapshot("acme", LiveQuery(entity="asset", limit=5), 5)
    assert snap.rows == [] and snap.watermark == "0-0"
    assert snap.source == settings.keys.event_stream(P)


async def test_query_checked_against_entities(redis_url: str, settings: RedisSettings) -> None:
    async with RedisStore.from_url(redis_url, settings=settings, entities=[SPEC]) as store:
        with pytest.raises(InvalidQuery) as info:
            await store.snapshot("acme", LiveQuery(entity="asset", limit=500), 500)
        assert info.value.field == "limit"
        with pytest.raises(InvalidQuery) as info:
            q = LiveQuery(entity="asset", limit=5, where=[eq("nope", 1)])
            await store.snapshot("acme", q, 5)
        assert info.value.field == "where.0.column"


async def test_large_in_list(writer: Writer, redis_url: str, settings: RedisSettings) -> None:
    await writer.upsert_many("acme", "asset", {f"a{i}": {"name": f"n{i}"} for i in range(50)})
    q = LiveQuery(entity="asset", limit=10, where=[in_("name", [f"n{i}" for i in range(9000)])])
    async with RedisStore.from_url(redis_url, settings=settings) as store:
        snap = await store.snapshot("acme", q, 10)
        assert [r.agg_id for r in snap.rows] == sorted(f"a{i}" for i in range(50))[:10]
        assert store.plans["sets"] == 1


async def test_index_changed_after_rows_falls_back_to_a_scan(
    redis_url: str, settings: RedisSettings
) -> None:
    """Rows written before a column became sortable/filterable: reads stay exact."""
    narrow = SPEC.model_copy(update={"sortable": ["name"], "filterable": ["name"]})
    async with Writer.from_url(redis_url, entities=[narrow], settings=settings) as w:
        for i in range(30):
            await w.upsert(
                "acme", "asset", f"a{i}", {"name": f"n{i}", "kind": KINDS[i % 4], "n": i}
            )
    async with Writer.from_url(redis_url, entities=[SPEC], settings=settings) as w:
        await w.upsert("acme", "asset", "b0", {"name": "new", "kind": "pump", "n": 5})
    async with RedisStore.from_url(redis_url, settings=settings) as store:
        table = await store.rows("acme", "asset")
        for q in [
            LiveQuery(entity="asset", limit=5, sort=[SortKey(column="n", desc=True)]),
            LiveQuery(entity="asset", limit=5, where=[eq("kind", "pump")]),
        ]:
            snap = await store.snapshot("acme", q, 5)
            assert as_tuples(snap.rows) == o_top(table, q)
        assert store.plans["all"] == 1 and "sets" not in store.plans
        # The read itself re-checks coverage (the plan's sizes are not atomic with it).
        vx = settings.keys.value_index("acme", "asset", "kind", '"pump"')
        res = await store._call("acme", "asset", ["sets", "v:kind", vx])
        assert res[1] == "stale"
        zkey = settings.keys.sort_num("acme", "asset", "n")
        res = await store._call("acme", "asset", ["walk", "n", "asc", "-inf", 10], zkey)
        assert res[1] == "stale"


def replay(entries: list[tuple[str, dict[str, str]]], upto: str) -> dict[str, Any]:
    """The table as of stream id `upto`, rebuilt from the events."""
    mark = tuple(int(x) for x in upto.split("-"))
    table: dict[str, Any] = {}
    for sid, f in entries:
        if tuple(int(x) for x in sid.split("-")) > mark:
            break
        if f["op"] == "delete":
            table.pop(f["id"], None)
        else:
            table[f["id"]] = (int(f["v"]), json.loads(f["row"]))
    return table


async def test_snapshot_is_atomic_with_writers(
    redis_url: str, settings: RedisSettings, admin: Client
) -> None:
    """Snapshots taken while writers run equal the replayed state at their watermark."""
    rng = random.Random(3)
    queries = [rand_query(rng, []) for _ in range(12)]
    stop = asyncio.Event()

    async def write(seed: int) -> None:
        r = random.Random(seed)
        async with Writer.from_url(redis_url, entities=[SPEC], settings=settings) as w:
            while not stop.is_set():
                agg_id = f"a{r.randrange(80)}"
                if r.random() < 0.1:
                    await w.delete("acme", "asset", agg_id)
                elif r.random() < 0.3:
                    await w.upsert_many(
                        "acme", "asset", {f"a{r.randrange(80)}": rand_row(r) for _ in range(5)}
                    )
                else:
                    await w.upsert("acme", "asset", agg_id, rand_row(r))

    snaps = []
    async with RedisStore.from_url(redis_url, settings=settings) as store:
        writers = [asyncio.create_task(write(s)) for s in range(3)]
        try:
            for i in range(90):
                q = queries[i % len(queries)]
                snaps.append((q, await store.snapshot("acme", q, q.limit)))
        finally:
            stop.set()
            await asyncio.gather(*writers)
    entries = await stream_entries(admin, settings.keys.event_stream(P))
    assert len({s.watermark for _, s in snaps}) > 10  # writes really interleaved
    for q, snap in snaps:
        assert as_tuples(snap.rows) == o_top(replay(entries, snap.watermark), q), q


async def test_unindexed_entity_is_read_by_scanning(
    redis_url: str, settings: RedisSettings
) -> None:
    async with Writer.from_url(redis_url, settings=settings) as w:  # no entities declared
        for i in range(40):
            await w.upsert("acme", "asset", f"a{i}", {"kind": KINDS[i % 4], "n": i % 7})
    async with RedisStore.from_url(redis_url, settings=settings) as store:
        table = await store.rows("acme", "asset")
        for q in [
            LiveQuery(entity="asset", limit=6, sort=[SortKey(column="n", desc=True)]),
            LiveQuery(entity="asset", limit=6, where=[eq("kind", "fan")]),
        ]:
            snap = await store.snapshot("acme", q, 6)
            assert as_tuples(snap.rows) == o_top(table, q)
        assert store.plans["all"] == 1 and store.plans["walk"] == 1  # the id walk needs no index


def _mp_strings(items: list[bytes]) -> bytes:
    """A MessagePack array of strings (fixstr/str16), as earlier writers sent entries."""
    out = [b"\xdc" + len(items).to_bytes(2, "big")]
    for b in items:
        head = bytes([0xA0 | len(b)]) if len(b) < 32 else b"\xda" + len(b).to_bytes(2, "big")
        out.append(head + b)
    return b"".join(out)


async def _upsert_as_before(
    admin: Client, k: Keys, spec: EntitySpec, agg_id: str, row: dict[str, Any]
) -> None:
    """Upsert `row` with the entries the previous layout sent: a value set (and its
    count) per filterable column, a sort-index entry per sortable column."""
    items: list[bytes] = []
    for c in spec.filterable if spec.filterable is not None else spec.columns:
        vx = k.value_index("acme", "asset", c, canon(row.get(c)))
        items += [b"v", vx.encode(), f"v:{c}".encode()]
    for c in spec.sortable if spec.sortable is not None else spec.columns:
        v = row.get(c)
        if spec.columns[c] == "str":
            items += [b"l", k.sort_lex("acme", "asset", c).encode(), lex_member(v, agg_id)]
        else:
            items += [b"n", k.sort_num("acme", "asset", c).encode(), score_text(v).encode()]
    keys = [k.row("acme", "asset", agg_id), k.table("acme", "asset"), k.event_stream(P)]
    keys += [k.index_counts("acme", "asset"), k.event_seq(P)]
    args = ["upsert", "", "acme", "asset", agg_id, json.dumps(row), 1000, _mp_strings(items)]
    res = await admin.eval(WRITE, 5, *keys, *args)
    assert res[0] == b"ok"


@pytest.mark.parametrize("sortable", [None, ["name", "temp"]])
async def test_reads_exact_on_rows_of_the_earlier_layout(
    redis_url: str, settings: RedisSettings, admin: Client, sortable: list[str] | None
) -> None:
    """Rows stored with value sets, then mixed with rows of the current layout, then
    all rewritten: every read stays exact, and uses whichever index covers every row."""
    spec = SPEC.model_copy(update={"sortable": sortable})
    rng = random.Random(9)
    for i in range(50):
        await _upsert_as_before(admin, settings.keys, spec, f"a{i}", rand_row(rng))
    pump = LiveQuery(entity="asset", limit=5, where=[eq("kind", "pump")])

    async def check(store: RedisStore, mode: str) -> None:
        assert (await store._plan("acme", pump, None, pump.limit)).mode == mode
        table = await store.rows("acme", "asset")
        live = [row for _, row in table.values()]
        for _ in range(60):
            q = rand_query(rng, live)
            snap = await store.snapshot("acme", q, q.limit)
            assert as_tuples(snap.rows) == o_top(table, q), q

    async with (
        RedisStore.from_url(redis_url, settings=settings) as store,  # any sort: no spec
        Writer.from_url(redis_url, entities=[spec], settings=settings) as w,
    ):
        # Only earlier rows: a sortable column's sort index covers, else the value sets.
        await check(store, "range" if sortable is None else "sets")
        await populate(w, rng, 80, 70)  # rewrites, deletes and new rows: mixed layouts
        if sortable is not None:
            await check(store, "walk")  # neither the sets nor the filter index covers: no range
        else:
            await check(store, "range")
        table = await store.rows("acme", "asset")
        await w.upsert_many("acme", "asset", {i: row for i, (_, row) in table.items()})
        await check(store, "range")
        # Every value set and count is gone with the last row stored in them.
        assert await all_keys(admin, "lq:vx:*") == []
        assert await admin.exists(settings.keys.index_counts("acme", "asset")) == 0


async def test_eq_on_the_filter_index_and_numbers(redis_url: str, settings: RedisSettings) -> None:
    """Ranges (and the filter) find exactly the equal values: 1 == 1.0, but a bool
    is not a number (true is not 1), and nothing for a value of another type."""
    spec = SPEC.model_copy(update={"sortable": ["name"]})
    rows = {
        "a1": {"n": 1, "temp": 1.0, "on": True, "kind": "1"},
        "a2": {"n": 2**60, "temp": 1.5, "on": False, "kind": "x\x00y"},
        "a3": {"n": 2**60 + 1, "temp": None, "on": None, "kind": None},
        "a4": {"n": None, "temp": 1, "on": True, "kind": "x"},
    }
    async with Writer.from_url(redis_url, entities=[spec], settings=settings) as w:
        await w.upsert_many("acme", "asset", rows)
    async with RedisStore.from_url(redis_url, settings=settings) as store:
        for cond in [
            eq("n", 1),
            eq("n", True),
            eq("n", 2**60 + 1),
            eq("n", "1"),
            eq("temp", 1),
            in_("temp", [1.5, 2.0]),
            eq("on", 1),
            eq("kind", "x\x00y"),
            eq("kind", 1),
            in_("kind", ["x", "zz"]),
        ]:
            q = LiveQuery(entity="asset", limit=10, where=[cond])
            assert (await store._plan("acme", q, None, 10)).mode == "range"
            snap = await store.snapshot("acme", q, 10)
            values = [cond.value] if cond.op == "eq" else cond.values or []
            want = [
                i for i, row in rows.items() if any(_equal(row.get(cond.column), v) for v in values)
            ]
            assert [r.agg_id for r in snap.rows] == want, cond


def _equal(a: object, b: object) -> bool:
    """Equal values of one type class (booleans, numbers, strings); null equals nothing."""

    def kind(v: object) -> str:
        return "bool" if isinstance(v, bool) else "str" if isinstance(v, str) else "number"

    return a is not None and b is not None and kind(a) == kind(b) and a == b
