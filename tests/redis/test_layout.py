"""The index layout's encodings (pure: no server needed)."""

from __future__ import annotations

import math
import random

import pytest

from raycluster.cluster.keys import Keys, row_prefix
from raycluster.cluster.routing import partition_of
from raycluster.redis._index import LEX_NULL, canon, lex_encode, lex_member, score_text

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
    for k in (Keys("p"), Keys("p", cluster=True)):
        assert row_prefix(k, "t", "e") + "id" == k.row("t", "e", "id")
        names = {
            k.index_counts("t", "e"),
            k.sort_num("t", "e", "c"),
            k.sort_lex("t", "e", "c"),
            k.event_seq(3),
        }
        assert all(n.startswith("p:") for n in names) and len(names) == 4


def _tag(key: str) -> str:
    """The part of `key` Redis Cluster hashes (its hash tag, else the whole key)."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if start >= 0 and end > start + 1 else key


def test_cluster_form_tags_a_partitions_keys_alike_and_keeps_standalone_names() -> None:
    std, cl = Keys(), Keys(cluster=True)
    assert std.event_stream(17) == "lq:events:17" and cl.event_stream(17) == "lq:events:{17}"
    assert std.heartbeat_key("s") == "lq:shard:s" and cl.heartbeat_key("s") == "{lq}:shard:s"
    assert cl.ctrl_stream("s") == std.ctrl_stream("s") == "lq:ctrl:s"
    t, e = "a{c}me", "as}set"  # braces in names never move the tag
    p = partition_of(t, e)
    data = [
        cl.row(t, e, "{x}"), cl.table(t, e), cl.value_index(t, e, "c", '"v"'),
        cl.index_counts(t, e), cl.sort_num(t, e, "c"), cl.sort_lex(t, e, "c"),
        cl.event_stream(p), cl.event_seq(p), cl.epoch(p),
    ]  # fmt: skip
    assert {_tag(k) for k in data} == {str(p)}
    control = [
        cl.heartbeat_key("s"), cl.members(), cl.gateway_heartbeat("g"), cl.gateways(),
        cl.registration("{sub}"), cl.partition_regs(3), cl.gateway_regs("g"),
        cl.tier_shard_count("t"), cl.tier_shard_ids("t"),
    ]  # fmt: skip
    assert {_tag(k) for k in control} == {"lq"}
    with pytest.raises(ValueError, match="prefix"):
        Keys("a{b}")


def test_script_key_names_in_both_forms() -> None:
    """The names another language computes to call the write scripts (their contract
    tests take them from `Keys`, in the deployment's form)."""
    p = partition_of("acme", "asset")
    tag = f"{{{p}}}"
    for k, part, stream in ((Keys(), "", str(p)), (Keys(cluster=True), f"{tag}:", tag)):
        names = [
            k.row("acme", "asset", "r1"), k.table("acme", "asset"),
            k.index_counts("acme", "asset"), k.value_index("acme", "asset", "kind", '"pump"'),
            k.sort_num("acme", "asset", "n"), k.sort_lex("acme", "asset", "kind"),
            k.filter_index("acme", "asset", "kind"), k.event_stream(p), k.event_seq(p),
        ]  # fmt: skip
        assert names == [
            f"lq:row:{part}acme:asset:r1", f"lq:ids:{part}acme:asset",
            f"lq:ixc:{part}acme:asset", f'lq:vx:{part}acme:asset:kind:"pump"',
            f"lq:sn:{part}acme:asset:n", f"lq:sl:{part}acme:asset:kind",
            f"lq:fx:{part}acme:asset:kind",
            f"lq:events:{stream}", f"lq:evseq:{stream}",
        ]  # fmt: skip
