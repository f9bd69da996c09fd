"""Values of several types in one column, in-process (issue 16, items 1 and 2).

An undeclared entity takes any scalar in any column. The documented order
(docs/semantics.md) is one total order over every type: ascending
`false < true < numbers < strings < null`, descending its exact reverse; a
filter term compares values of one type class only. Every window stays
exact, and a view that fails anyway is reset from the store while every
other view still gets the change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from lq_oracle import apply_maintained, o_matching, o_top

from raycluster.livequery import (
    Cursor,
    DeltaOp,
    Engine,
    LiveQuery,
    MemoryStore,
    SortKey,
    compile_predicate,
    eq,
    gt,
    gte,
    in_,
    like,
    lt,
    ne,
    not_in,
    or_,
    sort_key_of,
)

T, E = "acme", "thing"  # not declared: any scalar in any column


@contextlib.asynccontextmanager
async def running(store: MemoryStore) -> AsyncIterator[Engine]:
    engine = Engine(store, store, store, cushion=2)
    try:
        yield engine
    finally:
        await engine.aclose()


def q(
    *where: Any, sort: list[SortKey] | None = None, limit: int = 10, cursor: Any = None
) -> LiveQuery:
    return LiveQuery(
        entity=E,
        where=list(where),
        sort=sort or [],
        limit=limit,
        cursor=Cursor(values=cursor) if cursor is not None else None,
    )


class Client:
    """A subscriber's list, built only from its snapshot and frames."""

    def __init__(self, sub: Any) -> None:
        self.sub = sub
        self.items = [(r.agg_id, r.vals) for r in sub.snapshot]

    def check(self, store: MemoryStore) -> None:
        apply_maintained(self.items, self.sub.drain())
        assert self.items == o_top(store.rows(T, E), self.sub.query), self.sub.query


# -- the order across types ------------------------------------------------------------


ASCENDING: list[Any] = [
    False, True, -(2**63), -1.5, 0, 0.5, 1, 2**53, 2**53 + 1, 2**63 - 1, "", "0", "a", "é", None,
]  # fmt: skip


def test_one_order_over_every_type() -> None:
    """false < true < numbers (by value) < strings (code points) < null; desc reversed."""
    rows = [(f"r{i:02d}", {"x": v}) for i, v in enumerate(ASCENDING)]
    for desc in (False, True):
        sort = [SortKey(column="x", desc=desc)]
        got = [i for i, _ in sorted(rows, key=lambda r: sort_key_of(r[1], sort, r[0]))]
        want = [i for i, _ in rows]
        assert got == (want[::-1] if desc else want)


def test_equal_numbers_tie_and_break_on_the_id() -> None:
    """1 and 1.0 are one number; true is not 1 (it sorts before every number)."""
    rows = [("b", {"x": 1}), ("a", {"x": 1.0}), ("c", {"x": True}), ("d", {"x": 0.5})]
    sort = [SortKey(column="x")]
    assert [i for i, _ in sorted(rows, key=lambda r: sort_key_of(r[1], sort, r[0]))] == [
        "c",
        "d",
        "a",
        "b",
    ]


# -- comparisons across types ----------------------------------------------------------


def test_or_does_not_depend_on_the_order_of_its_members() -> None:
    row = {"x": "hot", "y": "q"}
    assert compile_predicate([or_(gt("x", 0), eq("y", "q"))])(row) is True
    assert compile_predicate([or_(eq("y", "q"), gt("x", 0))])(row) is True
    assert compile_predicate([or_(lt("x", 5), gte("x", 5))])(row) is False


def test_a_term_compares_one_type_class_only() -> None:
    """eq/in/</like: false on another type; ne/not_in: true on a non-null one, false on null."""
    cases: list[tuple[Any, dict[str, Any], bool]] = [
        (eq("x", 1), {"x": True}, False),
        (eq("x", True), {"x": 1}, False),
        (eq("x", 1), {"x": 1.0}, True),
        (eq("x", "1"), {"x": 1}, False),
        (ne("x", 1), {"x": True}, True),
        (ne("x", 1), {"x": "1"}, True),
        (ne("x", 1), {"x": 1.0}, False),
        (ne("x", 1), {"x": None}, False),
        (gt("x", 0), {"x": True}, False),
        (gt("x", False), {"x": True}, True),
        (lt("x", "a"), {"x": 5}, False),
        (in_("x", [1, "a"]), {"x": True}, False),
        (in_("x", [True, "a"]), {"x": 1}, False),
        (in_("x", [True, 2]), {"x": True}, True),
        (not_in("x", [1, "a"]), {"x": True}, True),
        (not_in("x", [1, "a"]), {"x": 1.0}, False),
        (not_in("x", [1]), {}, False),
        (like("x", "1%"), {"x": 10}, False),
        (gt("x", 2**53), {"x": 2**53 + 1}, True),
        (gt("x", float(2**53)), {"x": 2**53 + 1}, True),
        (eq("x", float(2**53)), {"x": 2**53 + 1}, False),
    ]
    for cond, row, want in cases:
        assert compile_predicate([cond])(row) is want, (cond, row)


# -- the engine over a mixed column ----------------------------------------------------


async def test_a_value_of_another_type_reaches_every_view() -> None:
    """The issue's case: a str among ints in a sorted column breaks no window."""
    store = MemoryStore()
    for i in range(6):
        store.upsert(T, E, f"r{i}", {"x": i, "y": i % 2})
    async with running(store) as engine:
        by_x = Client(await engine.subscribe(T, q(sort=[SortKey(column="x")], limit=4)))
        by_x_desc = Client(
            await engine.subscribe(T, q(sort=[SortKey(column="x", desc=True)], limit=3))
        )
        odd = Client(await engine.subscribe(T, q(eq("y", 1), limit=10)))
        store.upsert(T, E, "r9", {"x": "zz", "y": 1})
        store.upsert(T, E, "r2", {"x": True, "y": 1})
        store.upsert(T, E, "r3", {"x": 2.5, "y": 0})
        await engine.settle()
        for c in (by_x, by_x_desc, odd):
            c.check(store)
        assert "r9" in [i for i, _ in odd.items]
        assert by_x_desc.items[0][0] == "r9"  # strings first, descending
        assert engine.stats.dispatch_errors == 0
        # New subscriptions (and the store's own read) order the column too.
        late = Client(
            await engine.subscribe(T, q(sort=[SortKey(column="x")], limit=10, cursor=[1, "r1"]))
        )
        late.check(store)
        query = q(sort=[SortKey(column="x")], limit=10)
        snap = await store.snapshot(T, query, 10)
        assert [r.agg_id for r in snap.rows] == [i for i, _ in o_matching(store.rows(T, E), query)]


class Bomb(int):
    """An int that refuses to be ordered against other rows' values: a value one
    view cannot handle (the store's own range check still passes)."""

    def _no(self, other: object) -> bool:
        if isinstance(other, int) and abs(other) >= 2**62:
            return int(self) < other if other > 0 else int(self) > other
        raise RuntimeError("cannot order a Bomb")

    __lt__ = __le__ = __gt__ = __ge__ = _no  # type: ignore[assignment]


async def test_a_view_that_fails_is_reset_and_the_others_get_the_change() -> None:
    store = MemoryStore()
    for i in range(5):
        store.upsert(T, E, f"r{i}", {"x": i, "y": 1})
    async with running(store) as engine:
        sorted_sub = await engine.subscribe(T, q(sort=[SortKey(column="x")], limit=3))
        sorted_c = Client(sorted_sub)
        # Shares no view with the first; filed in the index under y = 1.
        plain = Client(await engine.subscribe(T, q(eq("y", 1), limit=10)))
        store.upsert(T, E, "r1", {"x": Bomb(7), "y": 1})  # the sorted view cannot place it
        # (not `settle`: the failed view's re-read cannot finish while the row is there)
        async with asyncio.timeout(10):
            while engine.stats.changes < 1:
                await asyncio.sleep(0.01)
        assert engine.stats.dispatch_errors == 1
        assert engine.stats.resets["error"] >= 1
        plain.check(store)  # the other view got the change
        # Its store read fails too while the row is there (retried with backoff);
        # once the row can be ordered again, the view is the truth and says so.
        store.upsert(T, E, "r1", {"x": 7, "y": 1})
        await engine.settle(timeout_s=10)
        frames = sorted_sub.drain()
        assert DeltaOp.RESET in [f.op for f in frames]
        apply_maintained(sorted_c.items, frames)
        assert sorted_c.items == o_top(store.rows(T, E), sorted_sub.query)
        plain.check(store)
        # And it keeps working afterwards.
        store.upsert(T, E, "r8", {"x": -1, "y": 1})
        await engine.settle()
        sorted_c.check(store)
        plain.check(store)


async def test_a_failing_sink_does_not_keep_the_frames_from_the_others() -> None:
    store = MemoryStore()
    store.upsert(T, E, "a", {"x": 1})
    got: dict[str, list[Any]] = {"ok": []}
    calls = {"bad": 0}

    def bad(sub: Any, frames: list[Any]) -> None:
        calls["bad"] += 1
        raise RuntimeError("sink broke")

    def ok(sub: Any, frames: list[Any]) -> None:
        got["ok"] += frames

    async with running(store) as engine:
        query = q(sort=[SortKey(column="x")])
        await engine.subscribe(T, query, sink=bad)
        await engine.subscribe(T, query, sink=ok)  # the same view
        assert engine.view_count() == 1
        store.upsert(T, E, "b", {"x": 0})
        await engine.settle()
        assert [f.op for f in got["ok"]] == [DeltaOp.ENTER]
        assert calls["bad"] == 2  # the frames, then the reset that would replace them
        assert engine.stats.dispatch_errors == 1
