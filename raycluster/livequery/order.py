"""Total order of rows: (sort keys…, id ASC), one order over values of every type.

Values of one column may have different types (an undeclared entity takes any
scalar), so the order covers every pair of values. Ascending:

    false < true < numbers < strings < null

Numbers are ints and floats compared by value (`1 == 1.0`; a bool is not a
number, so `true` is not `1`); strings compare by code point. Descending is
exactly the reverse (null first, then strings, numbers, booleans).

Each row gets a plain tuple key that Python compares in C, so a window's
bisect and a store's sort use the same order without a comparator. A key part
is `(rank, value)`, the rank naming the value's type in the order above, so
two values of different types are never compared with each other. A
descending string becomes the tuple of its negated code points closed by 1,
which reverses the order exactly (a longer string with the same prefix sorts
first, as it should descending); a descending number or boolean is negated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .models import Cursor, Scalar, SortKey, trusted

__all__ = (
    "KeyFn",
    "compare_cursors",
    "cursor_key",
    "cursor_of",
    "key_fn",
    "sort_key_of",
    "value_rank",
)

KeyFn = Callable[[dict[str, Any], str], tuple[Any, ...]]

# Ascending ranks: false/true, then numbers, then strings, then null.
_BOOL, _NUMBER, _STRING = 1, 2, 3
_NULL_LAST = (4,)
_NULL_FIRST = (0,)  # descending: null first, then ranks 4 - rank (strings 1, ...)
_RANKS: dict[type, int] = {bool: _BOOL, int: _NUMBER, float: _NUMBER, str: _STRING}


def value_rank(v: Any) -> int:
    """The type rank of a non-null value in the ascending order (bool 1, number 2, str 3).

    Raises `TypeError` for a value that is not a scalar (stores refuse those).
    """
    r = _RANKS.get(v.__class__)
    if r is not None:
        return r
    if isinstance(v, bool):
        return _BOOL
    if isinstance(v, int | float):
        return _NUMBER
    if isinstance(v, str):
        return _STRING
    raise TypeError(f"cannot order a value of type {type(v).__name__}")


def _desc_part(v: Any) -> tuple[Any, ...]:
    if v is None:
        return _NULL_FIRST
    r = _RANKS.get(v.__class__) or value_rank(v)
    if r == _STRING:
        return (1, (*(-ord(ch) for ch in v), 1))
    return (4 - r, -v)


def _asc_part(v: Any) -> tuple[Any, ...]:
    return _NULL_LAST if v is None else (_RANKS.get(v.__class__) or value_rank(v), v)


def _value_key(values: Sequence[Scalar], sort: Sequence[SortKey]) -> tuple[Any, ...]:
    return tuple(
        _desc_part(v) if k.desc else _asc_part(v) for k, v in zip(sort, values, strict=True)
    )


def key_fn(sort: Sequence[SortKey]) -> KeyFn:
    """A fast `key(row, agg_id)` for one sort spec (the hot-path form)."""
    cols = [(k.column, k.desc) for k in sort]
    if not cols:
        return lambda row, agg_id: (agg_id,)
    if len(cols) == 1:
        col, desc = cols[0]
        if desc:
            return lambda row, agg_id: (_desc_part(row.get(col)), agg_id)

        ranks = _RANKS

        def one_asc(row: dict[str, Any], agg_id: str) -> tuple[Any, ...]:
            v = row.get(col)
            if v is None:
                return (_NULL_LAST, agg_id)
            return ((ranks.get(v.__class__) or value_rank(v), v), agg_id)

        return one_asc

    def many(row: dict[str, Any], agg_id: str) -> tuple[Any, ...]:
        return (
            *(_desc_part(row.get(c)) if d else _asc_part(row.get(c)) for c, d in cols),
            agg_id,
        )

    return many


def sort_key_of(row: dict[str, Any], sort: Sequence[SortKey], agg_id: str) -> tuple[Any, ...]:
    """The comparable key of a row in the total order (sort keys…, id)."""
    return (*_value_key([row.get(k.column) for k in sort], sort), agg_id)


def cursor_key(cursor: Cursor, sort: Sequence[SortKey]) -> tuple[Any, ...]:
    """The key of a cursor position; rows after it have strictly greater keys."""
    *vals, agg_id = cursor.values
    return (*_value_key(vals, sort), agg_id)


def cursor_of(row: dict[str, Any], sort: Sequence[SortKey], agg_id: str) -> Cursor:
    """The cursor that names `row`'s position."""
    return trusted(Cursor, {"values": [*(row.get(k.column) for k in sort), agg_id]})


def compare_cursors(a: Cursor, b: Cursor, sort: Sequence[SortKey]) -> int:
    """-1, 0 or 1 as `a` sorts before, at or after `b`."""
    ka, kb = cursor_key(a, sort), cursor_key(b, sort)
    return (ka > kb) - (ka < kb)
