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

import json
from typing import Any

from raycluster.cluster.keys import Keys
from raycluster.livequery.models import EntitySpec, Scalar, unstorable

from ._keys import ExtraKeys

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
    return json.dumps(v)


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


class Layout:
    """Which indexes an entity's rows carry, and the entries of one row."""

    __slots__ = ("extra", "filterable", "keys", "sortable", "spec")

    def __init__(self, spec: EntitySpec, keys: Keys, extra: ExtraKeys) -> None:
        self.spec = spec
        self.keys = keys
        self.extra = extra
        cols = list(spec.columns)
        self.filterable = list(spec.filterable if spec.filterable is not None else cols)
        sortable = spec.sortable if spec.sortable is not None else cols
        self.sortable = [(c, spec.columns[c] == "str") for c in sortable]

    def entries(self, tenant: str, agg_id: str, row: dict[str, Any]) -> bytes:
        """The WRITE script's index entries for `row` (one length-prefixed string)."""
        entity = self.spec.name
        out: list[bytes] = []
        vx = self.keys.value_index
        for c in self.filterable:
            out.append(_entry(b"v", vx(tenant, entity, c, canon(row.get(c))), count_field(c)))
        for c, lexical in self.sortable:
            v = row.get(c)
            if lexical:
                key = self.extra.sort_lex(tenant, entity, c)
                out.append(_entry(b"l", key, lex_member(v, agg_id)))
            else:
                key = self.extra.sort_num(tenant, entity, c)
                out.append(_entry(b"n", key, score_text(v)))
        return b"".join(out)


def _entry(kind: bytes, key: str, x: str | bytes) -> bytes:
    kb = key.encode()
    xb = x.encode() if isinstance(x, str) else x
    return b"%s%d:%s%d:%s" % (kind, len(kb), kb, len(xb), xb)


def check_scalar(v: Any) -> str | None:
    """Why a value cannot be stored, or None when it can."""
    if v is not None and not isinstance(v, str | int | float):
        return "must be a string, number, boolean or null"
    if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
        return "outside the 64-bit integer range"
    return unstorable(v)
