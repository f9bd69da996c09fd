"""The index layout of an entity's rows in Redis (shared by the writer and the store).

Per (tenant, entity), beside the live-id sorted set, **one sorted set per
indexed column**, holding every live row (null included), so its ZCARD equal
to the number of live rows proves it covers them:

* a sortable column's **sort index**, in the column's order — numeric columns
  by score (null = +inf: last ascending, first descending), string columns by
  member `enc(value) + id` (null = `\\xff` + id, after every UTF-8 string);
* a filterable column that is not sortable: a **filter index**, members
  `enc(canon(value)) + id` (scores 0).

Both answer `eq`/`in` by range (one ZRANGEBYSCORE per numeric value, one
ZRANGEBYLEX over the members starting `enc(…)` per string or canonical value),
and a batch of rows costs one ZADD per column. Rows written by earlier
versions may instead sit in **value sets** (one set of ids per (column,
`canon(value)`), counted per column in the index-count hash); the writer
still removes them (it removes what a row's stored entries name), and a read
uses them only when they cover every live row.

Another writer reproduces `canon` and `enc` exactly: canonical text is JSON
for strings (ASCII-escaped), the decimal integer for booleans (1/0), ints and
integral floats, the shortest round-trip repr for other floats, `null` for
null. `enc` is the UTF-8 bytes with each NUL written `\\x00\\xff`, closed by
`\\x00\\x00` (order-preserving, and the id starts after the first `\\x00\\x00`).
"""

from __future__ import annotations

from collections.abc import Iterable
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple

from raycluster.cluster.keys import Keys
from raycluster.livequery.models import EntitySpec, Scalar

__all__ = (
    "FILTER",
    "IDS",
    "LEXICAL",
    "LEX_NULL",
    "NUMERIC",
    "Layout",
    "canon",
    "count_field",
    "eq_ranges",
    "lex_encode",
    "lex_member",
    "prefix_range",
    "score_text",
)

LEX_NULL = b"\xff"  # no UTF-8 string starts with 0xff, so nulls sort after every value


def canon(v: Scalar) -> str:
    """The canonical text of a value in a value-index key.

    Values Python considers equal (True, 1, 1.0) share one text, so an index
    lookup finds every row the compiled predicate accepts (and, for a `true`
    among numbers, a few it refuses: a bool is not a number).
    """
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    return encode_basestring_ascii(v)  # what json.dumps(v) returns, without its overhead


def lex_encode(s: str) -> bytes:
    """Order-preserving bytes of a string, closed by `\\x00\\x00`."""
    return s.encode().replace(b"\x00", b"\x00\xff") + b"\x00\x00"


def lex_member(v: str | None, agg_id: str) -> bytes:
    """A row's member in a lexical sort index."""
    return (LEX_NULL if v is None else lex_encode(v)) + agg_id.encode()


def score_text(v: Any) -> str:
    """A value's score in a numeric sort index (null: `inf`)."""
    return "inf" if v is None else repr(float(v))


def count_field(column: str) -> str:
    """The index-count hash field of a column's (earlier) value sets."""
    return f"v:{column}"


def prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds of the members starting with `prefix` (an `enc(…)`, so
    no other value's members start so; ids are UTF-8, never a 0xff byte)."""
    return b"[" + prefix, b"(" + prefix + b"\xff"


# The column indexes a read can use; the letters are the READ script's arguments.
NUMERIC = "n"  # a sortable number or boolean column: ZRANGEBYSCORE
LEXICAL = "l"  # a sortable string column: ZRANGEBYLEX
FILTER = "f"  # a filterable column that is not sortable: ZRANGEBYLEX over canonical text
IDS = "i"  # the live-id set of a (tenant, entity): walked in id order


def eq_ranges(how: str, values: Iterable[Any]) -> list[tuple[bytes, bytes]]:
    """Range bounds, in a column index of kind `how`, holding every row whose value
    equals one of `values`, and few others (the predicate refuses those): ints
    equal as doubles (beyond 2**53), `true` beside `1` in a filter index.

    `how`: `NUMERIC` sort index (ZRANGEBYSCORE), `LEXICAL` sort index or
    `FILTER` index (both ZRANGEBYLEX). A value that no row of that index
    can equal (a string in a numeric index, a number in a lexical one) has
    no range.
    """
    out = []
    for v in values:
        if how == FILTER:
            out.append(prefix_range(lex_encode(canon(v))))
        elif how == LEXICAL:
            if v is None:
                out.append(prefix_range(LEX_NULL))
            elif isinstance(v, str):
                out.append(prefix_range(lex_encode(v)))
        elif v is None or (isinstance(v, int | float) and not isinstance(v, str)):
            s = score_text(v).encode()
            out.append((s, s))
    return out


# Entry kinds of the WRITE script (see its docstring); `v` (value sets) is only
# ever removed now, never written.
_NUM, _LEX = b"n", b"l"
_BY_SCORE, _BY_LEX, _BY_CANON = 0, 1, 2  # how a column's entry is made
_MAX_PLANS = 4096  # tenants whose entry plan a Layout keeps (then it starts afresh)
_MAX_MEMO = 4096  # filter-index values one plan column keeps (then it starts afresh)
_ZERO = b"0"
# The exact types (subclasses take the slow checks) each column type accepts.
_FAST_TYPES: dict[str, frozenset[type]] = {
    "str": frozenset((str, type(None))),
    "int": frozenset((int, type(None))),
    "float": frozenset((int, float, type(None))),
    "bool": frozenset((bool, type(None))),
}
_INT_MIN, _INT_MAX = -(2**63), 2**63


class _Column(NamedTuple):
    """One index column's entry for one tenant: its constant parts, encoded."""

    how: int  # _BY_SCORE | _BY_LEX | _BY_CANON
    column: str
    key: bytes  # the column's sorted set
    head: bytes  # kind and key, MessagePack-encoded: every entry of the column starts so
    memo: dict[Any, bytes]  # filter index: value -> enc(canon(value))


class Layout:
    """Which index each column of an entity's rows has, and the entries of rows."""

    __slots__ = ("_fast", "_plans", "filter_only", "header", "keys", "sortable", "spec")

    def __init__(self, spec: EntitySpec, keys: Keys) -> None:
        self.spec = spec
        self.keys = keys
        cols = list(spec.columns)
        sortable = spec.sortable if spec.sortable is not None else cols
        self.sortable = [(c, spec.columns[c] == "str") for c in sortable]
        # Filterable columns without a sort index (theirs answers `eq`): a filter index each.
        filterable = spec.filterable if spec.filterable is not None else cols
        sorted_cols = set(sortable)
        self.filter_only = [c for c in filterable if c not in sorted_cols]
        self.header = _mp_array(3 * (len(self.sortable) + len(self.filter_only)))
        self._plans: dict[str, list[_Column]] = {}
        self._fast = {c: _FAST_TYPES[t] for c, t in spec.columns.items()}

    def valid(self, row: dict[str, Any]) -> bool:
        """True when `row` surely passes `EntitySpec.check_row` (plain types, ASCII
        strings, finite floats, 64-bit ints); False: check slowly."""
        fast = self._fast
        for col, v in row.items():
            t = type(v)
            ok = fast.get(col)
            if ok is None or t not in ok:
                return False
            if t is str:
                if not v.isascii():
                    return False
            elif t is float:
                if v - v != 0.0:  # inf or nan
                    return False
            elif t is int and not _INT_MIN <= v < _INT_MAX:
                return False
        return True

    def entries(self, tenant: str, agg_id: str, row: dict[str, Any]) -> bytes:
        """The WRITE script's index entries for `row`: a MessagePack array of
        strings, (kind, key, x) per index column (`b""` when it has none)."""
        return self.entries_many(tenant, [agg_id], [row])[0][0]

    def entries_many(
        self, tenant: str, ids: list[str], rows: list[dict[str, Any]]
    ) -> tuple[list[bytes], list[bytes | int]]:
        """Each row's entries (as `entries`), and all of them grouped for ZADD:
        per index column its key, the row count, then (score, member) per row."""
        plan = self._plans.get(tenant)
        if plan is None:
            plan = self._plan(tenant)
        if not plan or not ids:  # (a call of deletes only has no rows)
            return [b""] * len(ids), []
        idbs = [i.encode() for i in ids]
        n = len(idbs)
        per_col: list[list[bytes]] = []
        groups: list[bytes | int] = []
        for how, col, key, head, memo in plan:
            vals = [r.get(col) for r in rows]
            pairs: list[bytes] = [_ZERO] * (2 * n)
            if how == _BY_SCORE:
                xs = [b"inf" if v is None else repr(float(v)).encode() for v in vals]
                pairs[0::2] = xs
                pairs[1::2] = idbs
            else:
                if how == _BY_LEX:
                    # lex_member, inlined (this loop runs for every row written).
                    xs = [
                        LEX_NULL + i
                        if v is None
                        else v.encode().replace(b"\0", b"\0\xff") + b"\0\0" + i
                        for v, i in zip(vals, idbs, strict=True)
                    ]
                else:
                    if len(memo) >= _MAX_MEMO:
                        memo.clear()
                    # Values that compare equal (1, 1.0, True) have one canonical text.
                    xs = [
                        (memo.get(v) or memo.setdefault(v, lex_encode(canon(v)))) + i
                        for v, i in zip(vals, idbs, strict=True)
                    ]
                pairs[1::2] = xs
            if max(map(len, xs)) < 32:
                per_col.append([head + _FIXSTR[len(x)] + x for x in xs])
            else:
                per_col.append([head + _mp_str(x) for x in xs])
            groups += (key, n, *pairs)
        header = self.header
        return [header + b"".join(parts) for parts in zip(*per_col, strict=True)], groups

    def _plan(self, tenant: str) -> list[_Column]:
        entity, keys = self.spec.name, self.keys
        plan = []
        for c, lexical in self.sortable:
            key = (keys.sort_lex if lexical else keys.sort_num)(tenant, entity, c).encode()
            kind = _LEX if lexical else _NUM
            how = _BY_LEX if lexical else _BY_SCORE
            plan.append(_Column(how, c, key, _mp_str(kind) + _mp_str(key), {}))
        for c in self.filter_only:
            key = keys.filter_index(tenant, entity, c).encode()
            plan.append(_Column(_BY_CANON, c, key, _mp_str(_LEX) + _mp_str(key), {}))
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        self._plans[tenant] = plan
        return plan


# MessagePack, only the types the entries use (in the form every decoder reads,
# Redis's cmsgpack included: no str8/bin types).
_FIXSTR = [bytes((0xA0 | n,)) for n in range(32)]


def _mp_str(b: bytes) -> bytes:
    n = len(b)
    if n < 32:
        return _FIXSTR[n] + b
    if n < 0x10000:
        return b"\xda" + n.to_bytes(2, "big") + b
    return b"\xdb" + n.to_bytes(4, "big") + b


def _mp_array(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")
