"""Decoding of `pgoutput`, PostgreSQL's built-in logical replication output (protocol 1).

One function, `decode(payload)`, turns the payload of one XLogData message
into one message object. Only the text format is decoded (the ingester never
asks for `binary`), and protocol 1 (no streamed in-progress transactions: a
transaction arrives whole, at its commit). Message formats:
https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html

Tuple data keeps each column as it came: `None` for SQL NULL ('n'),
`UNCHANGED` for an unchanged TOASTed value that was not sent ('u'), else
the value's text (`str`, decoded as UTF-8: the ingester asks for a UTF-8
client encoding).

No dependency: it is pure Python over `struct`, tested on messages captured
from a real server (tests/postgres/test_pgoutput.py).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = (
    "UNCHANGED",
    "Begin",
    "Column",
    "Commit",
    "DecodeError",
    "Delete",
    "Insert",
    "Message",
    "Origin",
    "Relation",
    "Truncate",
    "TypeInfo",
    "Update",
    "Value",
    "decode",
    "format_lsn",
    "parse_lsn",
)


class _Unchanged:
    """The value of an unchanged TOASTed column: Postgres did not send it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()
Value = str | None | _Unchanged


class DecodeError(ValueError):
    """Raised when a payload is not a well-formed pgoutput (protocol 1, text) message."""


class Begin(NamedTuple):
    """Start of a transaction; its changes follow, then its `Commit`."""

    final_lsn: int
    """LSN of the transaction's commit record."""
    commit_ts_us: int
    """Commit time, microseconds since 2000-01-01 UTC (Postgres epoch)."""
    xid: int


class Commit(NamedTuple):
    """End of a transaction."""

    flags: int
    commit_lsn: int
    end_lsn: int
    """End of the commit record: the position to confirm once the transaction is applied."""
    commit_ts_us: int


class Origin(NamedTuple):
    """The replication origin the transaction came from (changes replicated into this server)."""

    lsn: int
    name: str


class Column(NamedTuple):
    """One column of a `Relation`."""

    key: bool
    """Part of the replica identity (sent in the old tuple of an UPDATE/DELETE)."""
    name: str
    type_oid: int
    typmod: int


class Relation(NamedTuple):
    """A table's shape, sent before its first change in a session and after it changed."""

    relid: int
    namespace: str
    name: str
    replica_identity: str
    """`d` default (primary key), `n` nothing, `f` full, `i` index."""
    columns: tuple[Column, ...]


class TypeInfo(NamedTuple):
    """A non-built-in type used by a published column."""

    oid: int
    namespace: str
    name: str


class Insert(NamedTuple):
    """A new row."""

    relid: int
    new: tuple[Value, ...]


class Update(NamedTuple):
    """A changed row.

    `old_kind` says what `old` holds: `K` the replica identity's columns
    (sent when they changed; the other columns None), `O` the whole old row
    (`REPLICA IDENTITY FULL`), `None` nothing (the identity is unchanged).
    """

    relid: int
    old_kind: str | None
    old: tuple[Value, ...] | None
    new: tuple[Value, ...]


class Delete(NamedTuple):
    """A deleted row: `old` holds its identity (`K`) or the whole row (`O`)."""

    relid: int
    old_kind: str
    old: tuple[Value, ...]


class Truncate(NamedTuple):
    """TRUNCATE of one or more tables (`options`: 1 CASCADE, 2 RESTART IDENTITY)."""

    options: int
    relids: tuple[int, ...]


Message = Begin | Commit | Origin | Relation | TypeInfo | Insert | Update | Delete | Truncate

_BEGIN = struct.Struct(">qqI")
_COMMIT = struct.Struct(">bqqq")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I16 = struct.Struct(">h")
_Q = struct.Struct(">q")
_COLUMN_TAIL = struct.Struct(">Ii")  # type oid, typmod


def format_lsn(lsn: int) -> str:
    """`0/16B3748` form of an LSN."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """An LSN from its `0/16B3748` form."""
    hi, sep, lo = text.partition("/")
    if not sep:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(hi, 16) << 32) | int(lo, 16)


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(0, pos)
    return buf[pos:end].decode(), end + 1


def _tuple(buf: bytes, pos: int) -> tuple[tuple[Value, ...], int]:
    (n,) = _I16.unpack_from(buf, pos)
    pos += 2
    out: list[Value] = []
    append = out.append
    unpack = _I32.unpack_from
    for _ in range(n):
        kind = buf[pos]
        pos += 1
        if kind == 0x74:  # 't' text
            (size,) = unpack(buf, pos)
            pos += 4
            if pos + size > len(buf):
                raise DecodeError(f"column value of {size} bytes runs past the message")
            append(buf[pos : pos + size].decode())
            pos += size
        elif kind == 0x6E:  # 'n' null
            append(None)
        elif kind == 0x75:  # 'u' unchanged TOASTed value
            append(UNCHANGED)
        else:
            raise DecodeError(f"tuple column of kind {chr(kind)!r} (only text is asked for)")
    return tuple(out), pos


def _check_end(buf: bytes, end: int) -> None:
    if end != len(buf):
        raise DecodeError(f"{len(buf) - end} bytes after the tuple data")


def decode(payload: bytes) -> Message:
    """The message in one pgoutput payload.

    Raises `DecodeError` for a truncated or unknown message (a streamed,
    two-phase or logical-decoding message, which protocol 1 without those
    options never sends).
    """
    try:
        return _decode(payload)
    except (struct.error, IndexError, ValueError) as e:
        if isinstance(e, DecodeError):
            raise
        kind = chr(payload[0]) if payload else "?"
        raise DecodeError(f"malformed pgoutput message {kind!r}: {e}") from e


def _decode(buf: bytes) -> Message:
    kind = buf[0]
    if kind == 0x49:  # 'I'
        (relid,) = _U32.unpack_from(buf, 1)
        if buf[5] != 0x4E:
            raise DecodeError("insert without a new tuple")
        new, end = _tuple(buf, 6)
        _check_end(buf, end)
        return Insert(relid, new)
    if kind == 0x55:  # 'U'
        (relid,) = _U32.unpack_from(buf, 1)
        pos = 5
        old_kind: str | None = None
        old: tuple[Value, ...] | None = None
        if buf[pos] in (0x4B, 0x4F):  # 'K' | 'O'
            old_kind = chr(buf[pos])
            old, pos = _tuple(buf, pos + 1)
        if buf[pos] != 0x4E:
            raise DecodeError("update without a new tuple")
        new, end = _tuple(buf, pos + 1)
        _check_end(buf, end)
        return Update(relid, old_kind, old, new)
    if kind == 0x44:  # 'D'
        (relid,) = _U32.unpack_from(buf, 1)
        if buf[5] not in (0x4B, 0x4F):
            raise DecodeError("delete without an old tuple")
        old_tuple, end = _tuple(buf, 6)
        _check_end(buf, end)
        return Delete(relid, chr(buf[5]), old_tuple)
    if kind == 0x42:  # 'B'
        return Begin(*_BEGIN.unpack_from(buf, 1))
    if kind == 0x43:  # 'C'
        return Commit(*_COMMIT.unpack_from(buf, 1))
    if kind == 0x52:  # 'R'
        (relid,) = _U32.unpack_from(buf, 1)
        namespace, pos = _cstring(buf, 5)
        name, pos = _cstring(buf, pos)
        identity = chr(buf[pos])
        (ncols,) = _I16.unpack_from(buf, pos + 1)
        pos += 3
        cols = []
        for _ in range(ncols):
            flags = buf[pos]
            col, pos = _cstring(buf, pos + 1)
            type_oid, typmod = _COLUMN_TAIL.unpack_from(buf, pos)
            pos += 8
            cols.append(Column(bool(flags & 1), col, type_oid, typmod))
        # Postgres sends pg_catalog as an empty namespace.
        return Relation(relid, namespace or "pg_catalog", name, identity, tuple(cols))
    if kind == 0x54:  # 'T'
        (n,) = _U32.unpack_from(buf, 1)
        options = buf[5]
        relids = struct.unpack_from(f">{n}I", buf, 6)
        return Truncate(options, tuple(relids))
    if kind == 0x59:  # 'Y'
        (oid,) = _U32.unpack_from(buf, 1)
        namespace, pos = _cstring(buf, 5)
        name, _ = _cstring(buf, pos)
        return TypeInfo(oid, namespace or "pg_catalog", name)
    if kind == 0x4F:  # 'O'
        (lsn,) = _Q.unpack_from(buf, 1)
        name, _ = _cstring(buf, 9)
        return Origin(lsn, name)
    raise DecodeError(f"unknown pgoutput message {chr(kind)!r} (protocol 1 never sends it)")
