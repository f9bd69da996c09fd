"""The command line's small query language: `--where 'temp>50'` and `--sort name,-temp`.

    COLUMN OP VALUE      OP is one of  =  !=  >  >=  <  <=  ~  (~ is SQL ILIKE: % and _)

A value in single or double quotes is a string as written. Otherwise, when the
entity declares the column, the value is read as the column's type (`str`
columns keep it as text, so `name=007` is the string "007"); when it does not,
it is an int or a float if it looks like one, `true`/`false` a bool, else a
string. `COLUMN=null` is IS NULL and `COLUMN!=null` IS NOT NULL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from raycluster.errors import InvalidQuery
from raycluster.livequery import (
    Cond,
    Scalar,
    SortKey,
    eq,
    gt,
    gte,
    ilike,
    is_not_null,
    is_null,
    lt,
    lte,
    ne,
)

__all__ = ("OPERATORS", "describe_query", "parse_sort", "parse_where")

OPERATORS: dict[str, Callable[[str, Scalar], Cond]] = {
    "=": eq,
    "!=": ne,
    ">=": gte,
    "<=": lte,
    ">": gt,
    "<": lt,
    "~": lambda column, value: ilike(column, str(value)),
}
# Two-character operators first, so `a>=1` is not read as `a > "=1"`.
_WHERE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(!=|>=|<=|=|>|<|~)\s*(.*?)\s*$", re.S)
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")
_SYMBOL = {"eq": "=", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "ilike": "~"}


def _guess(text: str) -> Scalar:
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    if text in ("true", "false"):
        return text == "true"
    return text


def _typed(column: str, text: str, kind: str) -> Scalar:
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise InvalidQuery("--where", text, f"{column!r} is {kind}") from None
    if kind == "bool":
        if text not in ("true", "false"):
            raise InvalidQuery("--where", text, f"{column!r} is bool: true or false")
        return text == "true"
    return text


def parse_where(text: str, columns: Mapping[str, str] | None = None) -> Cond:
    """One `COLUMN OP VALUE` condition; `columns` (name → type) types the value.

    Raises `InvalidQuery` (field `--where`, the text quoted) when the text does
    not parse or the value does not fit the column's declared type.
    """
    m = _WHERE.match(text)
    if m is None:
        ops = " ".join(OPERATORS)
        raise InvalidQuery("--where", text, f"expected COLUMN OP VALUE with OP one of {ops}")
    column, op, raw = m.groups()
    if raw == "":
        raise InvalidQuery("--where", text, "no value (quote an empty string: name='')")
    value: Scalar
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        value = raw[1:-1]
    elif raw == "null":
        if op == "=":
            return is_null(column)
        if op == "!=":
            return is_not_null(column)
        raise InvalidQuery("--where", text, "null only works with = and != (IS [NOT] NULL)")
    else:
        kind = (columns or {}).get(column)
        value = _typed(column, raw, kind) if kind is not None and op != "~" else _guess(raw)
    try:
        return OPERATORS[op](column, value)
    except InvalidQuery as e:
        raise InvalidQuery("--where", text, e.reason) from e


def parse_sort(text: str) -> list[SortKey]:
    """`name,-temp`: comma-separated columns, `-` for descending (`+` allowed for ascending)."""
    keys: list[SortKey] = []
    for part in text.split(","):
        name = part.strip()
        desc = name.startswith("-")
        name = name.lstrip("+-").strip()
        if not name:
            raise InvalidQuery("--sort", text, "expected COLUMN[,-COLUMN…]")
        keys.append(SortKey(column=name, desc=desc))
    return keys


def _describe(c: Cond) -> str:
    if c.op in ("and", "or"):
        return "(" + f" {c.op} ".join(_describe(a) for a in c.args or ()) + ")"
    if c.op == "is_null":
        return f"{c.column} is null"
    if c.op == "is_not_null":
        return f"{c.column} is not null"
    if c.op in ("in", "not_in"):
        return f"{c.column} {c.op.replace('_', ' ')} {c.values!r}"
    return f"{c.column} {_SYMBOL.get(c.op, c.op)} {c.value!r}"


def describe_query(where: list[Cond], sort: list[SortKey], limit: int) -> str:
    """A one-line reading of a query, for headers: `where … order by … limit N`."""
    parts = []
    if where:
        parts.append("where " + " and ".join(_describe(c) for c in where))
    if sort:
        parts.append("order by " + ", ".join(k.column + (" desc" if k.desc else "") for k in sort))
    parts.append(f"limit {limit}")
    return " ".join(parts)
