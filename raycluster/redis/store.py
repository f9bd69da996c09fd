"""`RedisStore`: snapshots and keyset refills read from Redis, atomically with writers.

Every read is one Lua script (`scripts.READ`) that returns candidate rows
together with the last id of the partition stream: the rows reflect exactly
the writes up to that id. Filtering and ordering happen here, in Python, with
the core's own `compile_predicate` and `key_fn`, so the store and the engine
can never disagree about what matches or in which order.

Which rows are candidates is planned from the indexes (`_index`):

* **sets** — a top-level `eq`/`in` term whose values hold few rows: read
  only the rows with those values, by one range per value of the column's
  index (its sort index, else its filter index), or from the value sets of
  earlier versions when those cover every live row instead;
* **walk** — read rows in the order of the first sort key (or of the id)
  from its sort index, `k` at a time. Rows whose first-key value lies
  strictly before the last one read are complete, so once `limit` matches are
  among them the answer is exact; otherwise read again (one atomic read,
  larger `k`, four times more each time) until it is, or the index is exhausted;
* **all** — every row of the (tenant, entity).

An index that does not cover every live row (e.g. a column made sortable
after rows were written) is detected inside the read, which then falls back
to `all`: a plan can be slow, never wrong.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from raycluster.cluster.keys import check_key_name, row_prefix
from raycluster.cluster.routing import partition_of
from raycluster.errors import InvalidQuery
from raycluster.livequery.filter import compile_predicate, indexable_terms
from raycluster.livequery.models import (
    Cursor,
    EntitySpec,
    LiveQuery,
    Row,
    Snapshot,
    check_read,
    trusted,
)
from raycluster.livequery.order import cursor_key, cursor_of, key_fn

from ._client import Client, ClientComponent
from ._index import (
    FILTER,
    IDS,
    LEX_NULL,
    LEXICAL,
    NUMERIC,
    canon,
    count_field,
    eq_ranges,
    lex_encode,
    score_text,
)
from ._rows import decode_row
from .errors import translate_errors
from .scripts import READ

__all__ = ("RedisStore",)

_Table = dict[str, tuple[int, dict[str, Any]]]
log = logging.getLogger(__name__)
_GROWTH = 4  # a walk that came up short reads this many times more rows next time
_SMALL_SET = 256  # a value set this small is always read directly


@dataclass(slots=True)
class _Plan:
    mode: str  # "all" | "range" | "sets" | "walk"
    field: str = ""  # sets: the count field
    sets: tuple[str, ...] = ()  # sets: value-set keys
    bounds: tuple[bytes, ...] = ()  # range: (min, max) pairs
    kind: str = ""  # walk: NUMERIC | LEXICAL | IDS; range: NUMERIC | LEXICAL
    zkey: str = ""
    first_k: int = 0


@dataclass
class _TermSizes:
    """How many rows each index of one `eq`/`in` term's column holds."""

    numeric: int  # its numeric sort index
    lexical: int  # its lexical sort index
    filter: int  # its filter index
    value_sets: int  # rows in its value sets (rows of an earlier layout)


@dataclass
class _IndexSizes:
    """What a plan is chosen from: live rows, and the size of each index it could use.

    An index whose size equals `rows` covers every live row (nulls included).
    """

    rows: int
    terms: list[_TermSizes]
    sort_numeric: int = 0  # the first sort key's numeric / lexical index
    sort_lexical: int = 0


class RedisStore(ClientComponent):
    """The row store over Redis: implements the `Snapshotter` and `Refiller` ports.

    `entities`, when given, are checked against queries (`InvalidQuery`);
    reads work without them. `sort_index`/`value_index` switch the index
    plans off (for measuring the plain scan).
    """

    client_name = "raycluster-store"

    def __init__(
        self,
        client: Client,
        *,
        entities: Iterable[EntitySpec] = (),
        sort_index: bool = True,
        value_index: bool = True,
        **kw: Any,
    ) -> None:
        super().__init__(client, **kw)
        self.specs = {e.name: e for e in entities}
        self.sort_index = sort_index
        self.value_index = value_index
        # Reads per plan: "walk+" counts re-reads, "sets" both index ranges and value sets.
        self.plans: Counter[str] = Counter()
        self._script = client.register_script(READ)

    # -- ports -------------------------------------------------------------------

    async def snapshot(self, tenant: str, query: LiveQuery, limit: int) -> Snapshot:
        """The first `limit` matches strictly after `query.cursor`, in total order,
        with the stream position they reflect (atomic with respect to writers)."""
        check_read(tenant, query, None, limit)
        return await self.read(tenant, query, query.cursor, limit)

    async def refill(
        self, tenant: str, query: LiveQuery, after: Cursor | None, limit: int
    ) -> Snapshot:
        """The first `limit` matches strictly after `after` (None: `query.cursor`)."""
        check_read(tenant, query, after, limit)
        return await self.read(tenant, query, after if after is not None else query.cursor, limit)

    async def read(
        self, tenant: str, query: LiveQuery, after: Cursor | None, limit: int
    ) -> Snapshot:
        """Keyset read: the first `limit` matches strictly after `after`, in total order.

        Bad arguments raise `InvalidQuery` naming them before anything is read
        (`check_read`; a tenant or entity holding ':' too), as does a query
        that does not fit a declared entity.
        """
        check_read(tenant, query, after, limit)
        check_key_name("tenant", tenant, InvalidQuery)
        check_key_name("entity", query.entity, InvalidQuery)
        spec = self.specs.get(query.entity)
        if spec is not None:
            spec.check_query(query)
        with translate_errors(f"read {tenant}/{query.entity}"):
            return await self._read(tenant, query, after, limit)

    # -- whole tables --------------------------------------------------------------

    async def rows_at(self, tenant: str, entity: str) -> tuple[_Table, str]:
        """Every live row (id → (version, row)) and the stream position they reflect.

        A bad tenant or entity raises `InvalidQuery` naming it.
        """
        check_key_name("tenant", tenant, InvalidQuery)
        check_key_name("entity", entity, InvalidQuery)
        with translate_errors(f"rows {tenant}/{entity}"):
            mark, _, _, raw = await self._call(tenant, entity, ["all"])
        return {i: (v, r) for i, v, r in _decode(raw)}, mark

    async def rows(self, tenant: str, entity: str) -> _Table:
        """Every live row of one (tenant, entity): id → (version, row)."""
        return (await self.rows_at(tenant, entity))[0]

    # -- internals -------------------------------------------------------------------

    async def _call(
        self, tenant: str, entity: str, args: list[Any], zkey: str = ""
    ) -> tuple[str, str, int, list[Any]]:
        keys = [
            self.keys.table(tenant, entity),
            self.keys.event_stream(partition_of(tenant, entity)),
            self.keys.index_counts(tenant, entity),
            zkey or self.keys.table(tenant, entity),
        ]
        res = await self._script(
            keys=keys, args=[args[0], row_prefix(self.keys, tenant, entity), *args[1:]]
        )
        return res[0].decode(), res[1].decode(), int(res[2]), res[3:]

    async def _read(
        self, tenant: str, query: LiveQuery, after: Cursor | None, limit: int
    ) -> Snapshot:
        entity, sort = query.entity, list(query.sort)
        pred = compile_predicate(query.where)
        keyfn = key_fn(sort)
        floor = cursor_key(after, sort) if after is not None else ()
        source = self.keys.event_stream(partition_of(tenant, entity))
        plan = await self._plan(tenant, query, after, limit)
        k = plan.first_k
        while True:
            if plan.mode == "walk":
                self.plans["walk" if k == plan.first_k else "walk+"] += 1
                start = _walk_start(plan.kind, sort, after)
                args = ["walk", plan.kind, "desc" if sort and sort[0].desc else "asc", start, k]
                mark, status, nread, raw = await self._call(tenant, entity, args, plan.zkey)
            elif plan.mode == "range":
                self.plans["sets"] += 1
                mark, status, nread, raw = await self._call(
                    tenant, entity, ["range", plan.kind, *plan.bounds], plan.zkey
                )
            elif plan.mode == "sets":
                self.plans["sets"] += 1
                mark, status, nread, raw = await self._call(
                    tenant, entity, ["sets", plan.field, *plan.sets]
                )
            else:
                self.plans["all"] += 1
                mark, status, nread, raw = await self._call(tenant, entity, ["all"])
            if status != "ok":
                plan = _Plan("all")  # an index does not cover every row: scan
                continue
            found = []
            last_row: dict[str, Any] | None = None
            last_id = ""
            for agg_id, version, row in _decode(raw):
                last_row, last_id = row, agg_id
                if pred(row):
                    key = keyfn(row, agg_id)
                    if key > floor:
                        found.append((key, agg_id, version, row))
            if plan.mode == "walk" and nread >= k and plan.kind != IDS and last_row is not None:
                # Not exhausted: only rows strictly before the last first-key value read
                # are known to be all there is of their value.
                first = _granule_fn(plan.kind, sort[0].column)
                edge = first(last_row, last_id)
                if sort[0].desc:
                    found = [f for f in found if first(f[3], f[1]) > edge]
                else:
                    found = [f for f in found if first(f[3], f[1]) < edge]
                if len(found) < limit:
                    k *= _GROWTH
                    continue
            elif plan.mode == "walk" and nread >= k and len(found) < limit:
                k *= _GROWTH  # the id walk: every row read is final, but too few matched
                continue
            best = heapq.nsmallest(limit, found) if len(found) > limit else sorted(found)
            rows = [
                trusted(
                    Row,
                    {
                        "agg_id": agg_id,
                        "version": version,
                        "cursor": cursor_of(row, sort, agg_id),
                        "vals": row,
                    },
                )
                for _, agg_id, version, row in best
            ]
            return Snapshot(rows=rows, watermark=mark, source=source)

    async def _plan(self, tenant: str, query: LiveQuery, after: Cursor | None, limit: int) -> _Plan:
        """Pick the cheapest plan from index sizes (non-atomic round trips: a stale
        estimate costs speed only, the read itself re-checks coverage)."""
        entity = query.entity
        terms = indexable_terms(query.where) if self.value_index else []
        sizes = await self._index_sizes(tenant, entity, terms, query.sort)
        if sizes.rows == 0:
            return _Plan("all")
        best = await self._cheapest_term(tenant, entity, terms, sizes)
        walk = self._walk(tenant, query, after, sizes)
        if best is not None:
            # A walk expects to read limit / selectivity rows (the term's values
            # spread evenly along the sort order); the sets read exactly `size`.
            first_k = math.ceil(limit * sizes.rows / max(best[0], 1) * 1.25) + 16
        elif query.where:
            first_k = 2 * limit + 16
        else:
            first_k = limit + 16
        if best is not None and (walk is None or best[0] <= max(first_k, _SMALL_SET)):
            return best[1]
        if walk is None:
            return _Plan("all")
        kind, zkey = walk
        return _Plan("walk", kind=kind, zkey=zkey, first_k=min(first_k, sizes.rows + 1))

    async def _index_sizes(
        self, tenant: str, entity: str, terms: list[tuple[str, Any]], sort: list[Any]
    ) -> _IndexSizes:
        """One pipelined round trip: live rows, each term column's indexes, the sort's."""
        x = self.keys
        counts = x.index_counts(tenant, entity)
        sorted_by = sort[0].column if sort and self.sort_index else None
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zcard(x.table(tenant, entity))
            for col, _ in terms:
                pipe.zcard(x.sort_num(tenant, entity, col))
                pipe.zcard(x.sort_lex(tenant, entity, col))
                pipe.zcard(x.filter_index(tenant, entity, col))
                pipe.hget(counts, count_field(col))
            if sorted_by is not None:
                pipe.zcard(x.sort_num(tenant, entity, sorted_by))
                pipe.zcard(x.sort_lex(tenant, entity, sorted_by))
            res = iter(await pipe.execute())
        sizes = _IndexSizes(int(next(res)), [])
        for _ in terms:
            numeric, lexical, filt, sets = (int(next(res) or 0) for _ in range(4))
            sizes.terms.append(_TermSizes(numeric, lexical, filt, sets))
        if sorted_by is not None:
            sizes.sort_numeric, sizes.sort_lexical = int(next(res)), int(next(res))
        return sizes

    async def _cheapest_term(
        self, tenant: str, entity: str, terms: list[tuple[str, Any]], sizes: _IndexSizes
    ) -> tuple[int, _Plan] | None:
        """The `eq`/`in` term whose index reads the fewest rows, and how many (one
        pipelined round trip of counts); None if no term's column is covered."""
        candidates = [
            c
            for (col, values), card in zip(terms, sizes.terms, strict=True)
            if (c := self._term_plan(tenant, entity, col, values, card, sizes.rows)) is not None
        ]
        if not candidates:
            return None
        async with self._client.pipeline(transaction=False) as pipe:
            for c in candidates:
                if c.mode == "sets":
                    for key in c.sets:
                        pipe.scard(key)
                else:
                    count = pipe.zcount if c.kind == NUMERIC else pipe.zlexcount
                    for lo, hi in zip(c.bounds[0::2], c.bounds[1::2], strict=True):
                        count(c.zkey, lo, hi)  # type: ignore[arg-type]
            counted = iter(await pipe.execute())
        best: tuple[int, _Plan] | None = None
        for c in candidates:
            n = len(c.sets) if c.mode == "sets" else len(c.bounds) // 2
            size = sum(int(next(counted)) for _ in range(n))
            if best is None or size < best[0]:
                best = (size, c)
        return best

    def _walk(
        self, tenant: str, query: LiveQuery, after: Cursor | None, sizes: _IndexSizes
    ) -> tuple[str, str] | None:
        """The index a walk in sort order can follow (kind, key); None if none covers."""
        entity, sort = query.entity, query.sort
        if not sort:
            return IDS, self.keys.table(tenant, entity)
        if not self.sort_index:
            return None
        col = sort[0].column
        if sizes.sort_numeric == sizes.rows:
            walk = NUMERIC, self.keys.sort_num(tenant, entity, col)
        elif sizes.sort_lexical == sizes.rows:
            walk = LEXICAL, self.keys.sort_lex(tenant, entity, col)
        else:
            return None
        spec = self.specs.get(entity)
        declared = spec is not None and col in spec.columns
        if after is not None and not _start_ok(walk[0], after, sort[0].desc, declared=declared):
            return None
        return walk

    def _term_plan(
        self,
        tenant: str,
        entity: str,
        col: str,
        values: frozenset[Any],
        sizes: _TermSizes,
        total: int,
    ) -> _Plan | None:
        """How to read the rows of one `eq`/`in` term from its column's indexes; None if
        no index covers every live row."""
        x = self.keys
        for how, size, key in (
            (NUMERIC, sizes.numeric, x.sort_num(tenant, entity, col)),
            (LEXICAL, sizes.lexical, x.sort_lex(tenant, entity, col)),
            (FILTER, sizes.filter, x.filter_index(tenant, entity, col)),
        ):
            if size == total:
                bounds = tuple(b for r in eq_ranges(how, values) for b in r)
                kind = NUMERIC if how == NUMERIC else LEXICAL  # a filter index is lexical
                return _Plan("range", kind=kind, zkey=key, bounds=bounds)
        if sizes.value_sets == total:
            vx = self.keys.value_index
            sets = tuple(vx(tenant, entity, col, canon(v)) for v in values)
            return _Plan("sets", field=count_field(col), sets=sets)
        return None


def _decode(raw: list[Any]) -> Iterable[tuple[str, int, dict[str, Any]]]:
    for j in range(0, len(raw), 3):
        row = decode_row(raw[j + 2])
        if row is None:  # another program stored what no reader can order: skipped
            log.warning("store: skipped malformed row %r", raw[j])
            continue
        yield raw[j].decode(), int(raw[j + 1]), row


def _start_ok(kind: str, after: Cursor, desc: bool, *, declared: bool) -> bool:
    """Whether a walk may start at the cursor's first value (else read every row).

    It may when no row after the cursor lies before that value in the index.
    A sort index holds one type class and nulls: a lexical one strings, a
    numeric one either booleans or numbers. So a cursor value of the index's
    class starts it; one of another class sits outside the index in the total
    order (false < true < numbers < strings < null) and is read in full. A
    store that does not know the column's type cannot tell booleans from
    numbers in a numeric index; a number still starts an ascending walk (every
    boolean is before it) and a boolean a descending one (every number is).
    """
    v = after.values[0]
    if kind == IDS or v is None:
        return True
    if kind == LEXICAL:
        return isinstance(v, str)
    if isinstance(v, str):
        return False
    if declared:
        return True  # the query's check made the cursor fit the column's type
    return desc if isinstance(v, bool) else not desc


def _walk_start(kind: str, sort: list[Any], after: Cursor | None) -> str | bytes:
    """The inclusive bound a walk starts from: the cursor's first-key value."""
    desc = bool(sort) and sort[0].desc
    if kind == IDS:
        return b"-" if after is None else b"(" + str(after.values[-1]).encode()
    v = None if after is None else after.values[0]
    if kind == NUMERIC:
        if after is None:
            return "+inf" if desc else "-inf"
        return "+inf" if v is None else score_text(v)
    if after is None or (desc and v is None):
        return b"+" if desc else b"-"
    if v is None:
        return b"[" + LEX_NULL
    enc = lex_encode(str(v))
    return b"[" + enc + b"\xff" if desc else b"[" + enc


def _granule_fn(kind: str, column: str) -> Callable[[dict[str, Any], str], Any]:
    """A row's position in a sort index at first-key granularity (what ties share)."""
    if kind == NUMERIC:
        inf = math.inf
        return lambda row, agg_id: inf if (v := row.get(column)) is None else float(v)
    return lambda row, agg_id: LEX_NULL if (v := row.get(column)) is None else lex_encode(v)
