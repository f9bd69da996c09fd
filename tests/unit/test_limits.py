"""What one query may cost (`QueryLimits`, `check_cost`), and values that must read back."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cluster_harness import Cluster, wait_for
from pydantic import ValidationError

from raycluster.cluster.protocol import Registration
from raycluster.config import TierSettings
from raycluster.errors import InvalidQuery, InvalidRow
from raycluster.livequery import (
    Cond,
    Cursor,
    EntitySpec,
    LiveQuery,
    QueryLimits,
    SortKey,
    and_,
    check_cost,
    eq,
    ilike,
    in_,
    like,
    or_,
    query_cost,
)

LIMITS = QueryLimits()


def q(**kw: Any) -> LiveQuery:
    return LiveQuery.model_validate({"entity": "asset", "limit": 10, **kw})


def nested(depth: int) -> Cond:
    """`eq` inside `depth` nested groups: the outermost group is depth 1."""
    c = eq("a", 1)
    for i in range(depth):
        c = and_(c) if i % 2 else or_(c)
    return c


def at(doc: Any, path: str) -> Any:
    """The part of a JSON document a field path names (KeyError/IndexError if none)."""
    for part in path.split("."):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def refused(query: LiveQuery, limits: QueryLimits, field: str, limit: str) -> InvalidQuery:
    """Assert `check_cost` refuses `query` naming `field` (a real path) and `limit`."""
    with pytest.raises(InvalidQuery) as info:
        check_cost(query, limits)
    assert info.value.field == field
    assert limit in info.value.reason
    at(query.model_dump(mode="json"), field)  # the path exists in the query's JSON
    str(info.value)  # and the error prints
    return info.value


# -- each limit: at it passes, one over is refused naming the field and the limit ----


def test_limit() -> None:
    check_cost(q(limit=LIMITS.max_limit), LIMITS)
    refused(q(limit=LIMITS.max_limit + 1), LIMITS, "limit", f"at most {LIMITS.max_limit}")


def test_terms_count_every_condition_in_groups() -> None:
    most = LIMITS.max_terms
    flat = [eq(f"c{i}", i) for i in range(most)]
    check_cost(q(where=flat), LIMITS)
    refused(q(where=[*flat, eq("x", 1)]), LIMITS, "where", f"at most {most} terms")
    # One group holding most - 1 conditions is `most` terms.
    check_cost(q(where=[or_(*flat[:-1])]), LIMITS)
    refused(q(where=[or_(*flat)]), LIMITS, "where", f"at most {most} terms")


def test_in_values() -> None:
    most = LIMITS.max_in_values
    check_cost(q(where=[in_("a", list(range(most)))]), LIMITS)
    over = q(where=[eq("b", 1), or_(eq("c", 2), in_("a", list(range(most + 1))))])
    refused(over, LIMITS, "where.1.args.1.values", f"at most {most} values")


def test_nesting_depth() -> None:
    most = LIMITS.max_depth
    check_cost(q(where=[nested(most)]), LIMITS)
    err = refused(q(where=[nested(most + 1)]), LIMITS, "where.0" + ".args.0" * most, "deep")
    assert str(most) in err.reason


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda s: q(where=[eq("a", s)]), "where.0.value"),
        (lambda s: q(where=[in_("a", ["x", s])]), "where.0.values.1"),
        (lambda s: q(where=[or_(eq("b", 1), eq("a", s))]), "where.0.args.1.value"),
        (lambda s: q(where=[eq(s, 1)]), "where.0.column"),
        (lambda s: q(sort=[SortKey(column=s)]), "sort.0.column"),
        (
            lambda s: q(sort=[SortKey(column="a")], cursor=Cursor(values=[s, "id"])),
            "cursor.values.0",
        ),
        (lambda s: q(sort=[SortKey(column="a")], cursor=Cursor(values=[1, s])), "cursor.values.1"),
        (lambda s: LiveQuery(entity=s, limit=1), "entity"),
    ],
)
def test_string_length(make: Any, field: str) -> None:
    most = LIMITS.max_string_length
    check_cost(make("x" * most), LIMITS)
    refused(make("x" * (most + 1)), LIMITS, field, f"at most {most} characters")


@pytest.mark.parametrize("op", [like, ilike])
def test_pattern_length(op: Any) -> None:
    most = LIMITS.max_pattern_length
    assert most < LIMITS.max_string_length
    check_cost(q(where=[op("a", "%" * most)]), LIMITS)
    refused(q(where=[op("a", "%" * (most + 1))]), LIMITS, "where.0.value", f"at most {most}")
    check_cost(q(where=[eq("a", "%" * (most + 1))]), LIMITS)  # only patterns have this cap


def test_cost_counts_conditions_groups_and_pattern_lengths() -> None:
    limits = QueryLimits(max_cost=100)
    where = [like("a", "x" * 40), or_(ilike("b", "y" * 40), eq("c", 1)), eq("d", 2)]
    assert query_cost(q(where=where)) == 5 + 80
    check_cost(q(where=where), limits)
    over = [*where, like("e", "z" * 15)]  # 6 conditions + 95 pattern characters
    refused(q(where=over), limits, "where", "a cost of at most 100")
    # Conditions alone are capped by the cost too, whatever `max_terms` allows.
    many = [eq("a", i) for i in range(101)]
    refused(q(where=many), QueryLimits(max_cost=100, max_terms=500), "where", "at most 100")


def test_sort_keys() -> None:
    most = LIMITS.max_sort_keys
    keys = [SortKey(column=f"c{i}") for i in range(most)]
    check_cost(q(sort=keys), LIMITS)
    refused(q(sort=[*keys, SortKey(column="x")]), LIMITS, "sort", f"at most {most}")


def test_limits_are_settings() -> None:
    s = TierSettings(limits={"max_terms": 3})  # type: ignore[arg-type]
    assert s.limits.max_terms == 3 and s.limits.max_limit == LIMITS.max_limit
    assert TierSettings().limits == QueryLimits()
    for name, f in QueryLimits.model_fields.items():
        assert f.description, name
    with pytest.raises(ValidationError):
        QueryLimits(max_depth=65)  # deeper would not survive the registry's JSON


# -- deep input: a clean refusal, never a RecursionError ------------------------------


def deep_json(depth: int) -> str:
    inner = '{"op":"eq","column":"a","value":1}'
    return (
        '{"entity":"asset","limit":5,"where":['
        + '{"op":"and","args":[' * depth
        + inner
        + "]}" * depth
        + "]}"
    )


def deep_dict(depth: int) -> dict[str, Any]:
    c: dict[str, Any] = {"op": "eq", "column": "a", "value": 1}
    for _ in range(depth):
        c = {"op": "and", "args": [c]}
    return {"entity": "asset", "limit": 5, "where": [c]}


def test_20000_deep_json_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        LiveQuery.model_validate_json(deep_json(20_000))
    with pytest.raises(ValidationError):
        LiveQuery.model_validate(deep_dict(20_000))


def test_20000_deep_query_built_without_validation_is_refused_by_check_cost() -> None:
    c = Cond.model_construct(op="eq", column="a", value=1)
    for _ in range(20_000):
        c = Cond.model_construct(op="and", args=[c])
    query = LiveQuery.model_construct(entity="asset", where=[c], sort=[], limit=5, cursor=None)
    with pytest.raises(InvalidQuery) as info:
        check_cost(query, LIMITS)
    assert info.value.field == "where.0" + ".args.0" * LIMITS.max_depth


# -- accepted queries survive the registry's JSON round trip ---------------------------


def roundtrip(query: LiveQuery) -> None:
    reg = Registration(sub_id="s1", tenant="acme", query=query, gateway_id="gw")
    assert Registration.model_validate_json(reg.model_dump_json()) == reg


@pytest.mark.parametrize("limits", [LIMITS, QueryLimits(max_depth=64)])
def test_deepest_accepted_query_roundtrips(limits: QueryLimits) -> None:
    query = q(where=[nested(limits.max_depth)])
    check_cost(query, limits)
    roundtrip(query)


def test_largest_accepted_query_roundtrips() -> None:
    s = "é" * LIMITS.max_string_length
    leaves = [in_(f"c{i}", [s, *range(LIMITS.max_in_values - 1)]) for i in range(8)]
    leaves += [eq(f"d{i}", s) for i in range(LIMITS.max_terms - 9)]
    query = q(
        where=[or_(*leaves[:8]), *leaves[8:]],
        sort=[SortKey(column=f"s{i}") for i in range(LIMITS.max_sort_keys)],
        cursor=Cursor(values=[s] * (LIMITS.max_sort_keys + 1)),
        limit=LIMITS.max_limit,
    )
    check_cost(query, LIMITS)
    roundtrip(query)


# -- values that could not be stored and read back -------------------------------------

BAD_VALUES = ["\ud800", "ok\udfffok", math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=repr)
@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        (lambda v: {"where": [{"op": "eq", "column": "a", "value": v}]}, ("where", 0, "value")),
        (
            lambda v: {"where": [{"op": "in", "column": "a", "values": [1, v]}]},
            ("where", 0, "values", 1),
        ),
        (
            lambda v: {"where": [{"op": "or", "args": [{"op": "lt", "column": "a", "value": v}]}]},
            ("where", 0, "args", 0, "value"),
        ),
        (
            lambda v: {"sort": [{"column": "a"}], "cursor": {"values": [v, "id"]}},
            ("cursor", "values", 0),
        ),
    ],
)
def test_unstorable_values_are_refused_naming_the_field(bad: Any, raw: Any, loc: tuple) -> None:
    with pytest.raises(ValidationError) as info:
        q(**raw(bad))
    errors = info.value.errors(include_url=False)
    assert [e["loc"] for e in errors] == [loc]
    assert "Unicode" in errors[0]["msg"] or "finite" in errors[0]["msg"]


@pytest.mark.parametrize(
    "raw",
    [
        {"entity": "\ud800", "limit": 1},
        {"entity": "a", "limit": 1, "where": [{"op": "is_null", "column": "\udc00"}]},
        {"entity": "a", "limit": 1, "sort": [{"column": "\ud800"}]},
    ],
)
def test_unstorable_names_are_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        LiveQuery.model_validate(raw)


@pytest.mark.parametrize("bad", BAD_VALUES, ids=repr)
def test_constructors_refuse_unstorable_values(bad: Any) -> None:
    with pytest.raises(InvalidQuery) as info:
        eq("a", bad)
    assert info.value.field == "where.value"
    with pytest.raises(InvalidQuery) as info:
        in_("a", [1, bad])
    assert info.value.field == "where.values.1"


def test_non_finite_json_literals_are_refused() -> None:
    for lit in ("NaN", "Infinity", "-Infinity"):
        text = '{"entity":"a","limit":1,"where":[{"op":"gt","column":"t","value":' + lit + "}]}"
        with pytest.raises(ValidationError):
            LiveQuery.model_validate_json(text)


SPEC = EntitySpec(name="asset", columns={"name": "str", "temp": "float"})


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"name": "\ud800"}, "row.name"),
        ({"temp": math.nan}, "row.temp"),
        ({"temp": -math.inf}, "row.temp"),
        ({"\ud800": 1}, "row.\\ud800"),
    ],
)
def test_check_row_refuses_unstorable_values(row: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRow) as info:
        SPEC.check_row(row)
    assert info.value.field == field
    str(info.value).encode()  # the error itself can be printed and sent


def test_errors_quote_deep_or_huge_values_briefly() -> None:
    deep: list[Any] = []
    for _ in range(20_000):
        deep = [deep]
    assert len(str(InvalidRow("row.a", deep, "must be a scalar"))) < 200
    assert len(str(InvalidQuery("where.0.values", list(range(50_000)), "too many"))) < 300


# -- the gateway: where the tier accepts a query ---------------------------------------


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster(ttl_s=5.0)
    yield c
    await c.aclose()


SMALL = QueryLimits(max_terms=3, max_limit=20)


async def test_gateway_refuses_a_query_over_its_limits_and_registers_nothing(
    cluster: Cluster,
) -> None:
    cluster.start_shard("shard-a")
    await cluster.settled()
    gw, _ = await cluster.gateway(limits=SMALL)
    over = q(where=[eq("a", 1), or_(eq("b", 2), eq("c", 3))])
    with pytest.raises(InvalidQuery) as info:
        await gw.subscribe("acme", over)
    assert info.value.field == "where"
    assert await cluster.registry.by_gateway(gw.id) == []
    assert gw.subscriptions() == [] and cluster.control.sent == []


async def test_gateway_refuses_a_reanchor_over_its_limits_and_keeps_its_state(
    cluster: Cluster,
) -> None:
    cluster.start_shard("shard-a")
    await cluster.settled()
    gw, _ = await cluster.gateway(limits=SMALL)
    for i in range(3):
        cluster.store.upsert("acme", "asset", f"a{i}", {"name": f"n{i}"})
    query = q(sort=[SortKey(column="name")], limit=5)
    sub = await gw.subscribe("acme", query)
    await wait_for(lambda: len(sub.rows) == 3, 5, what="first window")
    reg0 = await cluster.registry.get(sub.id)
    sent0 = len(cluster.control.sent)
    with pytest.raises(InvalidQuery) as info:
        await sub.reanchor(None, SMALL.max_limit + 1)
    assert info.value.field == "limit"
    long_cursor = Cursor(values=["x" * (SMALL.max_string_length + 1), "a1"])
    with pytest.raises(InvalidQuery) as info:
        await sub.reanchor(long_cursor, 5)
    assert info.value.field == "cursor.values.0"
    # A cursor built without validation is validated on the way in.
    lone = Cursor.model_construct(values=["\ud800", "a1"])
    with pytest.raises(InvalidQuery) as info:
        await sub.reanchor(lone, 5)
    assert info.value.field == "cursor.values.0"
    assert await cluster.registry.get(sub.id) == reg0
    assert sub.query == query and len(cluster.control.sent) == sent0
    await sub.reanchor(Cursor(values=["n0", "a0"]), SMALL.max_limit)  # within: accepted
    assert sub.rows.ids == ["a1", "a2"]


def test_field_errors_cross_processes_intact() -> None:
    """Ray pickles an actor's exception to its caller: the type and fields survive."""
    import pickle

    from raycluster.errors import ConflictError, RegistrationConflict

    errors = [
        InvalidQuery("where.0.value", "x" * 5000, "a pattern of at most 256 characters"),
        InvalidRow("rows.a.name", "\ud800", "not valid Unicode"),
        ConflictError("a1", 3, 4),
        RegistrationConflict("s1", "registered by another tenant"),
    ]
    for e in errors:
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e) and vars(back) == vars(e)
