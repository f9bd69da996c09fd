"""Filter compilation and total order against the oracle (docs/semantics.md)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lq_oracle import o_key, o_like, o_match, o_row_key

from raycluster.livequery import (
    Cond,
    Cursor,
    PredicateIndex,
    SortKey,
    and_,
    compare_cursors,
    compile_predicate,
    cursor_key,
    cursor_of,
    eq,
    gt,
    gte,
    ilike,
    in_,
    indexable_terms,
    is_not_null,
    is_null,
    like,
    lt,
    lte,
    ne,
    not_in,
    or_,
    sort_key_of,
)
from raycluster.livequery.filter import like_matcher
from raycluster.livequery.order import key_fn

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ----------------------------------------------------------------------

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "s": st.text(alphabet="abAB%_.(\\é", max_size=4),
    "i": st.integers(-3, 3),
    "f": st.one_of(
        st.sampled_from([-1.5, -0.0, 0.0, 0.5, 2.0]),
        st.integers(-2, 2),
        st.floats(allow_nan=False, allow_infinity=False, width=32),
    ),
    "b": st.booleans(),
}
# A value of any type: what a column of an undeclared entity may hold.
ANY: st.SearchStrategy[Any] = st.one_of(
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([-1.5, 0.0, 1.0, 2.0, 2**53, 2**53 + 1, float(2**53), 2**63 - 1, -(2**63)]),
    st.text(alphabet="ab1%_", max_size=2),
)
VALUES["m"] = ANY
PATTERNS = st.text(alphabet="ab%_\\.(A", max_size=5)

rows = st.fixed_dictionaries({}, optional={c: st.none() | v for c, v in VALUES.items()})


def _leaves(col: str, value: st.SearchStrategy[Any]) -> list[st.SearchStrategy[Cond]]:
    c = st.just(col)
    # Operands of the column's type, and of any type (a comparison across types).
    out: list[st.SearchStrategy[Cond]] = []
    for operand in (value, ANY):
        out += [st.builds(f, c, operand) for f in (eq, ne, gt, gte, lt, lte)]
        out += [st.builds(f, c, st.lists(operand, min_size=1, max_size=3)) for f in (in_, not_in)]
    out += [st.builds(is_null, c), st.builds(is_not_null, c)]
    if col in ("s", "m"):
        out += [st.builds(like, c, PATTERNS), st.builds(ilike, c, PATTERNS)]
    return out


leaf = st.one_of(*(s for col, v in VALUES.items() for s in _leaves(col, v)))
conds = st.recursive(
    leaf,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda xs: or_(*xs)),
        st.lists(children, min_size=1, max_size=3).map(lambda xs: and_(*xs)),
    ),
    max_leaves=6,
)
wheres = st.lists(conds, max_size=3)
sorts = st.lists(
    st.builds(SortKey, column=st.sampled_from(list(VALUES)), desc=st.booleans()),
    max_size=3,
    unique_by=lambda k: k.column,
)
ids = st.text(alphabet="ar0123", min_size=1, max_size=3)

# -- filters -------------------------------------------------------------------------


@FAST
@given(where=wheres, sample=st.lists(rows, min_size=1, max_size=8))
def test_compile_predicate_matches_oracle(where: list[Cond], sample: list[dict[str, Any]]) -> None:
    pred = compile_predicate(where)
    for row in sample:
        got = pred(row)
        assert isinstance(got, bool), (where, row, got)
        assert got is o_match(where, row), (where, row)


@FAST
@given(where=wheres, sample=st.lists(rows, min_size=1, max_size=8))
def test_index_never_misses_a_matching_row(where: list[Cond], sample: list[dict[str, Any]]) -> None:
    index: PredicateIndex[str] = PredicateIndex()
    index.add("view", indexable_terms(where))
    for row in sample:
        if o_match(where, row):
            assert "view" in index.candidates("r1", row), (where, row)


@settings(max_examples=400, deadline=None)
@given(pattern=PATTERNS, s=st.text(alphabet="ab%_\\.(A\n", max_size=6), ic=st.booleans())
def test_like_matcher_matches_oracle(pattern: str, s: str, ic: bool) -> None:
    assert like_matcher(pattern, ignore_case=ic)(s) is o_like(s, pattern, ignore_case=ic)


# (pattern, string, LIKE, ILIKE)
LIKE_CASES: list[tuple[str, str, bool, bool]] = [
    ("abc", "abc", True, True),
    ("abc", "abcd", False, False),
    ("abc", "ABC", False, True),
    ("a%", "a", True, True),
    ("a%", "ba", False, False),
    ("A%", "abc", False, True),
    ("%a", "ba", True, True),
    ("%a", "ab", False, False),
    ("%b%", "abc", True, True),
    ("%B%", "abc", False, True),
    ("%b%", "ac", False, False),
    ("%", "", True, True),
    ("%%", "", True, True),
    ("", "", True, True),
    ("", "a", False, False),
    ("_", "a", True, True),
    ("_", "", False, False),
    ("_", "ab", False, False),
    ("_", "\n", True, True),
    ("%\n%", "x\ny", True, True),
    ("a_c", "abc", True, True),
    ("a_c", "ac", False, False),
    ("a%c", "abXc", True, True),
    ("a%c", "abXcd", False, False),
    ("a\\%", "a%", True, True),
    ("a\\%", "ab", False, False),
    ("a\\_", "a_", True, True),
    ("a\\_", "ab", False, False),
    ("\\\\", "\\", True, True),
    ("a\\", "a\\", True, True),  # a trailing lone backslash is itself
    ("%\\%%", "50%!", True, True),
    ("%\\%%", "50", False, False),
    ("a.c", "abc", False, False),
    ("a.c", "a.c", True, True),
    ("(a)", "(a)", True, True),
    ("(a", "(a", True, True),
    ("x(%", "x(y)", True, True),
    ("a*", "aaa", False, False),
    ("a+", "a+", True, True),
    ("[ab]", "a", False, False),
    ("[ab]", "[ab]", True, True),
    ("^a$", "^a$", True, True),
    ("a|b", "a", False, False),
    ("a{2}", "aa", False, False),
    ("caf%", "CAFÉ", False, True),
    ("%é", "CAFÉ", False, True),
    ("_é", "xÉ", False, True),
]


@pytest.mark.parametrize(("pattern", "s", "want_like", "want_ilike"), LIKE_CASES)
def test_like_edge_cases(pattern: str, s: str, want_like: bool, want_ilike: bool) -> None:
    assert o_like(s, pattern, ignore_case=False) is want_like  # the oracle agrees
    assert o_like(s, pattern, ignore_case=True) is want_ilike
    assert compile_predicate([like("c", pattern)])({"c": s}) is want_like
    assert compile_predicate([ilike("c", pattern)])({"c": s}) is want_ilike
    assert compile_predicate([like("c", pattern)])({"c": None}) is False
    assert compile_predicate([ilike("c", pattern)])({}) is False


@pytest.mark.parametrize(
    ("s", "fast", "slow"),
    [("straße", "STRASSE", "STRASS\\E"), ("ß", "ss", "s\\s"), ("ﬁle", "FILE%", "F\\ILE%")],
)
def test_ilike_answer_does_not_depend_on_the_pattern_shape(s: str, fast: str, slow: str) -> None:
    """`\\E` is a plain `E`: both patterns mean the same, so they must agree.

    (The first has no `_`/escape and takes the casefold fast path; the second
    goes through the regex. Simple one-to-one case mapping, as SQL ILIKE uses,
    gives False for all of these.)
    """
    assert like_matcher(fast, ignore_case=True)(s) is like_matcher(slow, ignore_case=True)(s)


@pytest.mark.parametrize("op", [like, ilike])
@pytest.mark.parametrize("pattern", ["abc", "ab%", "%bc", "%b%", "a_c", "%"])
def test_like_on_a_non_string_value_does_not_match(op: Any, pattern: str) -> None:
    """compile_predicate: a value of the wrong type makes the row not match, never raise."""
    pred = compile_predicate([op("c", pattern)])
    assert pred({"c": 5}) is False
    assert pred({"c": 5, "d": 1}) is False


def test_comparison_on_a_wrong_type_does_not_match() -> None:
    assert compile_predicate([gt("c", 5)])({"c": "x"}) is False
    assert compile_predicate([lte("c", "x")])({"c": 1}) is False


def test_sql_null_semantics() -> None:
    for row in ({}, {"c": None}):
        assert compile_predicate([is_null("c")])(row) is True
        assert compile_predicate([is_not_null("c")])(row) is False
        for cond in (eq("c", 1), ne("c", 1), gt("c", 1), lt("c", 1), in_("c", [1])):
            assert compile_predicate([cond])(row) is False, cond
        assert compile_predicate([not_in("c", [1])])(row) is False
        assert compile_predicate([or_(ne("c", 1), is_null("c"))])(row) is True


def test_odd_column_names_are_only_names() -> None:
    col = "it's \"quoted\" \\ + r.get('x')"
    pred = compile_predicate([eq(col, 1), like(col + "2", "a%")])
    assert pred({col: 1, col + "2": "ab"}) is True
    assert pred({col: 2, col + "2": "ab"}) is False


def test_same_column_terms_intersect() -> None:
    terms = dict(indexable_terms([eq("k", "a"), in_("k", ["a", "b"]), gt("n", 1)]))
    assert terms == {"k": frozenset({"a"})}
    terms = dict(indexable_terms([eq("k", "a"), eq("k", "b")]))
    assert terms == {"k": frozenset()}


# -- order ----------------------------------------------------------------------------

TYPED_VALUES: dict[str, list[Any]] = {
    "int": [-2, 0, 5],
    "float": [-1.5, 0.0, 2.25, 7],
    "str": ["", "A", "a", "ab", "b"],
    "bool": [False, True],
}


def _order(rows: list[tuple[str, dict[str, Any]]], sort: list[SortKey]) -> list[str]:
    return [i for i, _ in sorted(rows, key=lambda r: sort_key_of(r[1], sort, r[0]))]


@pytest.mark.parametrize("kind", sorted(TYPED_VALUES))
@pytest.mark.parametrize("desc", [False, True], ids=["asc", "desc"])
def test_null_ordering(kind: str, desc: bool) -> None:
    values = TYPED_VALUES[kind]
    rows = [(f"v{i}", {"c": v}) for i, v in enumerate(values)]
    rows += [("null", {"c": None}), ("missing", {})]
    sort = [SortKey(column="c", desc=desc)]
    ascending = [f"v{i}" for i in range(len(values))]
    want = ["missing", "null", *reversed(ascending)] if desc else [*ascending, "missing", "null"]
    assert _order(rows, sort) == want
    fn = key_fn(sort)
    assert [i for i, _ in sorted(rows, key=lambda r: fn(r[1], r[0]))] == want
    curs = sorted((cursor_of(r, sort, i) for i, r in rows), key=lambda c: cursor_key(c, sort))
    assert [c.values[-1] for c in curs] == want


@pytest.mark.parametrize("desc", [False, True])
def test_ties_break_on_id_ascending(desc: bool) -> None:
    sort = [SortKey(column="c", desc=desc)]
    rows: list[tuple[str, dict[str, Any]]] = [
        ("b", {"c": 1}),
        ("a", {"c": 1}),
        ("d", {}),
        ("c", {"c": None}),
    ]
    want = ["c", "d", "a", "b"] if desc else ["a", "b", "c", "d"]
    assert _order(rows, sort) == want
    assert _order(rows, []) == ["a", "b", "c", "d"]


def test_descending_strings_where_one_is_a_prefix() -> None:
    words = ["", "a", "ab", "abc", "abd", "b", "ba", "a\x00", "B"]
    rows = [(f"id{i}", {"s": w}) for i, w in enumerate(words)]
    got = [rows[int(i[2:])][1]["s"] for i in _order(rows, [SortKey(column="s", desc=True)])]
    assert got == ["ba", "b", "abd", "abc", "ab", "a\x00", "a", "B", ""]


@FAST
@given(
    sort=sorts,
    sample=st.lists(st.tuples(ids, rows), min_size=1, max_size=12, unique_by=lambda t: t[0]),
)
def test_order_matches_oracle(
    sort: list[SortKey], sample: list[tuple[str, dict[str, Any]]]
) -> None:
    want = [i for i, _ in sorted(sample, key=lambda r: o_row_key(r[1], sort, r[0]))]
    assert _order(sample, sort) == want
    fn = key_fn(sort)
    assert [i for i, _ in sorted(sample, key=lambda r: fn(r[1], r[0]))] == want
    for agg_id, row in sample:
        assert cursor_key(cursor_of(row, sort, agg_id), sort) == sort_key_of(row, sort, agg_id)


@settings(max_examples=300, deadline=None)
@given(words=st.lists(st.text(max_size=4), min_size=2, max_size=8))
def test_descending_text_is_reverse_code_point_order(words: list[str]) -> None:
    rows = [(f"id{i:02d}", {"s": w}) for i, w in enumerate(words)]
    want = sorted(rows, key=lambda r: r[0])
    want = sorted(want, key=lambda r: r[1]["s"], reverse=True)
    # sorted(reverse=True) keeps equal words in id order, which is what the total order says
    assert _order(rows, [SortKey(column="s", desc=True)]) == [i for i, _ in want]


@st.composite
def cursor_pairs(draw: st.DrawFn) -> tuple[list[SortKey], Cursor, Cursor]:
    sort = draw(sorts)

    def one() -> Cursor:
        vals = [draw(st.none() | VALUES[k.column]) for k in sort]
        return Cursor(values=[*vals, draw(ids)])

    a = one()
    b = draw(st.just(a) | st.builds(one))
    return sort, a, b


@FAST
@given(pair=cursor_pairs())
def test_compare_cursors_matches_oracle(pair: tuple[list[SortKey], Cursor, Cursor]) -> None:
    sort, a, b = pair
    ka = o_key(a.values[:-1], sort, str(a.values[-1]))
    kb = o_key(b.values[:-1], sort, str(b.values[-1]))
    want = (ka > kb) - (ka < kb)
    assert compare_cursors(a, b, sort) == want
    assert compare_cursors(b, a, sort) == -want
    assert compare_cursors(a, a, sort) == 0
