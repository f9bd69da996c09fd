"""Filter compilation: a `where` list becomes one Python function.

The conditions are turned into the source of a single function and compiled
once, so evaluating a filter costs a few attribute-free comparisons instead of
walking a tree per row. Constants never enter the source text (they are bound
by name), so no value can inject code.
"""

from __future__ import annotations

import _sre  # the regex engine's own case mapping (one code point to one)
import re
from collections.abc import Callable, Sequence
from re._casefix import _EXTRA_CASES  # the letters IGNORECASE equates beyond lowercase
from types import CodeType
from typing import Any

from .models import Cond, check_depth

__all__ = ("Predicate", "compile_predicate", "indexable_terms", "like_matcher")

Predicate = Callable[[dict[str, Any]], bool]

_CMP = {"eq": "==", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def like_matcher(pattern: str, *, ignore_case: bool) -> Callable[[Any], bool]:
    """A matcher for a SQL LIKE pattern: `%` any run, `_` one character, `\\` escapes.

    Anchored at both ends; `_` matches any one code point, newline included; a
    trailing lone `\\` is a literal backslash. Ignoring case compares code
    points as Python's `re.IGNORECASE` does (simple one-to-one case folding,
    so `ß` never equals `ss`). A value that is not a `str` never matches.

    No backtracking: the pattern is split on `%` into fixed-length segments;
    the first must match at the start, the last at the end, and each middle
    one is found leftmost after the previous one (taking the leftmost
    occurrence never loses a match). A segment is found by `str.find`, or,
    with `_` in it, bit-parallel (`_BitFinder`); small values take a
    quantifier-free regex. So a row costs O(value) C steps plus
    O(value x pattern / 64) word steps, never value x pattern Python steps.
    """
    segs = _segments(pattern)
    if not ignore_case:
        return _typed(_fast(segs) or _general(segs, 0))
    small = _general(segs, re.IGNORECASE)
    # A value is folded (each code point to the one the regex equates it with),
    # then matched exactly against the folded pattern. An ASCII value's fold is
    # its `lower()` (C speed); a small other one takes the regex instead.
    folded = [[c if c is _ANY else chr(_fold(ord(c))) for c in seg] for seg in segs]
    exact = _fast(folded) or _general(folded, 0)
    size = len(pattern)

    def match(s: Any) -> bool:
        if not isinstance(s, str):
            return False
        if s.isascii():
            return exact(s.lower())
        if len(s) * size <= _BIG:
            return small(s)
        return exact(s.translate(_FOLDS))

    return match


# Past this many value x segment characters, a search maps the value first (a
# `str.translate`, ~0.1 us a character) rather than let a regex try every start.
_BIG = 4096


def _fold(cp: int) -> int:
    """The code point `re.IGNORECASE` takes `cp` for.

    Its simple lowercase, or the least of the letters the regex also equates
    with that (`re._casefix`: s and long s, i and dotless i, ...).
    """
    lo: int = _sre.unicode_tolower(cp)
    return min((lo, *_EXTRA_CASES.get(lo, ())))


class _Folds(dict[int, int]):
    """`str.translate` table of `_fold`, filled as characters are met."""

    def __missing__(self, cp: int) -> int:
        self[cp] = f = _fold(cp)
        return f


_FOLDS = _Folds()


_ANY = None  # in a segment: `_`, any one character
_Seg = list[str | None]


def _segments(pattern: str) -> list[_Seg]:
    """`pattern` split on unescaped `%`: runs of literal characters and `_` (None)."""
    segs: list[_Seg] = [[]]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            segs[-1].append(pattern[i + 1])
            i += 2
            continue
        if ch == "%":
            segs.append([])
        else:
            segs[-1].append(_ANY if ch == "_" else ch)
        i += 1
    return segs


def _typed(match: Callable[[str], bool]) -> Callable[[Any], bool]:
    return lambda s: isinstance(s, str) and match(s)


def _fast(segs: list[_Seg]) -> Callable[[str], bool] | None:
    """Common shapes ('abc', 'abc%', '%abc', '%abc%') as one str method, or None."""
    if any(_ANY in seg for seg in segs):
        return None
    texts = ["".join(seg) for seg in segs]  # type: ignore[arg-type]
    if len(texts) == 1:
        whole = texts[0]
        return lambda s: s == whole
    if len(texts) == 2 and not texts[1]:
        head = texts[0]
        return lambda s: s.startswith(head)
    if len(texts) == 2 and not texts[0]:
        tail = texts[1]
        return lambda s: s.endswith(tail)
    if len(texts) == 3 and not texts[0] and not texts[2]:
        body = texts[1]
        return lambda s: body in s
    return None


class _Finder:
    """One fixed-length segment: test it at a position, or find its leftmost occurrence."""

    __slots__ = ("find", "size", "test")

    def __init__(self, seg: _Seg, flags: int) -> None:
        self.size = len(seg)
        self.test: Callable[[str, int], bool]
        self.find: Callable[[str, int, int], int]
        if _ANY not in seg and not flags:
            text = "".join(seg)  # type: ignore[arg-type]
            self.test = lambda s, i: s.startswith(text, i)
            self.find = lambda s, lo, hi: s.find(text, lo, hi)
            return
        # No quantifier: the regex only compares code points, never backtracks.
        source = "".join("." if c is _ANY else re.escape(c) for c in seg)
        rx = re.compile(source, re.DOTALL | flags)
        match, search = rx.match, rx.search
        self.test = lambda s, i: match(s, i) is not None

        def find(s: str, lo: int, hi: int) -> int:
            m = search(s, lo, hi)
            return -1 if m is None else m.start()

        # A search tries each start and compares up to the segment's length there
        # (value x segment steps); with `_` in it, it cannot skip ahead like
        # `str.find`, so case-sensitive segments search bit-parallel instead.
        self.find = find if flags else _BitFinder(seg, find).find


class _BitFinder:
    """Leftmost occurrence of a segment with `_`, bit-parallel.

    For each distinct literal character of the segment, a bit mask of the value
    (bit i set where the value holds that character at i) is built in C
    (`bytes.translate`, then `int(..., 2)`); the segment occurs at i where every
    literal position j has bit i + j set: the AND of the masks shifted by j.
    That is O(len(value) x literals / 64) word steps. A value beyond Latin-1
    is first mapped to small codes (one `str.translate`); a small one takes the
    regex search (`fallback`).
    """

    __slots__ = ("coded", "codes", "fallback", "masks", "size")

    def __init__(self, seg: _Seg, fallback: Callable[[str, int, int], int]) -> None:
        self.size = len(seg)
        self.fallback = fallback
        by_char: dict[str, list[int]] = {}
        for j, c in enumerate(seg):
            if c is not _ANY:
                by_char.setdefault(c, []).append(j)
        # (translate table, offsets); None: a character no Latin-1 value holds
        self.masks: list[tuple[bytes | None, list[int]]] = [
            (_ONE_OF[ord(c)] if ord(c) < 256 else None, js) for c, js in by_char.items()
        ]
        # Other values are mapped first: literal k of the segment to code k + 1.
        self.codes = {ord(c): k + 1 for k, c in enumerate(by_char)}
        self.coded: list[tuple[bytes | None, list[int]]] = [
            (_ONE_OF[k + 1], js) for k, js in enumerate(by_char.values()) if k < 255
        ]

    def find(self, s: str, lo: int, hi: int) -> int:
        span = hi - lo - self.size + 1  # start positions that fit
        if span <= 0:
            return -1
        part = s[lo:hi]
        try:
            raw = part.encode("latin-1")
            masks = self.masks
        except UnicodeEncodeError:
            codes = self.codes
            if (hi - lo) * self.size <= _BIG or len(codes) > 255:
                return self.fallback(s, lo, hi)
            # One small code per literal character of the segment, 0 for any other.
            small = {cp: codes.get(cp, 0) for cp in map(ord, set(part))}
            raw = part.translate(small).encode("latin-1")
            masks = self.coded
        hits = (1 << span) - 1
        for table, js in masks:
            if table is None:
                return -1
            mask = int(raw.translate(table)[::-1], 2)
            for j in js:
                hits &= mask >> j
            if not hits:
                return -1
        return lo + (hits & -hits).bit_length() - 1


# _ONE_OF[k]: a `bytes.translate` table mapping byte k to "1" and every other to "0".
_ONE_OF = [bytes(49 if b == k else 48 for b in range(256)) for k in range(256)]


def _general(segs: list[_Seg], flags: int) -> Callable[[str], bool]:
    finders = [_Finder(seg, flags) for seg in segs]
    if len(finders) == 1:
        size, test = finders[0].size, finders[0].test
        return lambda s: len(s) == size and test(s, 0)
    first, *mids, last = finders
    mids = [f for f in mids if f.size]
    least = first.size + last.size + sum(f.size for f in mids)

    def match(s: str) -> bool:
        n = len(s)
        if n < least:
            return False
        end = n - last.size
        if not first.test(s, 0) or not last.test(s, end):
            return False
        pos = first.size
        for f in mids:
            i = f.find(s, pos, end)
            if i < 0:
                return False
            pos = i + f.size
        return True

    return match


# One comparison term, by operator (`cmp`: gt/gte/lt/lte, as `op`) and its constant's
# type class: `g` reads the column, `v` names its value, `k` the constant. A term
# compares values of its constant's type class only: on another type it is false
# (`ne` true: that value is decidably not equal).
_TERMS = {
    ("eq", "s"): "({g} == {k})",  # a str equals only a str
    ("eq", "b"): "({g} is {k})",
    ("eq", "n"): "(({v} := {g}) == {k} and {v}.__class__ is not bool)",
    ("ne", "s"): "(({v} := {g}) is not None and {v} != {k})",
    ("ne", "b"): "(({v} := {g}) is not None and {v} is not {k})",
    ("ne", "n"): "(({v} := {g}) is not None and ({v} != {k} or {v}.__class__ is bool))",
    ("cmp", "s"): "(isinstance({v} := {g}, str) and {v} {op} {k})",
    ("cmp", "b"): "(({v} := {g}).__class__ is bool and {v} {op} {k})",
    ("cmp", "n"): "(isinstance({v} := {g}, _num) and {v}.__class__ is not bool and {v} {op} {k})",
}


def _type_of(v: Any) -> str:
    """A query constant's type class: `b` bool, `n` number, `s` string."""
    if isinstance(v, bool):
        return "b"
    return "s" if isinstance(v, str) else "n"


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
        if op in ("like", "ilike"):
            m = like_matcher(str(c.value), ignore_case=op == "ilike")
            return f"{self.const(m)}({get})"  # a matcher is false on anything but a str
        v = self.var()
        if op in ("in", "not_in"):
            return self._member(op, get, v, c.values or [])
        term = _TERMS[op if op in ("eq", "ne") else "cmp", _type_of(c.value)]
        return term.format(g=get, v=v, k=self.const(c.value), op=_CMP[op])

    def _member(self, op: str, get: str, v: str, values: list[Any]) -> str:
        """`in`/`not_in`: one set per type class of the values, each tested on its class."""
        by: dict[str, set[Any]] = {}
        for x in values:
            by.setdefault(_type_of(x), set()).add(x)
        parts = []
        for kind, xs in sorted(by.items()):
            k = self.const(frozenset(xs))
            if kind == "s":
                parts.append(f"{v} in {k}")  # a str equals only a str
            elif kind == "b":
                parts.append(f"({v} in {k} and {v}.__class__ is bool)")
            else:
                parts.append(f"({v} in {k} and {v}.__class__ is not bool)")
        if op == "in" and len(by) == 1:  # the common case, without the null test
            kind = next(iter(by))
            k = f"_k{len(self.consts) - 1}"
            if kind == "s":
                return f"({get} in {k})"
            test = "is" if kind == "b" else "is not"
            return f"(({v} := {get}) in {k} and {v}.__class__ {test} bool)"
        body = " or ".join(parts)
        if op == "in":
            return f"(({v} := {get}) is not None and ({body}))"
        return f"(({v} := {get}) is not None and not ({body}))"


def compile_predicate(where: Sequence[Cond]) -> Predicate:
    """Compile an AND of conditions into `pred(row) -> bool` (cached by shape).

    Semantics (docs/semantics.md): a null (or missing) value satisfies only
    `is_null`; `ne`/`not_in` are false on null. A term compares only values
    of one type class (booleans, numbers, strings): `eq`, `in`, the
    comparisons and `like` are false on a value of another type, `ne` and
    `not_in` true. So an `or_` never depends on the order of its members.
    Groups may nest `MAX_DEPTH` deep (deeper raises `InvalidQuery`).
    """
    if not where:
        return _true
    check_depth(where)
    gen = _Gen()
    body = " and ".join(gen.expr(c) for c in where)
    # Rows hold scalars (every store and feed refuses anything else); an
    # unhashable value met by an `in` anyway makes the row not match.
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
    scope: dict[str, Any] = {"__builtins__": _BUILTINS, "_num": (int, float)}
    scope.update(gen.consts)
    exec(code, scope)
    pred: Predicate = scope["_pred"]
    return pred


_BUILTINS = {"TypeError": TypeError, "bool": bool, "isinstance": isinstance, "str": str}


def _true(row: dict[str, Any]) -> bool:
    return True


_CODE: dict[str, CodeType] = {}
_CODE_MAX = 4096


def indexable_terms(where: Sequence[Cond]) -> list[tuple[str, frozenset[Any]]]:
    """Top-level `eq`/`in` conjuncts as (column, accepted values): what an index can use.

    The sets use Python's equality, under which `True == 1 == 1.0`: a lookup
    by them finds every row the term accepts, and may find a few more (a
    `true` for `1`), which the predicate then refuses.
    """
    terms: dict[str, frozenset[Any]] = {}
    for c in where:
        if c.op not in ("eq", "in") or c.column is None:
            continue
        vals = frozenset([c.value]) if c.op == "eq" else frozenset(c.values or ())
        # Two conjuncts on one column: only their intersection can match.
        terms[c.column] = terms[c.column] & vals if c.column in terms else vals
    return list(terms.items())
