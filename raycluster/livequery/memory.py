"""`MemoryStore`: the embedded row store, and the fake for unit tests.

It implements `Snapshotter`, `Refiller` and `Feed` in-process with the same
guarantees the Redis store gives: versions increase by one per write (a
delete keeps the row's version so a later re-insert continues from it), each
write gets the next stream position, and a snapshot reflects exactly the
writes up to its watermark. Per-column value indexes answer a query with a
top-level `eq`/`in` without scanning every row.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from raycluster.errors import ConflictError, InvalidRow

from .filter import compile_predicate, indexable_terms
from .models import (
    Change,
    Cursor,
    EntitySpec,
    LiveQuery,
    Row,
    Snapshot,
    check_against,
    check_expected,
    check_free_row,
    check_name,
    check_read,
    trusted,
)
from .order import cursor_key, cursor_of, key_fn
from .ports import FeedBatch, pos_key

__all__ = ("MemoryFeed", "MemoryStore")


class _Table:
    """The rows of one (tenant, entity), their tombstones and column indexes."""

    __slots__ = ("index", "rows", "source", "tombs")

    def __init__(self, source: str) -> None:
        self.source = source
        self.rows: dict[str, tuple[int, dict[str, Any]]] = {}
        self.tombs: dict[str, int] = {}  # deleted id → the version of its delete
        self.index: dict[str, dict[Any, set[str]]] = {}  # column → value → ids


_BATCH = 1024  # changes per batch: the engine dispatches a batch without yielding


def _index_row(index: dict[str, dict[Any, set[str]]], agg_id: str, row: dict[str, Any]) -> None:
    for col, buckets in index.items():
        v = row.get(col)
        try:
            ids = buckets.get(v)
            if ids is None:
                ids = buckets[v] = set()
        except TypeError:  # unhashable values are not indexed; the filter checks them
            continue
        ids.add(agg_id)


def _unindex(
    index: dict[str, dict[Any, set[str]]], agg_id: str, row: dict[str, Any] | None
) -> None:
    if row is None:
        return
    for col, buckets in index.items():
        try:
            ids = buckets.get(row.get(col))
        except TypeError:
            continue
        if ids is not None:
            ids.discard(agg_id)
            if not ids:
                del buckets[row.get(col)]


class MemoryStore:
    """An in-memory row store that publishes every write to its feed.

    `entities` (optional) declares the schemas rows are checked against.
    Readers of `batches()` each get every write after they started reading.
    `partition(tenant, entity)`, when given, names the source each (tenant,
    entity) is carried on (as a partition stream is), so a `feed()` can follow
    only some of them, like a shard that owns some partitions.
    """

    def __init__(
        self,
        entities: Iterable[EntitySpec] = (),
        *,
        source: str = "memory",
        partition: Callable[[str, str], str] | None = None,
    ) -> None:
        self.source = source
        self.specs = {e.name: e for e in entities}
        self._tables: dict[tuple[str, str], _Table] = {}
        self._seq = 0
        self._readers: list[MemoryFeed] = []
        self._partition = partition
        self._known_sources: set[str] = {source}

    # -- writes ----------------------------------------------------------------

    def upsert(
        self,
        tenant: str,
        entity: str,
        agg_id: str,
        row: Mapping[str, Any],
        *,
        expected_version: int | None = None,
    ) -> int:
        """Store `row` as the new state of `agg_id`; return its new version.

        Checked as `Writer.upsert` checks (`InvalidRow` naming the field;
        nothing written): names are non-empty strings, `row` an object of
        scalars fitting the entity's spec (if declared), `expected_version`
        None or an int >= 0 (else `ConflictError` when it differs).
        """
        self._check_names(tenant, entity, agg_id)
        check_expected(expected_version)
        spec = self.specs.get(entity)
        if spec is not None:
            if not isinstance(row, Mapping):
                raise InvalidRow("row", row, "must be an object (a delete is `delete`)")
            vals = dict(row)
            spec.check_row(vals)
        else:
            vals = check_free_row(row)
        return self._write(tenant, entity, agg_id, vals, expected_version)

    def delete(
        self, tenant: str, entity: str, agg_id: str, *, expected_version: int | None = None
    ) -> int:
        """Delete `agg_id`; return the version the delete was written at.

        Deleting a row that does not exist writes nothing and returns its
        current version (0 if it never existed). Arguments are checked as in
        `upsert`.
        """
        self._check_names(tenant, entity, agg_id)
        check_expected(expected_version)
        t = self._tables.get((tenant, entity))
        if t is None or agg_id not in t.rows:
            current = t.tombs.get(agg_id, 0) if t is not None else 0
            if expected_version is not None and expected_version != current:
                raise ConflictError(agg_id, expected_version, current)
            return current
        return self._write(tenant, entity, agg_id, None, expected_version)

    def _check_names(self, tenant: Any, entity: Any, agg_id: Any = "-") -> None:
        check_name("tenant", tenant, InvalidRow)
        check_name("entity", entity, InvalidRow)
        check_name("agg_id", agg_id, InvalidRow)
        if self.specs and entity not in self.specs:
            raise InvalidRow("entity", entity, "unknown entity")

    def _table(self, tenant: str, entity: str) -> _Table:
        t = self._tables.get((tenant, entity))
        if t is None:
            source = self._partition(tenant, entity) if self._partition else self.source
            self._known_sources.add(source)
            t = self._tables[(tenant, entity)] = _Table(source)
        return t

    def _write(
        self,
        tenant: str,
        entity: str,
        agg_id: str,
        row: dict[str, Any] | None,
        expected: int | None,
    ) -> int:
        t = self._tables.get((tenant, entity)) or self._table(tenant, entity)
        rows = t.rows
        old = rows.get(agg_id)
        current = old[0] if old is not None else t.tombs.get(agg_id, 0)
        if expected is not None and expected != current:
            raise ConflictError(agg_id, expected, current)
        version = current + 1
        index = t.index
        if index and old is not None:
            _unindex(index, agg_id, old[1])
        if row is None:
            del rows[agg_id]
            t.tombs[agg_id] = version  # a re-insert continues from this version
        else:
            rows[agg_id] = (version, row)
            if index:
                _index_row(index, agg_id, row)
        self._seq += 1
        change = trusted(
            Change,
            {
                "tenant": tenant,
                "entity": entity,
                "agg_id": agg_id,
                "version": version,
                "op": "upsert" if row is not None else "delete",
                "row": row,
                "stream_id": f"0-{self._seq}",
                "at": int(time.time() * 1000),
                "source": t.source,
            },
        )
        for reader in self._readers:
            reader._offer(change)
        return version

    def get(self, tenant: str, entity: str, agg_id: str) -> tuple[int, dict[str, Any]] | None:
        """The (version, row) of `agg_id`, or None (names checked as in `upsert`)."""
        self._check_names(tenant, entity, agg_id)
        t = self._tables.get((tenant, entity))
        return t.rows.get(agg_id) if t is not None else None

    def rows(self, tenant: str, entity: str) -> dict[str, tuple[int, dict[str, Any]]]:
        """Every row of one (tenant, entity): id → (version, row). A copy."""
        self._check_names(tenant, entity)
        t = self._tables.get((tenant, entity))
        return dict(t.rows) if t is not None else {}

    # -- Snapshotter / Refiller --------------------------------------------------

    async def snapshot(self, tenant: str, query: LiveQuery, limit: int) -> Snapshot:
        """The first `limit` matches strictly after `query.cursor`."""
        check_read(tenant, query, None, limit)
        return self.read(tenant, query, query.cursor, limit)

    async def refill(
        self, tenant: str, query: LiveQuery, after: Cursor | None, limit: int
    ) -> Snapshot:
        """The first `limit` matches strictly after `after` (or `query.cursor`)."""
        check_read(tenant, query, after, limit)
        return self.read(tenant, query, after if after is not None else query.cursor, limit)

    def read(self, tenant: str, query: LiveQuery, after: Cursor | None, limit: int) -> Snapshot:
        """Synchronous keyset read: matches strictly after `after`, in total order.

        Bad arguments raise `InvalidQuery` naming them (`check_read`), as does
        a query that does not fit the declared entities.
        """
        check_read(tenant, query, after, limit)
        check_against(self.specs, query)
        t = self._tables.get((tenant, query.entity))
        table = t.rows if t is not None else {}
        pred = compile_predicate(query.where)
        keyfn = key_fn(query.sort)
        floor = cursor_key(after, query.sort) if after is not None else ()
        ids: Iterable[str] = table.keys()
        for col, values in indexable_terms(query.where):
            buckets = self._column_index(tenant, query.entity, col)
            found: set[str] = set()
            for v in values:
                found |= buckets.get(v, set())
            if not isinstance(ids, set) or len(found) < len(ids):
                ids = found  # the most selective term; the predicate checks the rest
        keyed = []
        for agg_id in ids:
            version, row = table[agg_id]
            if pred(row):
                k = keyfn(row, agg_id)
                if k > floor:
                    keyed.append((k, agg_id, version, row))
        best = heapq.nsmallest(limit, keyed)
        rows = [
            trusted(
                Row,
                {
                    "agg_id": agg_id,
                    "version": version,
                    "cursor": cursor_of(row, query.sort, agg_id),
                    "vals": row,
                },
            )
            for _, agg_id, version, row in best
        ]
        source = t.source if t is not None else self.source_of(tenant, query.entity)
        return Snapshot(rows=rows, watermark=f"0-{self._seq}", source=source)

    def _column_index(self, tenant: str, entity: str, col: str) -> dict[Any, set[str]]:
        # Built on first use, so writes only maintain columns someone filters on.
        t = self._table(tenant, entity)
        buckets = t.index.get(col)
        if buckets is None:
            buckets = t.index[col] = {}
            for agg_id, (_, row) in t.rows.items():
                _index_row({col: buckets}, agg_id, row)
        return buckets

    # -- Feed ------------------------------------------------------------------

    def source_of(self, tenant: str, entity: str) -> str:
        """The source (stream) that carries the changes of one (tenant, entity)."""
        return self._partition(tenant, entity) if self._partition else self.source

    def feed(self, sources: Iterable[str] | None = None) -> MemoryFeed:
        """A feed of the changes of `sources` only (None: every source)."""
        return MemoryFeed(self, sources)

    def batches(self) -> AsyncIterator[FeedBatch]:
        """Every write after this call, in order, as batches (all sources)."""
        return MemoryFeed(self, None).batches()

    async def head(self) -> dict[str, str]:
        """Where every source stands now."""
        return await MemoryFeed(self, None).head()


class MemoryFeed:
    """The `Feed` of a `MemoryStore`, optionally limited to some sources.

    Every write advances every source's position (positions are one global
    sequence), so a reader learns that a quiet source is caught up.
    """

    def __init__(self, store: MemoryStore, sources: Iterable[str] | None) -> None:
        self._store = store
        self._sources: set[str] | None = None if sources is None else set(sources)
        self._queue: deque[Change] = deque()
        self._ready = asyncio.Event()

    def set_sources(self, sources: Iterable[str]) -> None:
        """Follow exactly `sources` from now on."""
        self._sources = set(sources)
        self._ready.set()

    def _offer(self, change: Change) -> None:
        if self._sources is None or change.source in self._sources:
            self._queue.append(change)
        self._ready.set()

    def _positions(self, seq: int) -> dict[str, str]:
        store = self._store
        followed = store._known_sources if self._sources is None else self._sources
        return dict.fromkeys(followed, f"0-{seq}")

    async def batches(self) -> AsyncIterator[FeedBatch]:
        """Changes of the followed sources after this call, in order, as batches."""
        store, queue = self._store, self._queue
        store._readers.append(self)
        try:
            yield FeedBatch([], self._positions(store._seq))
            while True:
                await self._ready.wait()
                self._ready.clear()
                while True:
                    n = min(len(queue), _BATCH)
                    changes = [queue.popleft() for _ in range(n)]
                    if queue:
                        yield FeedBatch(changes, self._positions(pos_key(changes[-1].stream_id)[1]))
                        continue
                    yield FeedBatch(changes, self._positions(store._seq))
                    break
        finally:
            store._readers.remove(self)

    async def head(self) -> dict[str, str]:
        """The current position of every followed source."""
        return self._positions(self._store._seq)
