"""`Writer`: validated row writes, each stored with its event in one atomic step."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, NamedTuple

from redis.asyncio.cluster import RedisCluster

from raycluster.cluster.keys import check_key_name, row_prefix
from raycluster.cluster.routing import partition_of
from raycluster.errors import ConflictError, InvalidRow
from raycluster.livequery.models import EntitySpec, check_expected, check_free_row

from ._client import Client, ClientComponent, ClusterClient
from ._index import Layout
from .errors import translate_errors
from .scripts import WRITE, WRITE_MANY

__all__ = ("Outcome", "Write", "Writer")

_Rows = Mapping[str, Mapping[str, Any]] | Iterable[tuple[str, Mapping[str, Any]]]
Write = tuple[str, Mapping[str, Any] | None, int | None]
"""One write of `Writer.write_many`: (agg_id, row or None to delete, expected version or None)."""
# Rows per WRITE_MANY call: each call is atomic, so this bounds how long one
# batch holds Redis (a few ms) before other clients' commands run.
_ROWS_PER_CALL = 100
# The first calls of a batch are smaller (16, 32, 64 rows, then 100): Redis starts
# on one while the next, larger one is encoded (at about half Redis's cost per row).
_FIRST_CALL_ROWS = 16
# One encoder for every row (json.dumps with options builds a new one per call).
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _unencodable(o: Any) -> Any:
    raise TypeError(f"not JSON: {o!r}")


# The C encoder `_JSON.encode` builds on every call, built once (a row is checked flat
# scalars: no cycle check, no NaN): half the cost per row. Same output.
_c_make_encoder: Callable[..., Any] | None = getattr(json.encoder, "c_make_encoder", None)
_row_json: Callable[[dict[str, Any]], str] = _JSON.encode  # without the C accelerator
if _c_make_encoder is not None:
    _c_encode = _c_make_encoder(
        None, _unencodable, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )

    def _c_row_json(vals: dict[str, Any]) -> str:
        return "".join(_c_encode(vals, 0))

    _row_json = _c_row_json
_STATUS: dict[int, Literal["ok", "conflict", "noop"]] = {
    ord("o"): "ok",
    ord("c"): "conflict",
    ord("n"): "noop",
}


def _call_bounds(n: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of each script call of a batch of `n` writes."""
    start, size = 0, _FIRST_CALL_ROWS
    while start < n:
        yield start, min(n, start + size)
        start += size
        size = min(2 * size, _ROWS_PER_CALL)


class Outcome(NamedTuple):
    """What one write of `Writer.write_many` did."""

    status: Literal["ok", "conflict", "noop"]
    """`ok`: written; `conflict`: expected version differs; `noop`: delete of a missing row."""
    version: int
    """The version written (`ok`), else the row's current one (nothing written)."""


async def _send_pipelined(conn: Any, commands: Iterator[list[Any]], in_flight: int) -> list[Any]:
    """`Writer._pipelined` on one connection (the caller disconnects it on an error)."""
    replies: list[Any] = []
    sent = 0
    for cmd in commands:
        await conn.send_packed_command(conn.pack_command(*cmd), check_health=False)
        sent += 1
        if sent - len(replies) > in_flight:
            replies.append(await conn.read_response())
    while len(replies) < sent:
        replies.append(await conn.read_response())
    return replies


class Writer(ClientComponent):
    """Writes rows of declared entities: the row, its indexes and its event at once.

    Guarantees: a row is validated against its `EntitySpec` before anything
    is sent (`InvalidRow` names the field; nothing written); the row, its
    index entries and its event on `lq:events:{partition_of(tenant, entity)}`
    are written by one Lua script (`scripts.WRITE`; `WRITE_MANY` for a
    batch, atomic per call), so a reader never sees one without the other;
    versions increase by one per write and survive a delete. With no
    `entities` declared, any entity is accepted: a row is then any JSON
    object of scalars, stored without indexes (reads scan). Either way every
    name and value must read back unchanged: valid Unicode (no lone surrogate,
    column names and ids included), finite numbers, and scalars only, so a
    row is never nested JSON. A connection lost mid-write raises
    `RedisUnavailable` and leaves the outcome unknown
    (`upsert`/`delete`: redis-py retries a dropped connection first, so a
    write may rarely be applied twice, as two consecutive versions; batches
    are not retried).
    """

    client_name = "raycluster-writer"

    def __init__(self, client: Client, *, entities: Iterable[EntitySpec] = (), **kw: Any) -> None:
        super().__init__(client, **kw)
        self.layouts = {e.name: Layout(e, self.keys) for e in entities}
        self._script = client.register_script(WRITE)

    # -- writes ------------------------------------------------------------------

    async def upsert(
        self,
        tenant: str,
        entity: str,
        agg_id: str,
        row: Mapping[str, Any],
        *,
        expected_version: int | None = None,
    ) -> int:
        """Store `row` as the state of `agg_id`; return its new version.

        With `expected_version`, write only if the row's current version is
        that (0: never written) — else `ConflictError`, nothing written. A
        `row` that is not an object (None included: a delete is `delete`) is
        `InvalidRow`, nothing written.
        """
        keys, args = self._prepare(tenant, entity, agg_id, row, expected_version, delete=False)
        with translate_errors(f"upsert {tenant}/{entity}/{agg_id}"):
            res = await self._script(keys=keys, args=args)
        return self._outcome(agg_id, expected_version, res)

    async def delete(
        self, tenant: str, entity: str, agg_id: str, *, expected_version: int | None = None
    ) -> int:
        """Delete `agg_id`; return the version the delete was written at.

        Deleting a missing row writes nothing and returns its current version
        (0 if it never existed). `expected_version` as in `upsert` (checked
        first, so a stale delete of a missing row is a conflict too).
        """
        keys, args = self._prepare(tenant, entity, agg_id, None, expected_version, delete=True)
        with translate_errors(f"delete {tenant}/{entity}/{agg_id}"):
            res = await self._script(keys=keys, args=args)
        return self._outcome(agg_id, expected_version, res)

    async def upsert_many(self, tenant: str, entity: str, rows: _Rows) -> list[int]:
        """Upsert many rows of one (tenant, entity), pipelined; their new versions, in order.

        `rows` maps ids to rows, or is an iterable of (id, row) pairs. Every
        row is validated before any is sent (`InvalidRow` naming `rows.{i}…`;
        nothing written); a row is an object, never None. An id given twice
        is written twice, in order. Otherwise as `write_many`.
        """
        if isinstance(rows, Mapping):
            items = list(rows.items())
        elif isinstance(rows, str | bytes) or not isinstance(rows, Iterable):
            raise InvalidRow("rows", rows, "must be a mapping or an iterable of (id, row) pairs")
        else:
            items = list(rows)
        writes: list[Write] = []
        for i, item in enumerate(items):
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise InvalidRow(f"rows.{i}", item, "must be an (id, row) pair")
            writes.append((item[0], item[1], None))
        replies = await self._write_many(tenant, entity, writes, "rows", deletes=False)
        versions: list[int] = []
        for reply in replies:  # no expected versions: every status is `o`
            versions += reply[1:]
        return versions

    async def write_many(self, tenant: str, entity: str, writes: Iterable[Write]) -> list[Outcome]:
        """Apply many writes of one (tenant, entity) in order; what each did.

        A write is `(agg_id, row, expected_version)`: row None deletes,
        expected_version None skips the check. Each write does exactly what
        `upsert`/`delete` would do at its place in the sequence, but a
        conflict is an `Outcome("conflict", current version)` instead of an
        exception (and a delete of a missing row `Outcome("noop", version)`).
        Every write is validated before any is sent (`InvalidRow` naming
        `writes.{i}.…`; nothing written). Writes go 100 to a script call
        (the first ones fewer, so Redis starts sooner; `scripts.WRITE_MANY`,
        atomic per call, with grouped entries when its writes are upserts of
        distinct ids), and the calls are pipelined
        in order on one connection, `write_batch` rows' worth (at least one
        call) awaiting their reply; a failure part-way raises, the calls
        acknowledged before it written and the outcome of later ones unknown.
        """
        if isinstance(writes, str | bytes) or not isinstance(writes, Iterable):
            raise InvalidRow("writes", writes, "must be an iterable of writes")
        checked: list[Write] = []
        for i, w in enumerate(writes):
            if not isinstance(w, tuple | list) or len(w) != 3:
                why = "must be an (id, row or None, expected version or None) triple"
                raise InvalidRow(f"writes.{i}", w, why)
            checked.append((w[0], w[1], w[2]))
        replies = await self._write_many(tenant, entity, checked, "writes", deletes=True)
        out: list[Outcome] = []
        for statuses, *versions in replies:
            out.extend(map(Outcome, map(_STATUS.__getitem__, statuses), versions))
        return out

    async def get(self, tenant: str, entity: str, agg_id: str) -> tuple[int, dict[str, Any]] | None:
        """The (version, row) of a live row, or None (names checked as `upsert` checks them)."""
        self._check_names(tenant, entity, agg_id)
        with translate_errors(f"get {tenant}/{entity}/{agg_id}"):
            v, raw = await self._client.hmget(self.keys.row(tenant, entity, agg_id), ["v", "row"])
        if raw is None:
            return None
        return int(v or 0), json.loads(raw)

    async def version(self, tenant: str, entity: str, agg_id: str) -> int:
        """The row's current version (kept after a delete; 0 if never written)."""
        self._check_names(tenant, entity, agg_id)
        with translate_errors(f"version {tenant}/{entity}/{agg_id}"):
            v = await self._client.hget(self.keys.row(tenant, entity, agg_id), "v")
        return int(v or 0)

    # -- internals ---------------------------------------------------------------

    def _check_names(self, tenant: Any, entity: Any, agg_id: Any = "-") -> Layout | None:
        """Raise `InvalidRow` naming a bad tenant, entity or id; the entity's layout."""
        check_key_name("tenant", tenant)
        check_key_name("entity", entity)
        check_key_name("agg_id", agg_id)
        layout = self.layouts.get(entity)
        if layout is None and self.layouts:
            raise InvalidRow("entity", entity, "unknown entity")
        return layout

    def _target(self, tenant: str, entity: str) -> tuple[Layout | None, list[str], str]:
        """The checked (tenant, entity)'s layout, its fixed keys (live ids, stream,
        index counts, event counter) and the prefix of its row keys."""
        layout = self._check_names(tenant, entity)
        p = partition_of(tenant, entity)
        fixed = [
            self.keys.table(tenant, entity),
            self.keys.event_stream(p),
            self.keys.index_counts(tenant, entity),
            self.keys.event_seq(p),
        ]
        return layout, fixed, row_prefix(self.keys, tenant, entity)

    @staticmethod
    def _check(
        layout: Layout | None, agg_id: str, row: Any, expected: int | None, *, delete: bool
    ) -> dict[str, Any] | None:
        """The row as a dict once every check passed (None for a delete)."""
        check_key_name("agg_id", agg_id)
        check_expected(expected)
        if delete:
            return None
        if not isinstance(row, Mapping):
            raise InvalidRow("row", row, "must be an object (a delete is `delete`)")
        vals = dict(row)
        if layout is None:
            return check_free_row(vals)
        if not layout.valid(vals):  # plain values of declared columns pass the check below
            layout.spec.check_row(vals)
        return vals

    @staticmethod
    def _encode(
        layout: Layout | None, tenant: str, agg_id: str, vals: dict[str, Any] | None
    ) -> tuple[str, bytes]:
        """A checked row's JSON and index entries (both empty for a delete)."""
        if vals is None:
            return "", b""
        entries = layout.entries(tenant, agg_id, vals) if layout is not None else b""
        return _row_json(vals), entries

    def _prepare(
        self,
        tenant: str,
        entity: str,
        agg_id: str,
        row: Mapping[str, Any] | None,
        expected: int | None,
        *,
        delete: bool,
    ) -> tuple[list[str], list[str | bytes | int]]:
        """The WRITE script's KEYS and ARGV of one checked write."""
        layout, fixed, prefix = self._target(tenant, entity)
        vals = self._check(layout, agg_id, row, expected, delete=delete)
        row_json, entries = self._encode(layout, tenant, agg_id, vals)
        args: list[str | bytes | int] = [
            "delete" if delete else "upsert",
            "" if expected is None else str(expected),
            tenant,
            entity,
            agg_id,
            row_json,
            self.settings.events_maxlen,
            entries,
        ]
        return [prefix + agg_id, *fixed], args

    async def _write_many(
        self, tenant: str, entity: str, writes: list[Write], what: str, *, deletes: bool
    ) -> list[Any]:
        """Check every write, then run them; the WRITE_MANY replies, in order."""
        layout, fixed, prefix = self._target(tenant, entity)
        checked: list[tuple[str, dict[str, Any] | None, int | None]] = []
        valid = layout.valid if layout is not None else None
        for i, (agg_id, row, expected) in enumerate(writes):
            # The common case, checked inline: an ASCII id, no expected version, a
            # plain dict of plain values (what `_check` would pass, at a fraction of the cost).
            if (
                valid is not None
                and expected is None
                and type(agg_id) is str
                and agg_id.isascii()
                and agg_id
                and type(row) is dict
                and valid(row)
            ):
                checked.append((agg_id, row.copy(), None))
                continue
            try:
                vals = self._check(layout, agg_id, row, expected, delete=deletes and row is None)
            except InvalidRow as e:
                raise InvalidRow(f"{what}.{i}.{e.field}", e.value, e.reason) from e
            checked.append((agg_id, vals, expected))
        if not checked:
            return []

        def calls() -> Iterator[list[Any]]:
            # Rows are encoded call by call, so Redis runs one call while the next is built.
            # EVAL, not EVALSHA: a NOSCRIPT part-way through a pipeline could only be
            # retried out of order (Redis hashes the script text, a fraction of the call).
            head = [tenant, entity, self.settings.events_maxlen]
            encode = _row_json
            for start, stop in _call_bounds(len(checked)):
                part = checked[start:stop]
                blobs, groups = self._entries(layout, tenant, part)
                args: list[Any] = []
                for (agg_id, vals, expected), blob in zip(part, blobs, strict=True):
                    exp = "" if expected is None else expected
                    if vals is None:
                        args += ("delete", exp, agg_id, "", b"")
                    else:
                        args += ("upsert", exp, agg_id, encode(vals), blob)
                row_keys = [prefix + w[0] for w in part]
                n_keys = len(fixed) + len(row_keys)
                yield ["EVAL", WRITE_MANY, n_keys, *fixed, *row_keys, *head, *args, *groups]

        in_flight = max(1, self.settings.write_batch // _ROWS_PER_CALL) + 1
        with translate_errors(f"write_many {tenant}/{entity}"):
            return await self._pipelined(calls(), in_flight, fixed[0])

    @staticmethod
    def _entries(
        layout: Layout | None,
        tenant: str,
        part: list[tuple[str, dict[str, Any] | None, int | None]],
    ) -> tuple[list[bytes], list[bytes | int]]:
        """One script call's index entries per write, and the grouped entries
        (`scripts.WRITE_MANY`) when its writes are upserts of distinct ids."""
        if layout is None:
            return [b""] * len(part), []
        ids = [w[0] for w in part if w[1] is not None]
        blobs, groups = layout.entries_many(tenant, ids, [w[1] for w in part if w[1] is not None])
        if len(ids) == len(part):
            if len({w[0] for w in part}) < len(part):
                groups = []
            return blobs, groups
        it = iter(blobs)
        return [b"" if w[1] is None else next(it) for w in part], []

    async def _pipelined(
        self, commands: Iterator[list[Any]], in_flight: int, slot_key: str
    ) -> list[Any]:
        """Send `commands` in order on one connection, reading a reply whenever more
        than `in_flight` await theirs; the replies, in order (an error reply raises).

        On Redis Cluster the connection is one to the master serving
        `slot_key`'s slot (every command of one call shares it); a lost
        connection or a moved slot makes the client learn the slot map again.
        """
        if isinstance(self._client, ClusterClient):
            async with self._client.connection_for(slot_key) as conn:
                return await _send_pipelined(conn, commands, in_flight)
        if isinstance(self._client, RedisCluster):  # redis-py's own: its cluster pipeline
            return await self._cluster_pipelined(self._client, commands, in_flight + 1)
        pool = self._client.connection_pool
        conn = await pool.get_connection()
        try:
            return await _send_pipelined(conn, commands, in_flight)
        except BaseException:
            # Replies may still be due: the connection is unusable for anyone else.
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    @staticmethod
    async def _cluster_pipelined(
        client: RedisCluster, commands: Iterator[list[Any]], size: int
    ) -> list[Any]:
        replies: list[Any] = []
        for part in iter(lambda: list(itertools.islice(commands, size)), []):
            async with client.pipeline() as pipe:
                for cmd in part:
                    pipe.execute_command(*cmd)
                replies += await pipe.execute()
        return replies

    @staticmethod
    def _outcome(agg_id: str, expected: int | None, res: Any) -> int:
        status, version = res[0], int(res[1])
        if status == b"conflict":
            raise ConflictError(agg_id, expected if expected is not None else -1, version)
        return version
