"""Filter compilation: a `where` list becomes one Python function.

The conditions are turned into the source of a single function and compiled
once, so evaluating a filter costs a few attribute-free comparisons instead of
walking a tree per row. Constants never enter the source text (they are bound
by name), so no value can inject code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from types import CodeType
from typing import Any

from .models import Cond

__all__ = ("Predicate", "compile_predicate", "indexable_terms", "like_matcher")

Predicate = Callable[[dict[str, Any]], bool]

_CMP = {"eq": "==", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def like_matcher(pattern: str, *, ignore_case: bool) -> Callable[[str], bool]:
    """A matcher for a SQL LIKE pattern (`%`, `_`, `\\` escapes; anchored)."""
    parts: list[str] = []
    literal = True
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            parts.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if ch == "%":
            parts.append(".*")
            literal = False
        elif ch == "_":
            parts.append(".")
            literal = False
        else:
            parts.append(re.escape(ch))
        i += 1
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    match = re.compile("".join(parts), flags).fullmatch
    # Common shapes ('abc', 'abc%', '%abc', '%abc%') avoid the regex engine.
    # Ignoring case, only ASCII text takes the fast path: there `lower()` is
    # exactly the one-to-one case mapping the regex uses (for other scripts,
    # lower()/casefold() can map one character to two).
    body = pattern.strip("%")
    simple = "_" not in pattern and "\\" not in pattern and "%" not in body
    if not simple or (ignore_case and not pattern.isascii()):
        return lambda s: isinstance(s, str) and match(s) is not None
    starts, ends = pattern.startswith("%"), pattern.endswith("%") and len(pattern) > 1
    # One closure per shape: this runs once per row per filter.
    if ignore_case:
        low = body.lower()
        if literal:
            return lambda s: (
                isinstance(s, str) and (s.lower() == low if s.isascii() else match(s) is not None)
            )
        if starts and ends:
            return lambda s: (
                isinstance(s, str) and (low in s.lower() if s.isascii() else match(s) is not None)
            )
        if ends:
            return lambda s: (
                isinstance(s, str)
                and (s.lower().startswith(low) if s.isascii() else match(s) is not None)
            )
        return lambda s: (
            isinstance(s, str)
            and (s.lower().endswith(low) if s.isascii() else match(s) is not None)
        )
    if literal:
        return lambda s: isinstance(s, str) and s == body
    if starts and ends:
        return lambda s: isinstance(s, str) and body in s
    if ends:
        return lambda s: isinstance(s, str) and s.startswith(body)
    return lambda s: isinstance(s, str) and s.endswith(body)


class _Gen:
    def __init__(self) -> None:
        self.consts: dict[str, Any] = {}
        self.n = 0

    def const(self, value: Any) -> str:
        name = f"_k{len(self.consts)}"
        self.consts[name] = value
        return name

    def var(self) -> str:
        self.n += 1
        return f"v{self.n}"

    def expr(self, c: Cond) -> str:
        op = c.op
        if op in ("or", "and"):
            joined = f" {op} ".join(self.expr(a) for a in c.args or ())
            return f"({joined})"
        get = f"g({c.column!r})"
        if op == "is_null":
            return f"({get} is None)"
        if op == "is_not_null":
            return f"({get} is not None)"
        if op == "eq":
            return f"({get} == {self.const(c.value)})"
        if op == "in":
            return f"({get} in {self.const(frozenset(c.values or ()))})"
        v = self.var()
        if op == "not_in":
            test = f"{v} not in {self.const(frozenset(c.values or ()))}"
        elif op in ("like", "ilike"):
            m = like_matcher(str(c.value), ignore_case=op == "ilike")
            test = f"{self.const(m)}({v})"
        else:
            test = f"{v} {_CMP[op]} {self.const(c.value)}"
        return f"(({v} := {get}) is not None and {test})"


def compile_predicate(where: Sequence[Cond]) -> Predicate:
    """Compile an AND of conditions into `pred(row) -> bool` (cached by shape).

    SQL semantics: a null (or missing) value satisfies only `is_null`;
    `ne`/`not_in`/comparisons are false on null. A value of the wrong type
    for its comparison makes the row not match rather than raising.
    """
    if not where:
        return _true
    gen = _Gen()
    body = " and ".join(gen.expr(c) for c in where)
    src = (
        "def _pred(r):\n"
        "    g = r.get\n"
        "    try:\n"
        f"        return {body}\n"
        "    except TypeError:\n"
        "        return False\n"
    )
    # The source names constants but holds no values, so subscriptions that
    # differ only in values (eq("owner", "u1") vs "u2") share one code object.
    code = _CODE.get(src)
    if code is None:
        if len(_CODE) >= _CODE_MAX:
            _CODE.pop(next(iter(_CODE)))
        code = _CODE[src] = compile(src, "<live-query filter>", "exec")
    scope: dict[str, Any] = {"__builtins__": {"TypeError": TypeError}}
    scope.update(gen.consts)
    exec(code, scope)
    pred: Predicate = scope["_pred"]
    return pred


def _true(row: dict[str, Any]) -> bool:
    return True


_CODE: dict[str, CodeType] = {}
_CODE_MAX = 4096


def indexable_terms(where: Sequence[Cond]) -> list[tuple[str, frozenset[Any]]]:
    """Top-level `eq`/`in` conjuncts as (column, accepted values): what an index can use."""
    terms: dict[str, frozenset[Any]] = {}
    for c in where:
        if c.op not in ("eq", "in") or c.column is None:
            continue
        vals = frozenset([c.value]) if c.op == "eq" else frozenset(c.values or ())
        # Two conjuncts on one column: only their intersection can match.
        terms[c.column] = terms[c.column] & vals if c.column in terms else vals
    return list(terms.items())
