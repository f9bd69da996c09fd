"""The index layout of an entity's rows in Redis (shared by the writer and the store).

Per (tenant, entity), beside the live-id sorted set:

* a **value index** per filterable column: one set of ids per value, keyed by
  the value's canonical text (`canon`); null is a value too, so every live row
  is in exactly one set per column and a count per column (in the index-count
  hash) proves the index covers every row;
* a **sort index** per sortable column: a sorted set in the column's order —
  numeric columns by score (null = +inf: last ascending, first descending),
  string columns by member `enc(value) + id` (null = `\\xff` + id, after every
  UTF-8 string).

Another writer reproduces `canon` and `enc` exactly: canonical text is JSON
for strings (ASCII-escaped), the decimal integer for booleans (1/0), ints and
integral floats, the shortest round-trip repr for other floats, `null` for
null. `enc` is the UTF-8 bytes with each NUL written `\\x00\\xff`, closed by
`\\x00\\x00` (order-preserving, and the id starts after the first `\\x00\\x00`).
"""

from __future__ import annotations

from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple

from raycluster.cluster.keys import Keys
from raycluster.livequery.models import EntitySpec, Scalar, unstorable

__all__ = (
    "LEX_NULL",
    "Layout",
    "canon",
    "check_scalar",
    "count_field",
    "lex_encode",
    "lex_member",
    "score_text",
)

LEX_NULL = b"\xff"  # no UTF-8 string starts with 0xff, so nulls sort after every value


def canon(v: Scalar) -> str:
    """The canonical text of a value in a value-index key.

    Values Python considers equal (True, 1, 1.0) share one text, so an index
    lookup finds exactly what the compiled predicate would accept.
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
    """The index-count hash field of a column's value index."""
    return f"v:{column}"


# Entry kinds of the WRITE script (see its docstring).
_VALUE, _NUM, _LEX = b"v", b"n", b"l"
_MAX_PLANS = 4096  # tenants whose entry plan a Layout keeps (then it starts afresh)
_MAX_MEMO = 4096  # value-set entries one plan column keeps (then it starts afresh)


class _Column(NamedTuple):
    """One index column's entry for one tenant: its constant parts, encoded."""

    kind: bytes
    column: str
    head: bytes  # value sets: the key without the value; sort indexes: kind and key
    tail: bytes  # value sets: the count field; else empty
    memo: dict[Any, bytes]  # value sets: value -> entry


class Layout:
    """Which indexes an entity's rows carry, and the entries of one row."""

    __slots__ = ("_plans", "filterable", "header", "keys", "sortable", "spec")

    def __init__(self, spec: EntitySpec, keys: Keys) -> None:
        self.spec = spec
        self.keys = keys
        cols = list(spec.columns)
        self.filterable = list(spec.filterable if spec.filterable is not None else cols)
        sortable = spec.sortable if spec.sortable is not None else cols
        self.sortable = [(c, spec.columns[c] == "str") for c in sortable]
        self.header = _mp_array(3 * (len(self.filterable) + len(self.sortable)))
        self._plans: dict[str, list[_Column]] = {}

    def entries(self, tenant: str, agg_id: str, row: dict[str, Any]) -> bytes:
        """The WRITE script's index entries for `row`: a MessagePack array of
        strings, (kind, key, x) per index column (`b""` when it has none)."""
        plan = self._plans.get(tenant)
        if plan is None:
            plan = self._plan(tenant)
        if not plan:
            return b""
        idb = agg_id.encode()
        out = [self.header]
        for kind, col, head, tail, memo in plan:
            v = row.get(col)
            if kind == _VALUE:
                # Values that compare equal (1, 1.0, True) have one canonical text.
                entry = memo.get(v)
                if entry is None:
                    if len(memo) >= _MAX_MEMO:
                        memo.clear()
                    entry = memo[v] = _mp_str(_VALUE) + _mp_str(head + canon(v).encode()) + tail
                out.append(entry)
                continue
            if kind == _LEX:
                x = (LEX_NULL if v is None else lex_encode(v)) + idb
            else:
                x = b"inf" if v is None else repr(float(v)).encode()
            out.append(head + _mp_str(x))
        return b"".join(out)

    def _plan(self, tenant: str) -> list[_Column]:
        entity = self.spec.name
        plan = []
        for c in self.filterable:
            prefix = self.keys.value_index(tenant, entity, c, "")
            if self.keys.value_index(tenant, entity, c, "x") != prefix + "x":
                raise RuntimeError("Keys.value_index no longer ends with the value")
            plan.append(_Column(_VALUE, c, prefix.encode(), _mp_str(count_field(c).encode()), {}))
        for c, lexical in self.sortable:
            key = (self.keys.sort_lex if lexical else self.keys.sort_num)(tenant, entity, c)
            kind = _LEX if lexical else _NUM
            plan.append(_Column(kind, c, _mp_str(kind) + _mp_str(key.encode()), b"", {}))
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


def check_scalar(v: Any) -> str | None:
    """Why a value cannot be stored, or None when it can."""
    if v is not None and not isinstance(v, str | int | float):
        return "must be a string, number, boolean or null"
    if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
        return "outside the 64-bit integer range"
    return unstorable(v)
