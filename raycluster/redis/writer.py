"""`Writer`: validated row writes, each stored with its event in one atomic step."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis

from raycluster.cluster.routing import partition_of
from raycluster.errors import ConflictError, InvalidRow
from raycluster.livequery.models import EntitySpec, printable, unstorable

from ._client import ClientComponent
from ._index import Layout, check_scalar
from ._keys import ExtraKeys
from .errors import translate_errors
from .scripts import WRITE, WRITE_MANY

__all__ = ("Writer",)

_Rows = Mapping[str, Mapping[str, Any]] | Iterable[tuple[str, Mapping[str, Any]]]
# Rows per WRITE_MANY call: each call is atomic, so this bounds how long one
# batch holds Redis (a few ms) before other clients' commands run.
_ROWS_PER_CALL = 100


def _check_name(field: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidRow(field, value, "must be a non-empty string")
    if field != "agg_id" and ":" in value:
        # Key names join tenant and entity with ':' — one inside would collide.
        raise InvalidRow(field, value, "must not contain ':'")
    if (why := unstorable(value)) is not None:
        raise InvalidRow(field, value, why)


class Writer(ClientComponent):
    """Writes rows of declared entities: the row, its indexes and its event at once.

    Guarantees: a row is validated against its `EntitySpec` before anything
    is sent (`InvalidRow` names the field; nothing written); the row, its
    index entries and its event on `lq:events:{partition_of(tenant, entity)}`
    are written by one Lua script (`scripts.WRITE`), so a reader never sees
    one without the other; versions increase by one per write and survive a
    delete. With no `entities` declared, any entity is accepted: a row is then
    any JSON object of scalars, stored without indexes (reads scan). Either
    way every name and value must read back unchanged: valid Unicode (no lone
    surrogate, column names and ids included), finite numbers, and scalars
    only, so a row is never nested JSON. A
    connection lost mid-write raises `RedisUnavailable` and leaves
    the outcome unknown (redis-py retries a dropped connection first, so a
    write may rarely be applied twice, as two consecutive versions).
    """

    client_name = "raycluster-writer"

    def __init__(
        self, client: aioredis.Redis, *, entities: Iterable[EntitySpec] = (), **kw: Any
    ) -> None:
        super().__init__(client, **kw)
        self.extra: ExtraKeys = self.settings.extra_keys
        self.layouts = {e.name: Layout(e, self.keys, self.extra) for e in entities}
        self._script = client.register_script(WRITE)
        self._many = client.register_script(WRITE_MANY)

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
        that (0: never written) — else `ConflictError`, nothing written.
        """
        keys, args = self._prepare(tenant, entity, agg_id, row, expected_version)
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
        keys, args = self._prepare(tenant, entity, agg_id, None, expected_version)
        with translate_errors(f"delete {tenant}/{entity}/{agg_id}"):
            res = await self._script(keys=keys, args=args)
        return self._outcome(agg_id, expected_version, res)

    async def upsert_many(self, tenant: str, entity: str, rows: _Rows) -> list[int]:
        """Upsert many rows of one (tenant, entity), pipelined; their new versions, in order.

        Every row is validated before any is sent (`InvalidRow` naming
        `rows.{i}.…`; nothing written). Rows go 100 to a script call
        (`scripts.WRITE_MANY`, atomic per call), `write_batch` rows per round
        trip; a failure part-way leaves a prefix written. An id given twice
        is written twice, in order.
        """
        _check_name("tenant", tenant)  # the arguments themselves, not `rows.{i}.…`
        _check_name("entity", entity)
        items = list(rows.items()) if isinstance(rows, Mapping) else list(rows)
        prepared = []
        for i, (agg_id, row) in enumerate(items):
            try:
                prepared.append(self._prepare(tenant, entity, agg_id, row, None))
            except InvalidRow as e:
                raise InvalidRow(f"rows.{i}.{e.field}", e.value, e.reason) from e
        if not prepared:
            return []
        common = prepared[0][0][1:]  # live ids, stream, index counts, event counter
        head: list[Any] = [tenant, entity, self.settings.events_maxlen]
        versions: list[int] = []
        step = self.settings.write_batch
        with translate_errors(f"upsert_many {tenant}/{entity}"):
            for start in range(0, len(prepared), step):
                async with self._client.pipeline(transaction=False) as pipe:
                    chunk = prepared[start : start + step]
                    for i in range(0, len(chunk), _ROWS_PER_CALL):
                        part = chunk[i : i + _ROWS_PER_CALL]
                        flat = [x for _, a in part for x in (a[4], a[5], a[7])]
                        keys = [*common, *(k[0] for k, _ in part)]
                        await self._many(keys=keys, args=[*head, *flat], client=pipe)
                    results = await pipe.execute()
                versions.extend(int(v) for r in results for v in r)
        return versions

    async def get(self, tenant: str, entity: str, agg_id: str) -> tuple[int, dict[str, Any]] | None:
        """The (version, row) of a live row, or None."""
        with translate_errors(f"get {tenant}/{entity}/{agg_id}"):
            v, raw = await self._client.hmget(self.keys.row(tenant, entity, agg_id), ["v", "row"])
        if raw is None:
            return None
        return int(v or 0), json.loads(raw)

    async def version(self, tenant: str, entity: str, agg_id: str) -> int:
        """The row's current version (kept after a delete; 0 if never written)."""
        with translate_errors(f"version {tenant}/{entity}/{agg_id}"):
            v = await self._client.hget(self.keys.row(tenant, entity, agg_id), "v")
        return int(v or 0)

    # -- internals ---------------------------------------------------------------

    def _prepare(
        self,
        tenant: str,
        entity: str,
        agg_id: str,
        row: Mapping[str, Any] | None,
        expected: int | None,
    ) -> tuple[list[str], list[str | bytes | int]]:
        _check_name("tenant", tenant)
        _check_name("entity", entity)
        _check_name("agg_id", agg_id)
        layout = self.layouts.get(entity)
        if layout is None and self.layouts:
            raise InvalidRow("entity", entity, "unknown entity")
        if expected is not None and (
            isinstance(expected, bool) or not isinstance(expected, int) or expected < 0
        ):
            raise InvalidRow("expected_version", expected, "must be an int >= 0")
        entries = b""
        row_json = ""
        if row is not None:
            if not isinstance(row, Mapping):
                raise InvalidRow("row", row, "must be an object")
            vals = dict(row)
            if layout is not None:
                layout.spec.check_row(vals)
            for col, v in vals.items():
                if not isinstance(col, str):
                    why: str | None = "column names are strings"
                elif (why := unstorable(col)) is not None:
                    why = f"column name {why}"
                else:
                    why = check_scalar(v)
                if why is not None:
                    raise InvalidRow(f"row.{printable(col)}", v, why)
            row_json = json.dumps(vals, separators=(",", ":"), ensure_ascii=False)
            if layout is not None:
                entries = layout.entries(tenant, agg_id, vals)
        p = partition_of(tenant, entity)
        keys = [
            self.keys.row(tenant, entity, agg_id),
            self.keys.table(tenant, entity),
            self.keys.event_stream(p),
            self.extra.index_counts(tenant, entity),
            self.extra.event_seq(p),
        ]
        args: list[str | bytes | int] = [
            "delete" if row is None else "upsert",
            "" if expected is None else str(expected),
            tenant,
            entity,
            agg_id,
            row_json,
            self.settings.events_maxlen,
            entries,
        ]
        return keys, args

    @staticmethod
    def _outcome(agg_id: str, expected: int | None, res: Any) -> int:
        status, version = res[0], int(res[1])
        if status == b"conflict":
            raise ConflictError(agg_id, expected if expected is not None else -1, version)
        return version
