"""A brute-force oracle for the live-query core, written from docs/architecture.md
(what a client gets) and docs/semantics.md (the order across value types,
comparisons across types).

Nothing here uses the engine's own filter or order code: the point is to
catch bugs in it. Also the reference clients that apply frames to a list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from raycluster.livequery import Cond, DeltaOp, LiveDelta, LiveQuery, SortKey

__all__ = (
    "ClientError",
    "Rev",
    "apply_maintained",
    "apply_streamed",
    "o_class",
    "o_compile",
    "o_key",
    "o_like",
    "o_match",
    "o_matching",
    "o_row_key",
    "o_top",
)

RowMap = Mapping[str, tuple[int, dict[str, Any]]]  # id → (version, row), as store.rows()

# -- filters -------------------------------------------------------------------


def _tokens(pattern: str) -> list[tuple[str, str]]:
    """A LIKE pattern as ('lit', ch) / ('one', '') / ('any', '') tokens."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(("lit", pattern[i + 1]))
            i += 2
            continue
        if ch == "%":
            out.append(("any", ""))
        elif ch == "_":
            out.append(("one", ""))
        else:
            out.append(("lit", ch))  # a trailing lone backslash is itself
        i += 1
    return out


def _same_char(a: str, b: str, ignore_case: bool) -> bool:
    if a == b:
        return True
    # Simple (one character to one character) case mapping only.
    return ignore_case and (a.lower() == b.lower() or a.upper() == b.upper())


def o_like(s: str, pattern: str, *, ignore_case: bool) -> bool:
    """SQL LIKE by dynamic programming: `%` any run, `_` one char, `\\` escapes, anchored."""
    toks = _tokens(pattern)
    # reach[j]: the first i characters of s can match the first j tokens.
    reach = [False] * (len(toks) + 1)
    reach[0] = True
    for j, (kind, _) in enumerate(toks):
        if kind == "any":
            reach[j + 1] = reach[j]
        else:
            break
    for ch in s:
        nxt = [False] * (len(toks) + 1)
        for j, (kind, lit) in enumerate(toks):
            if kind == "any":
                nxt[j + 1] = nxt[j] or reach[j + 1] or reach[j]
            elif kind == "one":
                nxt[j + 1] = reach[j]
            else:
                nxt[j + 1] = reach[j] and _same_char(ch, lit, ignore_case)
        reach = nxt
    return reach[-1]


def o_class(v: Any) -> int:
    """A non-null value's type class, in the documented order: booleans 0, numbers 1,
    strings 2 (a bool is not a number; ints and floats are both numbers)."""
    if isinstance(v, bool):
        return 0
    if isinstance(v, int | float):
        return 1
    if isinstance(v, str):
        return 2
    raise AssertionError(f"not a scalar: {v!r}")


def _same(a: Any, b: Any) -> bool:
    return o_class(a) == o_class(b)


def o_compile(c: Cond) -> Callable[[Mapping[str, Any]], bool]:
    """One condition as a closure, for speed in the oracle.

    SQL null semantics; a comparison between values of two type classes
    cannot be made: false for `eq`, `in`, `<`…, `like`, true for `ne`, `not_in`.
    """
    op = c.op
    if op in ("and", "or"):
        subs = [o_compile(a) for a in c.args or ()]
        if op == "and":
            return lambda r: all(f(r) for f in subs)
        return lambda r: any(f(r) for f in subs)
    col = c.column or ""
    if op == "is_null":
        return lambda r: r.get(col) is None
    if op == "is_not_null":
        return lambda r: r.get(col) is not None
    value = c.value
    values = list(c.values or ())
    test: Callable[[Any], bool]
    if op == "eq":
        test = lambda v: _same(v, value) and v == value  # noqa: E731
    elif op == "ne":
        test = lambda v: not (_same(v, value) and v == value)  # noqa: E731
    elif op == "gt":
        test = lambda v: _same(v, value) and v > value  # noqa: E731
    elif op == "gte":
        test = lambda v: _same(v, value) and v >= value  # noqa: E731
    elif op == "lt":
        test = lambda v: _same(v, value) and v < value  # noqa: E731
    elif op == "lte":
        test = lambda v: _same(v, value) and v <= value  # noqa: E731
    elif op == "in":
        test = lambda v: any(_same(v, x) and v == x for x in values)  # noqa: E731
    elif op == "not_in":
        test = lambda v: not any(_same(v, x) and v == x for x in values)  # noqa: E731
    elif op in ("like", "ilike"):
        pat, ic = str(value), op == "ilike"
        test = lambda v: isinstance(v, str) and o_like(v, pat, ignore_case=ic)  # noqa: E731
    else:
        raise AssertionError(f"oracle does not know {op!r}")

    def atom(r: Mapping[str, Any]) -> bool:
        v = r.get(col)
        return v is not None and test(v)

    return atom


def o_match(where: Sequence[Cond], row: Mapping[str, Any]) -> bool:
    """Whether `row` satisfies the AND of `where`."""
    return all(o_compile(c)(row) for c in where)


# -- order ---------------------------------------------------------------------


class Rev:
    """A value that sorts in the reverse order of the one it wraps."""

    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rev) and self.v == other.v

    def __lt__(self, other: Rev) -> bool:
        return bool(other.v < self.v)

    def __hash__(self) -> int:
        return hash(self.v)

    def __repr__(self) -> str:
        return f"Rev({self.v!r})"


def o_key(values: Sequence[Any], sort: Sequence[SortKey], agg_id: str) -> tuple[Any, ...]:
    """Total-order key: per key (null last asc, first desc; false < true < numbers <
    strings ascending), then id ascending."""
    parts: list[Any] = []
    for k, v in zip(sort, values, strict=True):
        typed = None if v is None else (o_class(v), v)
        if k.desc:
            parts.append((1, Rev(typed)) if v is not None else (0, 0))
        else:
            parts.append((0, typed) if v is not None else (1, 0))
    parts.append(agg_id)
    return tuple(parts)


def o_row_key(row: Mapping[str, Any], sort: Sequence[SortKey], agg_id: str) -> tuple[Any, ...]:
    return o_key([row.get(k.column) for k in sort], sort, agg_id)


def o_matching(rows: RowMap, q: LiveQuery) -> list[tuple[str, dict[str, Any]]]:
    """Every row matching `q` strictly after its cursor, in total order."""
    preds = [o_compile(c) for c in q.where]
    sort = q.sort
    floor = None
    if q.cursor is not None:
        *vals, cid = q.cursor.values
        floor = o_key(vals, sort, str(cid))
    keyed = []
    for agg_id, (_, row) in rows.items():
        if all(p(row) for p in preds):
            k = o_row_key(row, sort, agg_id)
            if floor is None or k > floor:
                keyed.append((k, agg_id, row))
    keyed.sort(key=lambda t: t[0])
    return [(agg_id, row) for _, agg_id, row in keyed]


def o_top(rows: RowMap, q: LiveQuery) -> list[tuple[str, dict[str, Any]]]:
    """The truth a maintained subscriber must hold: the first `limit` matches."""
    return o_matching(rows, q)[: q.limit]


# -- clients -------------------------------------------------------------------


class ClientError(AssertionError):
    """A frame that a client cannot apply (bad index, unknown op, bad reset)."""


def apply_maintained(client: list[tuple[str, dict[str, Any]]], frames: Iterable[LiveDelta]) -> None:
    """Apply maintained-mode frames to `client` in place, checking each one."""
    expect_enters = 0
    for f in frames:
        if expect_enters:
            if f.op is not DeltaOp.ENTER or f.new_index != len(client):
                raise ClientError(f"reset promised more enters in order, got {f!r}")
            expect_enters -= 1
        op = f.op
        if op is DeltaOp.RESET:
            client.clear()
            expect_enters = f.count or 0
        elif op is DeltaOp.ENTER:
            _check(f.new_index is not None and 0 <= f.new_index <= len(client), f, client)
            assert f.agg_id is not None and f.row is not None and f.new_index is not None
            client.insert(f.new_index, (f.agg_id, f.row))
        elif op is DeltaOp.LEAVE:
            i = f.old_index
            _check(i is not None and 0 <= i < len(client) and client[i][0] == f.agg_id, f, client)
            assert i is not None
            del client[i]
        elif op is DeltaOp.MOVE:
            i, j = f.old_index, f.new_index
            _check(i is not None and 0 <= i < len(client) and client[i][0] == f.agg_id, f, client)
            assert i is not None and j is not None and f.agg_id is not None and f.row is not None
            del client[i]
            _check(0 <= j <= len(client), f, client)
            client.insert(j, (f.agg_id, f.row))
        elif op is DeltaOp.UPDATE:
            j = f.new_index
            _check(j is not None and 0 <= j < len(client) and client[j][0] == f.agg_id, f, client)
            assert j is not None and f.agg_id is not None and f.row is not None
            client[j] = (f.agg_id, f.row)
        else:
            raise ClientError(f"maintained subscription got {f!r}")
    if expect_enters:
        raise ClientError(f"reset promised {expect_enters} more enter frames")


def apply_streamed(client: dict[str, dict[str, Any]], frames: Iterable[LiveDelta]) -> None:
    """Apply streamed-mode frames to the id → row set `client`, checking each one."""
    for f in frames:
        op, agg_id = f.op, f.agg_id
        if op is DeltaOp.RESET:
            client.clear()
            continue
        if agg_id is None:
            raise ClientError(f"frame without an id: {f!r}")
        if op in (DeltaOp.MATCH, DeltaOp.ENTER):
            _check(agg_id not in client and f.row is not None, f, client)
            assert f.row is not None
            client[agg_id] = f.row
        elif op is DeltaOp.UPDATE:
            _check(agg_id in client and f.row is not None, f, client)
            assert f.row is not None
            client[agg_id] = f.row
        elif op is DeltaOp.UNMATCH:
            _check(agg_id in client, f, client)
            del client[agg_id]
        else:
            raise ClientError(f"streamed subscription got {f!r}")


def _check(ok: bool, f: LiveDelta, client: object) -> None:
    if not ok:
        raise ClientError(f"cannot apply {f!r} to {client!r}")
