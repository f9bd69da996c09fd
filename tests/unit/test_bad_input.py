"""The in-process entry points refuse bad input clearly (issue 16): `MemoryStore`,
`Engine.subscribe`/`reanchor`, the condition constructors and `LiveQuery`.

A refusal is `InvalidRow` / `InvalidQuery` naming the field path and quoting
the value, raised before anything is written or registered.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from cluster_harness import Cluster
from pydantic import ValidationError

from raycluster.errors import InvalidQuery, InvalidRow
from raycluster.livequery import (
    Cond,
    Cursor,
    Engine,
    EntitySpec,
    LiveQuery,
    MemoryStore,
    SortKey,
    and_,
    compile_predicate,
    eq,
    in_,
    is_null,
    not_in,
    or_,
)
from raycluster.livequery.models import MAX_DEPTH

T = "acme"
SPEC = EntitySpec(name="asset", columns={"name": "str", "n": "int", "on": "bool"})


def q(entity: str = "thing", *where: Cond, **kw: Any) -> LiveQuery:
    return LiveQuery(entity=entity, where=list(where), limit=kw.pop("limit", 5), **kw)


def nested(depth: int) -> Cond:
    """`or_` groups nested `depth` deep, built without validation (any depth)."""
    c = eq("x", 1)
    for _ in range(depth):
        c = Cond.model_construct(op="or", column=None, value=None, values=None, args=[c])
    return c


# -- 3: a row is an object; a delete is `delete` ---------------------------------------


@pytest.mark.parametrize("specs", [[], [SPEC]], ids=["undeclared", "declared"])
@pytest.mark.parametrize("row", [None, [("name", "x")], "name", 5])
def test_upsert_refuses_a_row_that_is_not_an_object(specs: list[EntitySpec], row: Any) -> None:
    store = MemoryStore(specs)
    store.upsert(T, "asset", "a1", {"name": "ok"})
    with pytest.raises(InvalidRow) as info:
        store.upsert(T, "asset", "a1", row)
    assert info.value.field == "row"
    assert store.rows(T, "asset") == {"a1": (1, {"name": "ok"})}


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"x": [1]}, "row.x"),
        ({"x": {"y": 1}}, "row.x"),
        ({"x": 2**63}, "row.x"),
        ({"x": -(2**63) - 1}, "row.x"),
        ({"x": float("nan")}, "row.x"),
        ({"x": "\ud800"}, "row.x"),
        ({5: 1}, "row.5"),
        ({"\ud800": 1}, "row.\\ud800"),
    ],
)
def test_undeclared_rows_hold_scalars_only(row: dict[Any, Any], field: str) -> None:
    store = MemoryStore()
    with pytest.raises(InvalidRow) as info:
        store.upsert(T, "thing", "a1", row)
    assert info.value.field == field
    str(info.value).encode()  # quotable, even with a lone surrogate in it
    assert store.rows(T, "thing") == {}


# -- 5: names -------------------------------------------------------------------------

BAD_NAMES = [
    (None, "thing", "a1", "tenant"),
    (5, "thing", "a1", "tenant"),
    ("", "thing", "a1", "tenant"),
    ("\ud800", "thing", "a1", "tenant"),
    ("acme", None, "a1", "entity"),
    ("acme", "thing", None, "agg_id"),
    ("acme", "thing", 5, "agg_id"),
    ("acme", "thing", "\udfff", "agg_id"),
]


@pytest.mark.parametrize(("tenant", "entity", "agg_id", "field"), BAD_NAMES)
def test_memory_store_refuses_bad_names(tenant: Any, entity: Any, agg_id: Any, field: str) -> None:
    store = MemoryStore()
    for call in (
        lambda: store.upsert(tenant, entity, agg_id, {"x": 1}),
        lambda: store.delete(tenant, entity, agg_id),
        lambda: store.get(tenant, entity, agg_id),
    ):
        with pytest.raises(InvalidRow) as info:
            call()
        assert info.value.field == field
    assert store._seq == 0  # nothing written


async def test_memory_store_reads_refuse_bad_arguments() -> None:
    store = MemoryStore()
    for args, field in [
        ((None, q(), 5), "tenant"),
        (("\ud800", q(), 5), "tenant"),
        ((T, "thing", 5), "query"),
        ((T, q(), 0), "limit"),
        ((T, q(), True), "limit"),
    ]:
        with pytest.raises(InvalidQuery) as info:
            await store.snapshot(*args)
        assert info.value.field == field, args
    with pytest.raises(InvalidQuery) as info:
        await store.refill(T, q(sort=[SortKey(column="x")]), Cursor(values=["a1"]), 5)
    assert info.value.field == "after.values"
    with pytest.raises(InvalidQuery) as info:
        await store.refill(T, q(), "a1", 5)  # type: ignore[arg-type]
    assert info.value.field == "after"


def test_memory_store_refuses_bad_expected_versions() -> None:
    store = MemoryStore()
    for bad in (True, -1, "1", 1.0):
        with pytest.raises(InvalidRow) as info:
            store.upsert(T, "thing", "a1", {"x": 1}, expected_version=bad)
        assert info.value.field == "expected_version"
    assert store.rows(T, "thing") == {}


async def test_engine_subscribe_refuses_bad_arguments_and_registers_nothing() -> None:
    store = MemoryStore()
    async with Engine(store, store, store) as engine:
        for args, kw, field in [
            ((None, q()), {}, "tenant"),
            ((5, q()), {}, "tenant"),
            (("\ud800", q()), {}, "tenant"),
            ((T, "not a query"), {}, "query"),
            ((T, q()), {"sub_id": 5}, "sub_id"),
            ((T, q()), {"sub_id": ""}, "sub_id"),
            (
                (T, LiveQuery.model_construct(entity="thing", where=[nested(200)], limit=5)),
                {},
                "where.0",
            ),
        ]:
            with pytest.raises(InvalidQuery) as info:
                await engine.subscribe(*args, **kw)
            assert info.value.field.startswith(field), (args, kw)
        assert engine.subscriptions() == [] and engine.view_count() == 0


async def test_reanchor_refuses_bad_arguments_and_keeps_the_window() -> None:
    store = MemoryStore()
    for i in range(4):
        store.upsert(T, "thing", f"r{i}", {"x": i})
    async with Engine(store, store, store) as engine:
        sub = await engine.subscribe(T, q(sort=[SortKey(column="x")], limit=2))
        for cursor, limit, field in [
            (None, 0, "limit"),
            (None, True, "limit"),
            (None, "2", "limit"),
            ("r1", 2, "cursor"),
            (Cursor(values=["r1"]), 2, "cursor.values"),
            (Cursor.model_construct(values=[2**64, "r1"]), 2, "cursor.values.0"),
        ]:
            with pytest.raises(InvalidQuery) as info:
                await sub.reanchor(cursor, limit)
            assert info.value.field == field, (cursor, limit)
        assert [r.agg_id for r in sub.snapshot] == ["r0", "r1"]
        assert engine.view_count() == 1


# -- 6: integers are 64-bit -------------------------------------------------------------


def test_ints_beyond_64_bits_are_refused_in_queries() -> None:
    for make, field in [
        (lambda: eq("i", 10**400), "where.value"),
        (lambda: in_("i", [1, 2**63]), "where.values.1"),
        (lambda: eq("i", -(2**63) - 1), "where.value"),
    ]:
        with pytest.raises(InvalidQuery) as info:
            make()
        assert info.value.field == field
    assert eq("i", 2**63 - 1).value == 2**63 - 1  # the edges are in
    assert eq("i", -(2**63)).value == -(2**63)
    with pytest.raises(ValidationError, match=r"cursor\.values\.0"):
        LiveQuery.model_validate(
            {
                "entity": "e",
                "limit": 1,
                "sort": [{"column": "i"}],
                "cursor": {"values": [10**400, "a"]},
            }
        )


async def test_ints_within_64_bits_order_exactly_in_process() -> None:
    store = MemoryStore()
    values = [2**63 - 1, 2**63 - 2, 2**53 + 1, 2**53, float(2**53), 2**53 - 1, -(2**63)]
    for i, v in enumerate(values):
        store.upsert(T, "thing", f"r{i}", {"x": v})
    snap = await store.snapshot(T, q(sort=[SortKey(column="x")], limit=10), 10)
    assert [r.vals["x"] for r in snap.rows] == sorted(values)
    assert [r.agg_id for r in snap.rows] == ["r6", "r5", "r3", "r4", "r2", "r1", "r0"]
    snap = await store.snapshot(T, q("thing", eq("x", 2**53 + 1), limit=10), 10)
    assert [r.agg_id for r in snap.rows] == ["r2"]


# -- 7: a condition's fields fit its operator -------------------------------------------


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"op": "eq", "column": "i", "value": "hot", "values": [1]}, "where.values"),
        ({"op": "is_null", "column": "i", "value": 5}, "where.value"),
        ({"op": "is_not_null", "column": "i", "values": [5]}, "where.values"),
        ({"op": "in", "column": "i", "value": 1, "values": [1]}, "where.value"),
        ({"op": "not_in", "column": "i", "value": 1, "values": [2]}, "where.value"),
        ({"op": "in", "column": "i", "values": "abc"}, "values"),
        ({"op": "or", "args": [{"op": "is_null", "column": "i"}], "value": 1}, "where.value"),
        ({"op": "and", "args": [{"op": "is_null", "column": "i"}], "values": [1]}, "where.values"),
        ({"op": "like", "column": "i", "value": "a%", "values": ["b"]}, "where.values"),
        ({"op": "eq", "column": "i", "value": [1]}, "value"),
    ],
)
def test_a_condition_takes_exactly_what_its_operator_needs(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
        Cond.model_validate(doc)
    with pytest.raises(ValidationError):
        LiveQuery.model_validate_json(json.dumps({"entity": "e", "where": [doc], "limit": 1}))


def test_explicit_nulls_for_fields_an_operator_does_not_take_are_fine() -> None:
    """What a JSON encoder that writes every field sends (`LiveQuery.shape` does)."""
    c = Cond.model_validate(
        {"op": "is_null", "column": "i", "value": None, "values": None, "args": None}
    )
    assert compile_predicate([c])({}) is True
    query = q("e", or_(eq("a", 1), in_("b", ["x"])), not_in("c", [1]))
    assert LiveQuery.model_validate_json(query.shape()) == query


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: in_("x", "abc"), "where.values"),
        (lambda: not_in("x", "abc"), "where.values"),
        (lambda: in_("x", b"ab"), "where.values"),
        (lambda: in_("x", {"a": 1}), "where.values"),
        (lambda: in_("x", 5), "where.values"),
        (lambda: eq(5, 1), "where.column"),
        (lambda: eq("", 1), "where.column"),
        (lambda: eq("x", [1]), "where.value"),
        (lambda: eq("x", None), "where.value"),
        (lambda: is_null(None), "where.column"),
        (lambda: or_("x"), "where.args.0"),
        (lambda: and_(eq("x", 1), None), "where.args.1"),
        (lambda: or_(), "where.args"),
    ],
)
def test_constructors_refuse_wrong_shapes(make: Any, field: str) -> None:
    with pytest.raises(InvalidQuery) as info:
        make()
    assert info.value.field == field


# -- 8: nesting -----------------------------------------------------------------------


async def test_nesting_up_to_the_bound_compiles_and_deeper_is_refused() -> None:
    c = eq("x", 1)
    for _ in range(MAX_DEPTH):
        c = or_(c, eq("y", 2))
    assert compile_predicate([c])({"x": 1}) is True
    assert compile_predicate([c])({"x": 2}) is False
    store = MemoryStore()
    store.upsert(T, "thing", "a", {"x": 1})
    async with Engine(store, store, store) as engine:
        sub = await engine.subscribe(T, q("thing", c))
        assert [r.agg_id for r in sub.snapshot] == ["a"]
    with pytest.raises(InvalidQuery) as info:
        or_(c)
    assert info.value.field == "where"
    with pytest.raises(ValidationError, match=f"at most {MAX_DEPTH}"):
        LiveQuery(entity="thing", where=[nested(MAX_DEPTH + 1)], limit=1)
    for depth in (MAX_DEPTH + 1, 200, 5000):  # built without validation: refused, never a crash
        with pytest.raises(InvalidQuery) as info:
            compile_predicate([nested(depth)])
        assert info.value.field.startswith("where.0")


async def test_gateway_subscribe_refuses_bad_names_and_registers_nothing() -> None:
    c = Cluster()
    try:
        gw, _ = await c.gateway()
        for tenant, query, kw, field in [
            (None, q(), {}, "tenant"),
            (5, q(), {}, "tenant"),
            ("a:b", q(), {}, "tenant"),
            ("\ud800", q(), {}, "tenant"),
            (T, q("as:set"), {}, "entity"),
            (T, "not a query", {}, "query"),
            (T, q(), {"sub_id": 5}, "sub_id"),
        ]:
            with pytest.raises(InvalidQuery) as info:
                await gw.subscribe(tenant, query, **kw)  # type: ignore[arg-type]
            assert info.value.field == field
        assert await c.registry.by_gateway(gw.id) == []
    finally:
        await c.aclose()


@pytest.mark.parametrize(
    ("doc", "loc"),
    [
        ({"entity": "thing", "limit": "5"}, "limit"),
        ({"entity": "thing", "limit": 5.0}, "limit"),
        ({"entity": "thing", "limit": True}, "limit"),
        ({"entity": "thing", "limit": 5, "sort": [{"column": "x", "desc": 1}]}, "sort.0.desc"),
        ({"entity": "thing", "limit": 5, "sort": [{"column": "x", "desc": "yes"}]}, "sort.0.desc"),
        ({"entity": "thing", "limit": 5, "where": {"op": "is_null", "column": "x"}}, "where"),
    ],
)
def test_live_query_fields_take_their_own_type_only(doc: dict[str, Any], loc: str) -> None:
    with pytest.raises(ValidationError) as ei:
        LiveQuery.model_validate(doc)
    assert [".".join(map(str, e["loc"])) for e in ei.value.errors()] == [loc]


def test_a_lone_condition_is_a_where_of_one() -> None:
    one = LiveQuery(entity="thing", where=eq("x", 1), limit=5)  # type: ignore[arg-type]
    assert one == LiveQuery(entity="thing", where=[eq("x", 1)], limit=5)
    assert one.shape() == LiveQuery(entity="thing", where=[eq("x", 1)], limit=5).shape()
