"""LIKE/ILIKE: the linear-time matcher agrees with the regex it replaced, and stays fast."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raycluster.livequery import filter as filter_mod
from raycluster.livequery.filter import like_matcher


def regex_like(pattern: str, *, ignore_case: bool) -> Callable[[Any], bool]:
    """The matcher LIKE used before (the oracle): one anchored regex with `.*` per `%`."""
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            parts.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        parts.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    rx = re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))
    return lambda s: isinstance(s, str) and rx.fullmatch(s) is not None


# Case variants whose folding differs between lower(), casefold() and the regex:
# sharp s, capital sharp s, dotted/dotless i, Kelvin sign, Greek sigmas, long s.
TRICKY = (
    "ß\N{LATIN CAPITAL LETTER SHARP S}"
    "\N{LATIN CAPITAL LETTER I WITH DOT ABOVE}iI\N{LATIN SMALL LETTER DOTLESS I}"
    "Kk\N{KELVIN SIGN}"
    "\N{GREEK SMALL LETTER SIGMA}\N{GREEK CAPITAL LETTER SIGMA}\N{GREEK SMALL LETTER FINAL SIGMA}"
    "sS\N{LATIN SMALL LETTER LONG S}"
)
PATTERN_CHARS = "aAb%_\\\n" + TRICKY
VALUE_CHARS = "aAb%_\\\n." + TRICKY


@settings(max_examples=2000, deadline=None)
@given(
    pattern=st.text(alphabet=PATTERN_CHARS, max_size=8),
    value=st.text(alphabet=VALUE_CHARS, max_size=10),
    ignore_case=st.booleans(),
)
def test_agrees_with_the_regex(pattern: str, value: str, ignore_case: bool) -> None:
    want = regex_like(pattern, ignore_case=ignore_case)(value)
    assert like_matcher(pattern, ignore_case=ignore_case)(value) is want


@settings(max_examples=500, deadline=None)
@given(
    parts=st.lists(st.text(alphabet="ab_", min_size=1, max_size=3), min_size=1, max_size=6),
    value=st.text(alphabet="abA", max_size=30),
    ignore_case=st.booleans(),
)
def test_agrees_on_many_segments(parts: list[str], value: str, ignore_case: bool) -> None:
    """Several `%`-separated segments over a tiny alphabet: many ways to place each."""
    pattern = "%".join(parts)
    for p in (pattern, "%" + pattern, pattern + "%", "%" + pattern + "%"):
        want = regex_like(p, ignore_case=ignore_case)(value)
        assert like_matcher(p, ignore_case=ignore_case)(value) is want, p


@settings(max_examples=1000, deadline=None)
@given(
    parts=st.lists(st.text(alphabet="ab_\u00e9\u03a9", min_size=1, max_size=6), max_size=4),
    value=st.text(alphabet="ab\u00e9\u03a9\U0001f600", max_size=40),
)
def test_wildcard_segments_search_bit_parallel_like_the_regex(parts: list[str], value: str) -> None:
    """Middle segments with `_` over Latin-1 values and others (mapped to small codes)."""
    pattern = "%" + "%".join(parts) + "%"
    assert like_matcher(pattern, ignore_case=False)(value) is regex_like(
        pattern, ignore_case=False
    )(value), pattern


@pytest.mark.parametrize(
    ("pattern", "value", "want"),
    [
        ("i", "\N{LATIN CAPITAL LETTER I WITH DOT ABOVE}", True),  # simple folding: İ is i
        ("\N{LATIN CAPITAL LETTER I WITH DOT ABOVE}", "\N{LATIN SMALL LETTER DOTLESS I}", True),
        ("k", "\N{KELVIN SIGN}", True),
        ("%\N{KELVIN SIGN}%", "xkx", True),
        ("\N{GREEK SMALL LETTER SIGMA}", "\N{GREEK SMALL LETTER FINAL SIGMA}", True),
        ("\N{GREEK SMALL LETTER FINAL SIGMA}", "\N{GREEK CAPITAL LETTER SIGMA}", True),
        ("s", "\N{LATIN SMALL LETTER LONG S}", True),
        ("ss", "ß", False),  # one character never equals two
        ("ß", "\N{LATIN CAPITAL LETTER SHARP S}", True),
        ("_", "\N{LATIN CAPITAL LETTER I WITH DOT ABOVE}", True),
    ],
)
def test_ilike_case_folding_of_non_ascii(pattern: str, value: str, want: bool) -> None:
    assert regex_like(pattern, ignore_case=True)(value) is want  # the oracle agrees
    assert like_matcher(pattern, ignore_case=True)(value) is want


@pytest.mark.parametrize("ignore_case", [False, True])
@pytest.mark.parametrize("value", [None, 1, 1.5, True, b"abc", ["abc"]])
def test_non_strings_never_match(value: Any, ignore_case: bool) -> None:
    for pattern in ("%", "abc", "a%", "%a", "%a%", "a_c", "%a%b%"):
        assert like_matcher(pattern, ignore_case=ignore_case)(value) is False


@pytest.mark.parametrize("ignore_case", [False, True])
@pytest.mark.parametrize(
    "pattern", ["%a%a%a%a%a%a%a%a%b", "%a_a_a%a_a_a%b", "_%" * 40 + "b", "%" + "a" * 200 + "b%"]
)
def test_the_costliest_patterns_still_answer_correctly(pattern: str, ignore_case: bool) -> None:
    """Patterns that made the regex backtrack for seconds (timing is in bench_like)."""
    m = like_matcher(pattern, ignore_case=ignore_case)
    assert m("a" * 1000) is False
    assert m("a" * 1000 + "b") is True


@settings(max_examples=1500, deadline=None)
@given(
    pattern=st.text(alphabet=PATTERN_CHARS + "\u03a9\u00e9", max_size=8),
    value=st.text(alphabet=VALUE_CHARS + "\u03a9\u00e9\U0001f600", max_size=12),
    ignore_case=st.booleans(),
)
def test_large_value_paths_agree_with_the_regex(
    pattern: str, value: str, ignore_case: bool
) -> None:
    """Every value takes the large-value paths (folding, coded bit masks)."""
    want = regex_like(pattern, ignore_case=ignore_case)(value)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(filter_mod, "_BIG", 0)
        assert like_matcher(pattern, ignore_case=ignore_case)(value) is want


def test_folding_agrees_with_ignorecase_for_every_code_point() -> None:
    """Characters fold together exactly when the regex equates them (BMP and plane 1)."""
    groups: dict[int, list[str]] = {}
    for cp in range(0x20000):
        if not 0xD800 <= cp <= 0xDFFF:
            groups.setdefault(filter_mod._fold(cp), []).append(chr(cp))
    for folded, chars in groups.items():
        for ch in chars:
            rx = re.compile(re.escape(ch), re.IGNORECASE)
            assert all(rx.fullmatch(other) for other in chars), (ch, chars)
            if len(chars) > 1 or ord(ch) != folded:
                assert rx.fullmatch(chr(folded)), (ch, folded)
