"""The engine's ops and edges, one behaviour per test.

What is expected: docs/architecture.md and docs/semantics.md.

Each test drives `Engine` over a `MemoryStore` (or a thin wrapper around it
that delays or fails reads) and checks the frames a subscriber gets and that
applying them gives the oracle's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest
from lq_oracle import apply_maintained, apply_streamed, o_matching, o_top
from pydantic import ValidationError

from raycluster.errors import ClosedError, InvalidQuery
from raycluster.livequery import (
    Cursor,
    DeltaOp,
    Engine,
    EngineSubscription,
    EntitySpec,
    LiveDelta,
    LiveQuery,
    MemoryStore,
    Snapshot,
    SortKey,
    eq,
    gt,
    ilike,
    in_,
    is_null,
    like,
    lt,
    not_in,
    or_,
)

T, E = "acme", "asset"
RESET, ENTER, LEAVE, MOVE, UPDATE = (
    DeltaOp.RESET,
    DeltaOp.ENTER,
    DeltaOp.LEAVE,
    DeltaOp.MOVE,
    DeltaOp.UPDATE,
)
MATCH, UNMATCH = DeltaOp.MATCH, DeltaOp.UNMATCH
BY_N = [SortKey(column="n")]


@contextlib.asynccontextmanager
async def running(
    store: MemoryStore | None = None,
    *,
    cushion: int = 8,
    buffer: int = 1024,
    entities: Iterable[EntitySpec] = (),
    snapshotter: Any = None,
    refiller: Any = None,
) -> AsyncIterator[tuple[MemoryStore, Engine]]:
    """A store and an engine over it, closed at the end."""
    store = store if store is not None else MemoryStore()
    engine = Engine(
        snapshotter or store,
        refiller or store,
        store,
        cushion=cushion,
        buffer=buffer,
        entities=entities,
    )
    try:
        yield store, engine
    finally:
        await engine.aclose()


async def started(engine: Engine) -> None:
    """Start the engine and let its pump attach to the feed (writes after this are seen)."""
    await engine.start()
    for _ in range(3):
        await asyncio.sleep(0)


def q(
    *,
    where: list[Any] | None = None,
    sort: list[SortKey] | None = None,
    limit: int = 5,
    cursor: list[Any] | None = None,
    mode: str = "maintained",
) -> LiveQuery:
    return LiveQuery.model_validate(
        {
            "entity": E,
            "where": where or [],
            "sort": BY_N if sort is None else sort,
            "limit": limit,
            "cursor": None if cursor is None else {"values": cursor},
            "mode": mode,
        }
    )


def seed_rows(store: MemoryStore, n: int, **extra: Any) -> None:
    for i in range(n):
        store.upsert(T, E, f"r{i:02d}", {"n": i, **extra})


def ops(frames: list[LiveDelta]) -> list[tuple[Any, ...]]:
    return [(f.op, f.agg_id, f.old_index, f.new_index) for f in frames]


class Client:
    """A maintained-mode client: the snapshot, then every frame applied."""

    def __init__(self, sub: EngineSubscription) -> None:
        self.sub = sub
        self.rows: list[tuple[str, dict[str, Any]]] = [(r.agg_id, r.vals) for r in sub.snapshot]

    def sync(self) -> list[LiveDelta]:
        frames = self.sub.drain()
        apply_maintained(self.rows, frames)
        return frames

    def ids(self) -> list[str]:
        return [i for i, _ in self.rows]


def truth(store: MemoryStore, query: LiveQuery) -> list[tuple[str, dict[str, Any]]]:
    return o_top(store.rows(T, query.entity), query)


async def wait_for(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll a condition (Ray Serve's `wait_for_condition`), never a fixed sleep."""
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.001)


# -- results and windows ---------------------------------------------------------


async def test_empty_result() -> None:
    async with running() as (store, engine):
        store.upsert(T, E, "r1", {"kind": "valve", "n": 1})
        query = q(where=[eq("kind", "pump")])
        sub = await engine.subscribe(T, query)
        assert sub.snapshot == []
        store.upsert(T, E, "r2", {"kind": "valve", "n": 2})
        await engine.settle()
        assert sub.drain() == []
        store.upsert(T, E, "r3", {"kind": "pump", "n": 3})
        await engine.settle()
        frames = sub.drain()
        assert ops(frames) == [(ENTER, "r3", None, 0)]
        assert frames[0].row == {"kind": "pump", "n": 3}


async def test_fewer_rows_than_limit() -> None:
    async with running() as (store, engine):
        seed_rows(store, 3)
        query = q(limit=10)
        sub = await engine.subscribe(T, query)
        client = Client(sub)
        assert client.ids() == ["r00", "r01", "r02"]
        assert [r.version for r in sub.snapshot] == [1, 1, 1]
        store.upsert(T, E, "mid", {"n": 1.5})
        await engine.settle()
        assert ops(client.sync()) == [(ENTER, "mid", None, 2)]
        store.delete(T, E, "r00")
        await engine.settle()
        assert ops(client.sync()) == [(LEAVE, "r00", 0, None)]
        assert client.rows == truth(store, query)


@pytest.mark.parametrize("cushion", [0, 3])
async def test_cushion_exhausted_then_refilled(cushion: int) -> None:
    async with running(cushion=cushion) as (store, engine):
        seed_rows(store, 20)
        query = q(limit=5)
        sub = await engine.subscribe(T, query)
        client = Client(sub)
        loads = engine.stats.loads
        # One visible row at a time: each leave is followed by the next row entering.
        for k in range(cushion + 3):
            store.delete(T, E, f"r{k:02d}")
            await engine.settle()
            assert ops(client.sync()) == [
                (LEAVE, f"r{k:02d}", 0, None),
                (ENTER, f"r{k + 5:02d}", None, 4),
            ]
        assert engine.stats.loads > loads  # the cushion ran out and was read again
        # Many at once, more than the cushion holds.
        for k in range(cushion + 3, cushion + 11):
            store.delete(T, E, f"r{k:02d}")
        await engine.settle()
        client.sync()
        assert client.rows == truth(store, query)
        # Down to fewer rows than the window.
        for agg_id in sorted(store.rows(T, E))[:-2]:
            store.delete(T, E, agg_id)
        await engine.settle()
        client.sync()
        assert client.rows == truth(store, query)
        assert len(client.rows) == 2


async def test_delete_last_visible_row() -> None:
    async with running(cushion=2) as (store, engine):
        seed_rows(store, 4)
        query = q(limit=3)
        sub = await engine.subscribe(T, query)
        client = Client(sub)
        store.delete(T, E, "r02")
        await engine.settle()
        assert ops(client.sync()) == [(LEAVE, "r02", 2, None), (ENTER, "r03", None, 2)]
        store.delete(T, E, "r03")
        await engine.settle()
        assert ops(client.sync()) == [(LEAVE, "r03", 2, None)]
        store.delete(T, E, "r00")
        store.delete(T, E, "r01")
        await engine.settle()
        assert ops(client.sync()) == [(LEAVE, "r00", 0, None), (LEAVE, "r01", 0, None)]
        assert client.rows == [] == truth(store, query)


async def test_row_moves_into_cushion_and_back() -> None:
    async with running(cushion=3) as (store, engine):
        seed_rows(store, 8)
        query = q(limit=3)
        sub = await engine.subscribe(T, query)
        client = Client(sub)
        store.upsert(T, E, "r01", {"n": 4.5})  # visible → cushion
        await engine.settle()
        assert ops(client.sync()) == [(LEAVE, "r01", 1, None), (ENTER, "r03", None, 2)]
        store.upsert(T, E, "r01", {"n": 0.5})  # cushion → visible
        await engine.settle()
        frames = client.sync()
        assert ops(frames) == [(LEAVE, "r03", 2, None), (ENTER, "r01", None, 1)]
        assert frames[1].row == {"n": 0.5}
        assert frames[1].version == 3
        assert client.rows == truth(store, query)


async def test_move_inside_the_window() -> None:
    async with running() as (store, engine):
        seed_rows(store, 5)
        query = q(limit=4)
        sub = await engine.subscribe(T, query)
        client = Client(sub)
        store.upsert(T, E, "r03", {"n": -1})
        await engine.settle()
        frames = client.sync()
        assert ops(frames) == [(MOVE, "r03", 3, 0)]
        assert frames[0].row == {"n": -1}
        assert frames[0].cursor == Cursor(values=[-1, "r03"])
        assert client.rows == truth(store, query)


async def test_non_sort_update_is_one_update_frame() -> None:
    async with running() as (store, engine):
        seed_rows(store, 5, note="x")
        query = q(limit=4)
        sub = await engine.subscribe(T, query)
        client = Client(sub)
        store.upsert(T, E, "r02", {"n": 2, "note": "y"})
        await engine.settle()
        frames = client.sync()
        assert ops(frames) == [(UPDATE, "r02", 2, 2)]
        assert frames[0].row == {"n": 2, "note": "y"}
        assert frames[0].version == 2
        # A change to a cushion row is not the client's business.
        store.upsert(T, E, "r04", {"n": 4, "note": "y"})
        await engine.settle()
        assert client.sync() == []
        assert client.rows == truth(store, query)


async def test_reanchor_past_the_end() -> None:
    async with running() as (store, engine):
        seed_rows(store, 5)
        sub = await engine.subscribe(T, q(limit=3))
        client = Client(sub)
        cursor = Cursor(values=[100, "zzz"])
        assert await sub.reanchor(cursor, 3) == []
        frames = client.sync()
        assert [(f.op, f.count) for f in frames] == [(RESET, 0)]
        assert client.rows == []
        store.upsert(T, E, "early", {"n": 50})  # before the anchor: never shown
        store.upsert(T, E, "tie", {"n": 100})  # same value, id "tie" < "zzz": before it
        await engine.settle()
        assert client.sync() == []
        store.upsert(T, E, "late", {"n": 200})
        await engine.settle()
        assert ops(client.sync()) == [(ENTER, "late", None, 0)]
        # And back to the start: a reset and the first three rows.
        snapshot = await sub.reanchor(None, 3)
        assert [r.agg_id for r in snapshot] == ["r00", "r01", "r02"]
        frames = client.sync()
        assert [f.op for f in frames] == [RESET, ENTER, ENTER, ENTER]
        assert frames[0].count == 3
        assert client.rows == truth(store, q(limit=3))


async def test_reanchor_with_a_cursor_between_rows() -> None:
    async with running(cushion=1) as (store, engine):
        seed_rows(store, 10)
        sub = await engine.subscribe(T, q(limit=3))
        client = Client(sub)
        snapshot = await sub.reanchor(Cursor(values=[4.5, ""]), 2)
        assert [r.agg_id for r in snapshot] == ["r05", "r06"]
        client.sync()
        store.delete(T, E, "r05")
        await engine.settle()
        client.sync()
        assert client.rows == truth(store, q(limit=2, cursor=[4.5, ""]))


# -- shared views, buffers, streamed mode, close ------------------------------------


async def test_shared_views() -> None:
    async with running() as (store, engine):
        seed_rows(store, 6)
        query = q(limit=3)
        a = await engine.subscribe(T, query)
        b = await engine.subscribe(T, q(limit=3))  # an equal query, built again
        assert engine.view_count() == 1
        c = await engine.subscribe(T, q(limit=4))
        assert engine.view_count() == 2
        store.upsert(T, E, "new", {"n": 0.5})
        store.delete(T, E, "r00")
        await engine.settle()
        fa, fb = a.drain(), b.drain()
        assert ops(fa) == ops(fb) != []
        assert [f.row for f in fa] == [f.row for f in fb]
        await a.close()
        assert engine.view_count() == 2
        await b.close()
        assert engine.view_count() == 1
        await c.close()
        assert engine.view_count() == 0


async def test_buffer_overflow_resets_to_the_current_window() -> None:
    async with running(cushion=2, buffer=4) as (store, engine):
        seed_rows(store, 10)
        query = q(limit=5)
        sub = await engine.subscribe(T, query)
        client = Client(sub)
        rng = random.Random(7)
        for _ in range(30):
            store.upsert(T, E, f"r{rng.randrange(10):02d}", {"n": rng.uniform(0, 10)})
        await engine.settle()
        frames = client.sync()
        assert frames[0].op is RESET
        assert frames[0].count == 5
        assert [f.op for f in frames[1:6]] == [ENTER] * 5
        assert sub.overflows > 0
        assert engine.stats.resets["overflow"] >= sub.overflows
        assert client.rows == truth(store, query)


async def test_streamed_mode_match_unmatch_update() -> None:
    async with running() as (store, engine):
        for i, kind in enumerate(["pump", "pump", "pump", "valve"]):
            store.upsert(T, E, f"r{i}", {"kind": kind, "n": i})
        query = q(where=[eq("kind", "pump")], limit=2, mode="streamed")
        sub = await engine.subscribe(T, query)
        assert [r.agg_id for r in sub.snapshot] == ["r0", "r1"]
        held = {r.agg_id: r.vals for r in sub.snapshot}

        async def step() -> list[tuple[DeltaOp, str | None]]:
            await engine.settle()
            frames = sub.drain()
            apply_streamed(held, frames)
            return [(f.op, f.agg_id) for f in frames]

        store.upsert(T, E, "r0", {"kind": "pump", "n": 0, "note": "x"})
        assert await step() == [(UPDATE, "r0")]
        store.upsert(T, E, "r3", {"kind": "pump", "n": 3})
        assert await step() == [(MATCH, "r3")]
        store.upsert(T, E, "r2", {"kind": "pump", "n": -2})  # outside the snapshot
        assert await step() == [(MATCH, "r2")]
        store.upsert(T, E, "r1", {"kind": "valve", "n": 1})
        assert await step() == [(UNMATCH, "r1")]
        store.delete(T, E, "r0")
        assert await step() == [(UNMATCH, "r0")]
        store.upsert(T, E, "r9", {"kind": "valve", "n": 9})
        assert await step() == []
        rows = store.rows(T, E)
        assert held == {i: rows[i][1] for i in ("r2", "r3")}


async def test_closing_ends_iteration_after_queued_frames() -> None:
    async with running() as (store, engine):
        seed_rows(store, 3)
        sub = await engine.subscribe(T, q(limit=5))
        got: list[LiveDelta] = []

        async def consume() -> None:
            async for f in sub:
                got.append(f)

        task = asyncio.create_task(consume())
        store.upsert(T, E, "a", {"n": 10})
        await engine.settle()
        await wait_for(lambda: len(got) == 1)
        await sub.close()
        await asyncio.wait_for(task, 5)
        assert sub.closed
        assert engine.view_count() == 0

        # Frames queued before close are still delivered, then iteration ends.
        sub2 = await engine.subscribe(T, q(limit=5))
        store.upsert(T, E, "b", {"n": 11})
        await engine.settle()
        await sub2.close()
        rest = [f async for f in sub2]
        assert ops(rest) == [(ENTER, "b", None, 4)]
        with pytest.raises(ClosedError):
            await sub2.reanchor(None, 5)


# -- bad input ------------------------------------------------------------------------

ASSET = EntitySpec(
    name=E,
    columns={"kind": "str", "n": "int", "secret": "str", "t": "float"},
    filterable=["kind", "n", "t"],
    sortable=["n", "t"],
    max_window=50,
)


def _unknown_op() -> LiveQuery:
    return LiveQuery.model_validate(
        {"entity": E, "where": [{"op": "regex", "column": "kind", "value": "p.*"}], "limit": 5}
    )


BAD_QUERIES: dict[str, tuple[Callable[[], LiveQuery], type[Exception], str]] = {
    "unknown-operator": (_unknown_op, ValidationError, "where"),
    "empty-in": (lambda: q(where=[in_("kind", [])]), InvalidQuery, "where.values"),
    "empty-not-in": (lambda: q(where=[not_in("kind", [])]), InvalidQuery, "where.values"),
    "limit-zero": (lambda: q(limit=0), ValidationError, "limit"),
    "limit-negative": (lambda: q(limit=-3), ValidationError, "limit"),
    "cursor-too-short": (lambda: q(cursor=["r01"]), ValidationError, "cursor.values"),
    "cursor-too-long": (lambda: q(cursor=[1, 2, "r01"]), ValidationError, "cursor.values"),
    "cursor-id-not-str": (lambda: q(cursor=[1, 2]), ValidationError, "cursor.values"),
}

BAD_FOR_SPEC: dict[str, tuple[LiveQuery, str]] = {
    "limit-above-max": (q(limit=51), "limit"),
    "not-filterable": (q(where=[eq("secret", "x")]), "where.0.column"),
    "unknown-column": (q(where=[eq("colour", "red")]), "where.0.column"),
    "nested-not-filterable": (
        q(where=[or_(eq("kind", "a"), eq("secret", "x"))]),
        "where.0.args.1.column",
    ),
    "not-sortable": (q(sort=[SortKey(column="kind")]), "sort.0.column"),
    "like-on-int": (q(where=[like("n", "1%")]), "where.0.op"),
    "wrong-value-type": (q(where=[gt("n", "ten")]), "where.0.value"),
    "cursor-wrong-type": (q(cursor=["one", "r01"]), "cursor.values.0"),
    "unknown-entity": (LiveQuery(entity="site", limit=5), "entity"),
}


@pytest.mark.parametrize("name", sorted(BAD_QUERIES))
def test_malformed_queries_are_rejected(name: str) -> None:
    build, exc, field = BAD_QUERIES[name]
    with pytest.raises(exc) as info:
        build()
    assert field in str(info.value)


@pytest.mark.parametrize("name", sorted(BAD_FOR_SPEC))
async def test_subscribe_rejects_queries_the_entity_does_not_allow(name: str) -> None:
    query, field = BAD_FOR_SPEC[name]
    async with running(MemoryStore([ASSET]), entities=[ASSET]) as (store, engine):
        store.upsert(T, E, "r01", {"kind": "pump", "n": 1})
        ok = await engine.subscribe(T, q(where=[eq("kind", "pump")], limit=5))
        views, subs = engine.view_count(), len(engine.subscriptions())
        with pytest.raises(InvalidQuery) as info:
            await engine.subscribe(T, query)
        assert info.value.field == field
        assert engine.view_count() == views == 1
        assert len(engine.subscriptions()) == subs
        if name == "limit-above-max":  # a bad reanchor leaves the subscription as it was
            with pytest.raises(InvalidQuery):
                await ok.reanchor(None, 51)
        store.upsert(T, E, "r02", {"kind": "pump", "n": 2})
        await engine.settle()
        assert ops(ok.drain()) == [(ENTER, "r02", None, 1)]


async def test_bad_reanchor_cursor_keeps_the_window() -> None:
    async with running() as (store, engine):
        seed_rows(store, 3)
        sub = await engine.subscribe(T, q(limit=2))
        with pytest.raises(InvalidQuery, match=r"cursor\.values"):
            await sub.reanchor(Cursor(values=["r01"]), 2)
        assert engine.view_count() == 1
        store.upsert(T, E, "a", {"n": -1})
        await engine.settle()
        assert ops(sub.drain()) == [(LEAVE, "r01", 1, None), (ENTER, "a", None, 0)]


async def test_failed_initial_read_registers_nothing() -> None:
    store = MemoryStore()

    class Broken:
        async def snapshot(self, tenant: str, query: LiveQuery, limit: int) -> Snapshot:
            raise ConnectionError("store down")

    async with running(store, snapshotter=Broken()) as (_, engine):
        with pytest.raises(ConnectionError):
            await engine.subscribe(T, q())
        assert engine.view_count() == 0
        assert engine.subscriptions() == []


# -- handoff, reconcile, failures -------------------------------------------------------


class GatedStore:
    """Reads atomically, then waits for `gate` before answering (a slow network hop)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.gate = asyncio.Event()
        self.reads = 0
        self.read_done = asyncio.Event()

    async def snapshot(self, tenant: str, query: LiveQuery, limit: int) -> Snapshot:
        snap = self.store.read(tenant, query, query.cursor, limit)
        self.reads += 1
        self.read_done.set()
        await self.gate.wait()
        return snap

    async def refill(
        self, tenant: str, query: LiveQuery, after: Cursor | None, limit: int
    ) -> Snapshot:
        snap = self.store.read(tenant, query, after if after is not None else query.cursor, limit)
        self.reads += 1
        self.read_done.set()
        await self.gate.wait()
        return snap


@pytest.mark.parametrize("mode", ["maintained", "streamed"])
@pytest.mark.parametrize("where", [[], [eq("kind", "pump")]], ids=["residual", "indexed"])
async def test_change_after_the_snapshot_read_is_not_lost(mode: str, where: list[Any]) -> None:
    """A write that lands after the snapshot's watermark, while the read is in flight.

    docs/architecture.md#gapless-handoff: the view applies every event after the
    snapshot's position.
    """
    store = MemoryStore()
    gated = GatedStore(store)
    store.upsert(T, E, "r1", {"kind": "pump", "n": 1})
    store.upsert(T, E, "r2", {"kind": "pump", "n": 2})
    async with running(store, snapshotter=gated, refiller=gated) as (_, engine):
        await started(engine)
        query = q(where=where, mode=mode)
        task = asyncio.create_task(engine.subscribe(T, query))
        await gated.read_done.wait()
        store.delete(T, E, "r1")
        store.upsert(T, E, "r2", {"kind": "valve", "n": 2})
        await wait_for(lambda: engine.stats.changes >= 2)  # the pump has dispatched both
        gated.gate.set()
        sub = await task
        await engine.settle()
        if mode == "streamed":
            held = {r.agg_id: r.vals for r in sub.snapshot}
            apply_streamed(held, sub.drain())
            assert held == dict(o_matching(store.rows(T, E), query))
        else:
            client = Client(sub)
            client.sync()
            assert client.rows == truth(store, query)


async def test_parked_change_then_leave_in_one_batch() -> None:
    """Writes made between settles: a refill starts mid-batch and parks what follows."""
    async with running(cushion=0) as (store, engine):
        store.upsert(T, E, "a", {"n": 1})
        store.upsert(T, E, "b", {"n": 2})
        query = q(limit=1)
        sub = await engine.subscribe(T, query)
        client = Client(sub)
        store.delete(T, E, "a")  # the window empties: a refill starts
        store.upsert(T, E, "p", {"n": 0})  # parked behind the refill
        store.delete(T, E, "p")  # p is not held yet: this one never reaches the view
        await engine.settle()
        client.sync()
        assert client.rows == truth(store, query) == [("b", {"n": 2})]


async def test_streamed_snapshot_after_unpumped_insert_and_delete() -> None:
    async with running() as (store, engine):
        await started(engine)
        store.upsert(T, E, "p", {"n": 0})
        store.delete(T, E, "p")
        sub = await engine.subscribe(T, q(mode="streamed"))
        await engine.settle()
        held = {r.agg_id: r.vals for r in sub.snapshot}
        apply_streamed(held, sub.drain())
        assert held == {}


async def test_parked_inserts_that_trim_the_range_keep_it_exact() -> None:
    """Parked inserts push the window's tail out while a refill reads after that tail."""
    async with running(cushion=0) as (store, engine):
        for agg_id, n in [("a", 1), ("b", 2), ("c", 3)]:
            store.upsert(T, E, agg_id, {"n": n})
        query = q(limit=3)
        sub = await engine.subscribe(T, query)
        client = Client(sub)
        store.delete(T, E, "c")  # refill reads strictly after b: nothing, so "complete"
        store.upsert(T, E, "p1", {"n": 0.5})  # parked; applied first, they trim b away
        store.upsert(T, E, "p2", {"n": 0.7})
        await engine.settle()
        client.sync()
        assert client.rows == truth(store, query)
        store.delete(T, E, "p1")  # b must come back
        await engine.settle()
        client.sync()
        assert client.rows == truth(store, query)
        assert await engine.reconcile() == 0


class LaggyStore:
    """Reads atomically, then answers after a few loop turns."""

    def __init__(self, store: MemoryStore, rng: random.Random) -> None:
        self.store = store
        self.rng = rng

    async def snapshot(self, tenant: str, query: LiveQuery, limit: int) -> Snapshot:
        snap = self.store.read(tenant, query, query.cursor, limit)
        for _ in range(self.rng.randint(0, 4)):
            await asyncio.sleep(0)
        return snap

    async def refill(
        self, tenant: str, query: LiveQuery, after: Cursor | None, limit: int
    ) -> Snapshot:
        snap = self.store.read(tenant, query, after if after is not None else query.cursor, limit)
        for _ in range(self.rng.randint(0, 4)):
            await asyncio.sleep(0)
        return snap


HANDOFF_QUERIES = [
    q(limit=4),
    q(where=[eq("kind", "pump")], limit=3),
    q(where=[in_("kind", ["pump", "fan"]), gt("n", 3)], sort=[SortKey(column="n", desc=True)]),
    q(where=[or_(is_null("kind"), lt("n", 5))], limit=6, cursor=[2, "r"]),
    q(where=[ilike("kind", "P%")], limit=2, mode="streamed"),
]


@pytest.mark.parametrize("lag", [False, True], ids=["direct", "laggy"])
@pytest.mark.parametrize("seed", range(6))
async def test_subscribe_while_writes_happen_concurrently(seed: int, lag: bool) -> None:
    rng = random.Random(seed)
    store = MemoryStore()
    laggy = LaggyStore(store, random.Random(seed)) if lag else None
    kinds = ["pump", "fan", "valve", None]
    for i in range(20):
        store.upsert(T, E, f"r{i:02d}", {"kind": rng.choice(kinds), "n": rng.randrange(10)})
    async with running(store, cushion=seed % 3, snapshotter=laggy, refiller=laggy) as (
        _,
        engine,
    ):
        await started(engine)

        async def writer() -> None:
            for _ in range(300):
                agg_id = f"r{rng.randrange(25):02d}"
                if rng.random() < 0.2:
                    store.delete(T, E, agg_id)
                else:
                    store.upsert(T, E, agg_id, {"kind": rng.choice(kinds), "n": rng.randrange(10)})
                if rng.random() < 0.5:
                    await asyncio.sleep(0)

        task = asyncio.create_task(writer())
        subs: list[EngineSubscription] = []
        for query in HANDOFF_QUERIES:
            for _ in range(rng.randint(0, 6)):
                await asyncio.sleep(0)
            subs.append(await engine.subscribe(T, query))
        await task
        await engine.settle()
        rows = store.rows(T, E)
        for sub in subs:
            if sub.query.mode == "streamed":
                held = {r.agg_id: r.vals for r in sub.snapshot}
                apply_streamed(held, sub.drain())
                now = dict(o_matching(rows, sub.query))
                assert {i: r for i, r in held.items() if now.get(i) != r} == {}, sub.query
            else:
                client = Client(sub)
                client.sync()
                assert client.rows == truth(store, sub.query), sub.query


async def test_reconcile_is_zero_on_a_healthy_engine() -> None:
    async with running(cushion=2) as (store, engine):
        seed_rows(store, 12, kind="pump")
        subs = [
            await engine.subscribe(T, q(limit=3)),
            await engine.subscribe(T, q(where=[eq("kind", "pump")], limit=5)),
            await engine.subscribe(T, q(limit=4, cursor=[6, "r06"])),
        ]
        rng = random.Random(3)
        for _ in range(40):
            agg_id = f"r{rng.randrange(12):02d}"
            store.upsert(T, E, agg_id, {"n": rng.randrange(20), "kind": "pump"})
            await engine.settle()
        for sub in subs:
            sub.drain()
        assert await engine.reconcile() == 0
        assert all(sub.drain() == [] for sub in subs)  # no reset was sent
        assert engine.stats.resets["reconcile"] == 0


class FlakyRefills:
    """A store whose refills fail `failures` times before they work."""

    def __init__(self, store: MemoryStore, failures: int) -> None:
        self.store = store
        self.failures = failures
        self.calls = 0

    async def refill(
        self, tenant: str, query: LiveQuery, after: Cursor | None, limit: int
    ) -> Snapshot:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("refill failed")
        return await self.store.refill(tenant, query, after, limit)


async def test_failing_refills_are_retried_until_exact() -> None:
    store = MemoryStore()
    flaky = FlakyRefills(store, failures=3)
    async with running(store, cushion=1, refiller=flaky) as (_, engine):
        seed_rows(store, 10)
        query = q(limit=3)
        sub = await engine.subscribe(T, query)
        client = Client(sub)
        for agg_id in ("r00", "r01", "r02"):
            store.delete(T, E, agg_id)
        await engine.settle(timeout_s=10)
        client.sync()
        assert client.rows == truth(store, query)
        assert engine.stats.load_errors == 3
        assert flaky.calls >= 4
        assert await engine.reconcile() == 0


# -- wire format ---------------------------------------------------------------------------


def test_live_query_json_round_trip() -> None:
    query = LiveQuery(
        entity=E,
        where=[
            eq("kind", "pump"),
            in_("n", [1, 2, 3]),
            not_in("kind", ["x"]),
            or_([gt("t", 1.5), lt("t", 9.0)], is_null("kind"), ilike("kind", "P\\_%")),
            eq("on", False),
        ],
        sort=[SortKey(column="t", desc=True), SortKey(column="kind")],
        limit=7,
        cursor=Cursor(values=[None, "pump", "r07"]),
        mode="streamed",
    )
    back = LiveQuery.model_validate_json(query.model_dump_json())
    assert back == query
    assert back.shape() == query.shape()


async def test_live_delta_json_round_trip_for_every_op() -> None:
    async with running(cushion=1) as (store, engine):
        seed_rows(store, 4, tag="x")
        sub = await engine.subscribe(T, q(limit=2))
        streamed = await engine.subscribe(T, q(where=[gt("n", 1)], mode="streamed"))
        store.upsert(T, E, "r01", {"n": 1, "tag": "y"})  # update
        store.upsert(T, E, "r01", {"n": -1, "tag": "y"})  # move
        store.upsert(T, E, "r00", {"n": 9, "tag": "y"})  # leave + enter; unmatch→match
        store.upsert(T, E, "r03", {"n": 0.5, "tag": "y"})  # unmatch
        await engine.settle()
        await sub.reanchor(Cursor(values=[0, "r"]), 2)  # reset
        frames = sub.drain() + streamed.drain()
        seen = {f.op for f in frames}
        assert seen == set(DeltaOp), seen
        for f in frames:
            back = LiveDelta.model_validate_json(f.model_dump_json())
            assert back == f
            assert back.op is f.op
        assert {op.value for op in DeltaOp} == {
            "reset",
            "enter",
            "leave",
            "move",
            "update",
            "match",
            "unmatch",
        }


async def test_contradictory_eq_terms_subscribe_and_close_cleanly() -> None:
    """Two eq on one column with different values: an empty index term, nothing matches."""
    store = MemoryStore()
    store.upsert("t", "e", "r1", {"on": True})
    async with Engine(store, store, store) as engine:
        a = await engine.subscribe(
            "t", LiveQuery(entity="e", limit=5, where=[eq("on", True), eq("on", False)])
        )
        b = await engine.subscribe("t", LiveQuery(entity="e", limit=5, where=[eq("on", True)]))
        assert a.snapshot == [] and [r.agg_id for r in b.snapshot] == ["r1"]
        await b.close()
        await a.close()
        assert engine.view_count() == 0
