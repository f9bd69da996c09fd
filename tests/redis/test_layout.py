"""The index layout's encodings (pure: no server needed)."""

from __future__ import annotations

import math
import random

import pytest

from raycluster.cluster.keys import Keys
from raycluster.redis._index import LEX_NULL, canon, lex_encode, lex_member, score_text
from raycluster.redis._keys import ExtraKeys, row_prefix

pytestmark = pytest.mark.redis

ALPHABET = ["", "a", "b", "\x00", "\x01", "\xff", "é", "z", "\U0001f600", "A", " "]


def rand_str(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 4)))


def test_lex_encoding_preserves_order_and_groups_values() -> None:
    rng = random.Random(5)
    for _ in range(5000):
        a, b = rand_str(rng), rand_str(rng)
        assert (a < b) == (lex_encode(a) < lex_encode(b))
        assert (a == b) == (lex_encode(a) == lex_encode(b))
        # Members of one value sort together, whatever the ids.
        ma, mb = lex_member(a, rand_str(rng) or "x"), lex_member(b, "y")
        if a != b:
            assert (ma < mb) == (a < b)
        assert lex_member(None, "i") > ma and lex_member(None, "i").startswith(LEX_NULL)


def test_member_id_is_after_the_first_double_nul() -> None:
    for v in ["", "a\x00", "\x00\x00", "x\x00\x00y"]:
        m = lex_member(v, "id-1")
        assert m[m.index(b"\x00\x00") + 2 :] == b"id-1"


def test_canon_follows_python_equality() -> None:
    assert canon(True) == canon(1) == canon(1.0) == "1"
    assert canon(False) == canon(0) == canon(-0.0) == "0"
    assert canon("1") == '"1"' != canon(1)
    assert canon(None) == "null"
    assert canon(2.5) == "2.5" and canon(1e300) == str(int(1e300))
    assert canon(10**300) != canon(1e300)  # unequal in Python too


def test_scores() -> None:
    assert score_text(None) == "inf"
    assert score_text(True) == "1.0"
    assert float(score_text(2**60 + 1)) == float(2**60 + 1)
    assert math.isinf(float(score_text(None)))


def test_key_helpers() -> None:
    k, x = Keys("p"), ExtraKeys("p")
    assert row_prefix(k, "t", "e") + "id" == k.row("t", "e", "id")
    names = {
        x.index_counts("t", "e"),
        x.sort_num("t", "e", "c"),
        x.sort_lex("t", "e", "c"),
        x.event_seq(3),
    }
    assert all(n.startswith("p:") for n in names) and len(names) == 4
