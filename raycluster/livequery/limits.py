"""What one live query may cost: `QueryLimits` (settings) and `check_cost`.

A query is evaluated against every change of its (tenant, entity) for as long
as it lives, on a shard that serves every tenant of its partitions, so its
size is capped before anything is registered. The defaults leave room for
any hand-written or UI-built filter; deeper JSON than `max_depth` allows
would not survive the registry's round trip anyway (see `QueryLimits`).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from raycluster._section import Section
from raycluster.errors import InvalidQuery

from .models import MAX_DEPTH, Cond, LiveQuery

__all__ = ("QueryLimits", "check_cost", "query_cost")


class QueryLimits(Section):
    """Caps on one query; a query over any of them is refused with `InvalidQuery`."""

    max_terms: int = Field(
        256,
        gt=0,
        description="Conditions in `where`, counting every member of every `or`/`and` group "
        "and the groups themselves.",
    )
    max_in_values: int = Field(1000, gt=0, description="Values of one `in` / `not_in` condition.")
    max_depth: int = Field(
        16,
        gt=0,
        le=MAX_DEPTH,
        description="How deep `or`/`and` groups may nest (a group in `where` is depth 1). "
        f"At most {MAX_DEPTH}, what any query may nest (`MAX_DEPTH`): a registration is "
        "stored as JSON, and the JSON parser that reads it back refuses nesting much deeper.",
    )
    max_string_length: int = Field(
        1024,
        gt=0,
        description="Characters of one string in the query: a value, an `in` value, a "
        "cursor value, a column or entity name.",
    )
    max_pattern_length: int = Field(
        256,
        gt=0,
        description="Characters of a `like` / `ilike` pattern (matching costs at most "
        "pattern length x value length per row).",
    )
    max_cost: int = Field(
        1024,
        gt=0,
        description="Evaluation cost of one query (`query_cost`): one unit per condition or "
        "group, plus the length of each `like` / `ilike` pattern. It bounds what one change "
        "costs the shard per subscribed query; the edge also caps a tenant's total "
        "(`edge.max_cost_per_tenant`).",
    )
    max_sort_keys: int = Field(8, gt=0, description="Keys in `sort`.")
    max_limit: int = Field(
        1000,
        gt=0,
        description="Largest `limit` (window size); an entity's `max_window` may be lower.",
    )


def check_cost(query: LiveQuery, limits: QueryLimits) -> None:
    """Raise `InvalidQuery` naming the first field of `query` over one of `limits`.

    Field paths are those of the query's JSON (`where.3.args.0.values`). The
    walk is iterative and stops at the first refusal, so a query nested
    arbitrarily deep (built without validation) is refused, never a
    `RecursionError`; its cost is linear in the size of the query.
    """
    if query.limit > limits.max_limit:
        raise InvalidQuery("limit", query.limit, f"at most {limits.max_limit}")
    _check_str("entity", query.entity, limits.max_string_length)
    if len(query.sort) > limits.max_sort_keys:
        raise InvalidQuery("sort", len(query.sort), f"at most {limits.max_sort_keys} sort keys")
    for i, k in enumerate(query.sort):
        _check_str(f"sort.{i}.column", k.column, limits.max_string_length)
    if query.cursor is not None:
        for i, v in enumerate(query.cursor.values):
            _check_str(f"cursor.values.{i}", v, limits.max_string_length)
    terms = cost = 0
    stack: list[tuple[Cond, str, int]] = [
        (c, f"where.{i}", 1) for i, c in reversed(list(enumerate(query.where)))
    ]
    while stack:
        c, at, depth = stack.pop()
        terms += 1
        if terms > limits.max_terms:
            most = limits.max_terms
            raise InvalidQuery("where", f"more than {most}", f"at most {most} terms (groups count)")
        if c.args is not None:
            if depth > limits.max_depth:
                raise InvalidQuery(at, depth, f"groups nest at most {limits.max_depth} deep")
            stack += [
                (a, f"{at}.args.{i}", depth + 1) for i, a in reversed(list(enumerate(c.args)))
            ]
            continue
        _check_str(f"{at}.column", c.column, limits.max_string_length)
        if c.op in ("like", "ilike"):
            _check_str(f"{at}.value", c.value, limits.max_pattern_length, "pattern")
            cost += _pattern_cost(c)
            if terms + cost > limits.max_cost:
                _too_costly(limits)
        else:
            _check_str(f"{at}.value", c.value, limits.max_string_length)
        if c.values is not None:
            if len(c.values) > limits.max_in_values:
                raise InvalidQuery(
                    f"{at}.values", len(c.values), f"at most {limits.max_in_values} values"
                )
            for i, v in enumerate(c.values):
                _check_str(f"{at}.values.{i}", v, limits.max_string_length)
    if terms + cost > limits.max_cost:
        _too_costly(limits)


def _too_costly(limits: QueryLimits) -> None:
    most = limits.max_cost
    raise InvalidQuery(
        "where",
        f"more than {most}",
        f"a cost of at most {most} (one per condition or group, plus each like/ilike "
        "pattern's length)",
    )


def _check_str(at: str, v: Any, most: int, what: str = "string") -> None:
    if isinstance(v, str) and len(v) > most:
        raise InvalidQuery(at, len(v), f"a {what} of at most {most} characters")


def query_cost(query: LiveQuery) -> int:
    """What evaluating `query` against one change costs, in units of `QueryLimits.max_cost`.

    One unit per condition or group, plus the length of each like/ilike
    pattern (a pattern is matched in time proportional to its length times
    the value's). Iterative: any depth.
    """
    cost = 0
    stack = list(query.where)
    while stack:
        c = stack.pop()
        cost += 1
        if c.args is not None:
            stack += c.args
        else:
            cost += _pattern_cost(c)
    return cost


def _pattern_cost(c: Cond) -> int:
    """What a condition adds to its unit: its like/ilike pattern's length."""
    return len(str(c.value)) if c.op in ("like", "ilike") else 0
