"""Total order of rows: (sort keys…, id ASC), nulls last ascending, first descending.

Each row gets a plain tuple key that Python compares in C, so a window's
bisect and a store's sort use the same order without a comparator. A
descending string becomes the tuple of its negated code points closed by 1,
which reverses the order exactly (a longer string with the same prefix sorts
first, as it should descending).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .models import Cursor, Scalar, SortKey, trusted

__all__ = ("KeyFn", "compare_cursors", "cursor_key", "cursor_of", "key_fn", "sort_key_of")

KeyFn = Callable[[dict[str, Any], str], tuple[Any, ...]]

_NULL_LAST = (1,)
_NULL_FIRST = (0,)


def _desc_part(v: Any) -> tuple[Any, ...]:
    if v is None:
        return _NULL_FIRST
    if isinstance(v, str):
        return (1, (*(-ord(ch) for ch in v), 1))
    return (1, -v)


def _asc_part(v: Any) -> tuple[Any, ...]:
    return _NULL_LAST if v is None else (0, v)


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

        def one_asc(row: dict[str, Any], agg_id: str) -> tuple[Any, ...]:
            v = row.get(col)
            return (_NULL_LAST if v is None else (0, v), agg_id)

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
