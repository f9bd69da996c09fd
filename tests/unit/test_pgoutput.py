"""The pgoutput decoder over messages captured from a real PostgreSQL 15
(tests/postgres/capture_pgoutput.py wrote the file; no server needed here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from raycluster.postgres.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    DecodeError,
    Delete,
    Insert,
    Origin,
    Relation,
    Truncate,
    TypeInfo,
    Update,
    decode,
    format_lsn,
    parse_lsn,
)

CAPTURE = json.loads((Path(__file__).parent / "data" / "pgoutput_capture.json").read_text())


def transactions() -> dict[str, list[Any]]:
    """Each captured step's messages between its Begin and Commit (both included)."""
    out: dict[str, list[Any]] = {}
    steps = iter(CAPTURE["steps"])
    current: list[Any] = []
    for m in CAPTURE["messages"]:
        msg = decode(bytes.fromhex(m["hex"]))
        current.append(msg)
        if isinstance(msg, Commit):
            out[next(steps)] = current
            current = []
    return out


TX = transactions()


def test_every_step_is_one_transaction() -> None:
    assert list(TX) == CAPTURE["steps"]
    for msgs in TX.values():
        assert isinstance(msgs[0], Begin) and isinstance(msgs[-1], Commit)
        begin, commit = msgs[0], msgs[-1]
        assert begin.final_lsn == commit.commit_lsn < commit.end_lsn
        assert begin.commit_ts_us == commit.commit_ts_us > 0


def test_insert_with_relation_and_type() -> None:
    _, typ, rel, ins, _ = TX["insert"]
    assert typ == TypeInfo(typ.oid, "public", "mood")
    assert isinstance(rel, Relation)
    assert (rel.namespace, rel.name, rel.replica_identity) == ("public", "items", "d")
    assert [(c.name, c.key, c.type_oid, c.typmod) for c in rel.columns] == [
        ("id", True, 20, -1),
        ("tenant", False, 25, -1),
        ("name", False, 25, -1),
        ("n", False, 23, -1),
        ("price", False, 1700, (10 << 16 | 2) + 4),
        ("at", False, 1184, -1),
        ("big", False, 25, -1),
        ("m", False, typ.oid, -1),
    ]
    assert ins == Insert(rel.relid, ("1", "acme", "pump é", "7", "12.50",
                                     "2024-05-01 10:00:00.5+00", None, "ok"))  # fmt: skip


def test_toast_unchanged_and_key_change() -> None:
    (ins,) = TX["insert_big"][1:-1]
    assert ins.new[6] == CAPTURE["big"]
    (upd,) = TX["update_toast_unchanged"][1:-1]
    assert upd.old_kind is None and upd.old is None
    assert upd.new[:4] == ("2", "acme", "tank", "3") and upd.new[6] is UNCHANGED
    (key,) = TX["update_key"][1:-1]
    assert isinstance(key, Update) and key.old_kind == "K"
    assert key.old == ("2", None, None, None, None, None, None, None)
    assert key.new[:2] == ("20", "rival") and key.new[6] is UNCHANGED
    (plain,) = TX["update_plain"][1:-1]
    assert plain.old is None and plain.new[2] is None and plain.new[7] == "happy"
    (dele,) = TX["delete"][1:-1]
    assert dele == Delete(dele.relid, "K", ("1", None, None, None, None, None, None, None))


def test_replica_identity_full() -> None:
    rel, a, b = TX["full_insert"][1:-1]
    assert rel.replica_identity == "f" and isinstance(a, Insert) and isinstance(b, Insert)
    (upd,) = TX["full_update"][1:-1]
    assert upd == Update(rel.relid, "O", ("1", "acme", "a"), ("1", "acme", "c"))
    (dele,) = TX["full_delete"][1:-1]
    assert dele == Delete(rel.relid, "O", ("2", "rival", "b"))


def test_truncate_and_origin() -> None:
    *rels, trunc = TX["truncate"][1:-1]
    relids = tuple(r.relid for r in rels if isinstance(r, Relation))
    assert trunc == Truncate(0, relids)
    origin, _, ins = TX["origin"][1:-1]
    assert isinstance(origin, Origin) and origin.name == "elsewhere"
    assert isinstance(ins, Insert) and ins.new == ("9", "acme", "from elsewhere")


def test_every_message_is_decoded_whole() -> None:
    # A truncated payload is an error naming the message, never a short row.
    for m in CAPTURE["messages"]:
        raw = bytes.fromhex(m["hex"])
        if raw[:1] in (b"I", b"U", b"D"):
            with pytest.raises(DecodeError):
                decode(raw[: len(raw) // 2 + 1] if len(raw) > 12 else raw[:3])


@pytest.mark.parametrize(
    "raw",
    [b"", b"Z", b"I\x00\x00\x00\x01X", b"S\x00", b"I\x00\x00\x00\x01N\x00\x01b\x00\x00\x00\x01x"],
)
def test_unknown_or_malformed(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(raw)


def test_lsn_text() -> None:
    for lsn in (0, 1, 0x16B3748, (7 << 32) | 0xABCDEF, 2**64 - 1):
        assert parse_lsn(format_lsn(lsn)) == lsn
    assert format_lsn(0x16B3748) == "0/16B3748"
    with pytest.raises(ValueError):
        parse_lsn("16B3748")


def test_truncated_last_value_is_an_error() -> None:
    raw = bytes.fromhex(CAPTURE["messages"][3]["hex"])  # the first Insert
    assert isinstance(decode(raw), Insert)
    for cut in range(6, len(raw)):
        with pytest.raises(DecodeError):
            decode(raw[:cut])
    with pytest.raises(DecodeError):
        decode(raw + b"x")
