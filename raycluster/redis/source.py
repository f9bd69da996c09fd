"""`SourceWriter`: the write path of a source (a Postgres publication, …), idempotent.

A source turns someone else's change log into rows (docs/postgres.md). Its writes
go through the same per-row step as `Writer`'s (row hash, indexes, event on
the partition stream: shards see them unchanged), with what a source needs:

* **Positions.** Each write carries its position in the source's order
  (fixed-width lowercase hex). Per partition, the last applied position is
  kept beside the partition's stream (`Keys.source_position`), updated in
  the same atomic script call as the rows (`scripts.SOURCE_APPLY`), so a
  write at or before it is skipped: a source that resumes from an earlier
  point of its log re-applies nothing, on one Redis or on Redis Cluster (one
  partition is one slot).
* **No-op upserts write nothing.** A row written as it already is gets no
  new version and no event, so a window never moves for it.
* **Copies and sweeps.** A copy (generation *g*) marks every row it writes;
  `sweep` then deletes the live rows it did not write. Together they make
  Redis equal to a snapshot of the source, whatever it held before.
* **Bookkeeping.** The tenants a source wrote per entity (so a TRUNCATE can
  empty every tenant), the owner tenant of each id (for sources whose
  deletes name only the id), and the source's state hash.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis.exceptions as rx

from raycluster.cluster.routing import partition_of
from raycluster.errors import InvalidRow

from ._client import ClientComponent, ClusterClient
from .errors import RedisCommandError, translate_errors
from .scripts import SOURCE_APPLY, SOURCE_SWEEP
from .writer import Writer, _row_json

__all__ = ("ApplyStats", "SourceStatus", "SourceWrite", "SourceWriter")

_SWEEP_IDS = 1000  # live ids one sweep call looks at
_SHA = {s: hashlib.sha1(s.encode()).hexdigest() for s in (SOURCE_APPLY, SOURCE_SWEEP)}
_IN_FLIGHT = 8  # script calls awaiting their reply on one pipelined connection


class SourceWrite(NamedTuple):
    """One write of a source: the row (None: delete) of (tenant, entity, id) at `pos`."""

    pos: str
    tenant: str
    entity: str
    agg_id: str
    row: Mapping[str, Any] | None


@dataclass(slots=True)
class ApplyStats:
    """What a batch of source writes did (summed over its script calls)."""

    applied: int = 0
    """Writes that changed a row (each wrote one event)."""
    skipped: int = 0
    """Writes at or before their partition's watermark: applied before."""
    unchanged: int = 0
    """Writes that found the row as they would leave it (nothing written)."""
    calls: int = 0

    def add(self, other: ApplyStats) -> None:
        """Add `other`'s counts to these."""
        self.applied += other.applied
        self.skipped += other.skipped
        self.unchanged += other.unchanged
        self.calls += other.calls


class _Call(NamedTuple):
    partition: int
    build: Callable[[], list[Any]]  # the EVALSHA arguments after the sha (built when sent)


class SourceWriter(Writer):
    """Idempotent, positioned writes of one source (`source` names it, e.g. a slot).

    Every row is validated against its entity as `Writer` does (`InvalidRow`
    naming `writes.{i}.…`; nothing of the batch written). A batch is split
    per partition into atomic script calls of at most `atomic_writes`
    writes, in position order; the calls of one partition run in order, and
    partitions in parallel. A failure part-way raises (`RedisUnavailable`,
    `RedisCommandError`): the calls acknowledged before it are applied, and
    applying the whole batch again is safe (their writes are skipped).
    """

    client_name = "raycluster-source"

    def __init__(self, client: Any, *, source: str, **kw: Any) -> None:
        super().__init__(client, **kw)
        if not source or "{" in source or "}" in source or ":" in source:
            raise ValueError(f"source name {source!r} must be non-empty, without braces or ':'")
        self.source = source
        self._loaded: set[str] = set()  # scripts loaded since the last NOSCRIPT

    # -- positioned writes -------------------------------------------------------------

    async def apply(self, writes: Sequence[SourceWrite], *, atomic_writes: int) -> ApplyStats:
        """Apply `writes` (in position order), each at most once; what they did."""
        calls = self._calls(writes, "s", "", atomic_writes)
        return (await self._run(calls))[0]

    async def copy(
        self, generation: int, writes: Sequence[SourceWrite], *, atomic_writes: int
    ) -> ApplyStats:
        """Upsert rows of a copy: unpositioned, each marked with `generation` (see `sweep`)."""
        calls = self._calls(writes, "c", str(generation), atomic_writes)
        return (await self._run(calls))[0]

    async def truncate(self, pos: str, entity: str, tenants: Iterable[str], *, chunk: int) -> int:
        """Delete every live row of `entity` for each of `tenants`, at position `pos`
        (once); how many rows were deleted.

        Runs as calls of at most `chunk` deletes each (a client may see the
        entity empty out in steps). Per partition the position is recorded
        once all of its tenants are empty, so a truncate cut short by a crash
        is done again whole (deleting only what is left) and a finished one
        is skipped.
        """
        per_p: dict[int, list[str]] = defaultdict(list)
        for t in sorted(set(tenants)):
            per_p[partition_of(t, entity)].append(t)
        total = 0
        for p, ts in per_p.items():
            for j, tenant in enumerate(ts):
                _, fixed, prefix = self._target(tenant, entity)
                record = "1" if j == len(ts) - 1 else ""
                args = [
                    6, self.keys.source_position(self.source, p), fixed[1], fixed[3],
                    fixed[0], fixed[2], prefix,
                    "s", "", self.settings.events_maxlen, 1,
                    tenant, entity, prefix, 1, pos, "t", "", str(chunk), record,
                ]  # fmt: skip
                while True:
                    stats, more = await self._run([_Call(p, functools.partial(list, args))])
                    total += stats.applied
                    if not more:
                        break
        return total

    async def sweep(self, generation: int, tenant: str, entity: str) -> int:
        """Delete the live rows of (tenant, entity) the copy `generation` did not write;
        how many were deleted (each with its event)."""
        _, fixed, prefix = self._target(tenant, entity)
        start, deleted = "-", 0
        while True:
            n, looked, last = await self._evalsha(
                f"sweep {tenant}/{entity}", SOURCE_SWEEP, 4, *fixed,
                tenant, entity, self.settings.events_maxlen, prefix, str(generation),
                start, _SWEEP_IDS,
            )  # fmt: skip
            deleted += int(n)
            if int(looked) < _SWEEP_IDS:
                return deleted
            start = "(" + (last.decode() if isinstance(last, bytes) else str(last))

    # -- watermarks, bookkeeping -------------------------------------------------------

    async def watermarks(self, partitions: Iterable[int]) -> dict[int, str]:
        """The last applied position of each of `partitions` ("" when none)."""
        ps = list(partitions)
        keys = [self.keys.source_position(self.source, p) for p in ps]
        with translate_errors("source watermarks"):
            vals: list[Any] = await asyncio.gather(*(self._client.get(k) for k in keys))
        return {p: (v.decode() if v else "") for p, v in zip(ps, vals, strict=True)}

    async def set_watermarks(self, partitions: Iterable[int], pos: str) -> None:
        """Set the watermark of each of `partitions` to `pos` (after a copy at `pos`)."""
        with translate_errors("source watermarks"):
            await asyncio.gather(
                *(self._client.set(self.keys.source_position(self.source, p), pos)
                  for p in partitions)
            )  # fmt: skip

    async def state(self) -> dict[str, str]:
        """The source's state hash (empty when it never ran here)."""
        with translate_errors("source state"):
            raw: Any = await self._client.hgetall(self.keys.source_state(self.source))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def set_state(self, fields: Mapping[str, str | int]) -> None:
        """Set fields of the source's state hash."""
        with translate_errors("source state"):
            mapping: dict[Any, Any] = dict(fields)
            await self._client.hset(self.keys.source_state(self.source), mapping=mapping)

    async def server_run_id(self) -> str | None:
        """The Redis server's run id (a new one after every restart); None on Redis
        Cluster (each node has its own)."""
        if isinstance(self._client, ClusterClient):
            return None
        with translate_errors("INFO server"):
            info: Any = await self._client.info("server")
        run_id = info.get("run_id")
        return str(run_id) if run_id else None

    async def add_tenants(self, entity: str, tenants: Iterable[str]) -> None:
        """Record that the source writes rows of `entity` for `tenants`."""
        ts = list(tenants)
        if ts:
            with translate_errors("source tenants"):
                await self._client.sadd(self.keys.source_tenants(self.source, entity), *ts)

    async def tenants(self, entity: str) -> list[str]:
        """Every tenant the source recorded for `entity` (sorted)."""
        with translate_errors("source tenants"):
            raw: Any = await self._client.smembers(self.keys.source_tenants(self.source, entity))
        return sorted(t.decode() for t in raw)

    async def owners(self, entity: str, ids: Sequence[str]) -> dict[str, str]:
        """The recorded tenant of each of `ids` that has one."""
        if not ids:
            return {}
        with translate_errors("source owners"):
            vals: Any = await self._client.hmget(self.keys.source_owners(self.source, entity), ids)
        return {i: v.decode() for i, v in zip(ids, vals, strict=True) if v is not None}

    async def set_owners(self, entity: str, owners: Mapping[str, str | None]) -> None:
        """Record each id's tenant (None: forget the id), in one atomic step."""
        key = self.keys.source_owners(self.source, entity)
        sets: dict[Any, Any] = {i: t for i, t in owners.items() if t is not None}
        gone = [i for i, t in owners.items() if t is None]
        if not sets and not gone:
            return
        with translate_errors("source owners"):
            async with self._client.pipeline(transaction=True) as pipe:
                if sets:
                    pipe.hset(key, mapping=sets)
                if gone:
                    pipe.hdel(key, *gone)
                await pipe.execute()

    async def clear_owners(self, entity: str) -> None:
        """Forget every id's tenant of `entity` (before a copy rebuilds them)."""
        with translate_errors("source owners"):
            await self._client.delete(self.keys.source_owners(self.source, entity))

    async def rows(self, keys: Sequence[tuple[str, str, str]]) -> list[dict[str, Any] | None]:
        """The stored row of each (tenant, entity, id) (None: not live)."""
        if not keys:
            return []
        with translate_errors("source rows"):
            vals = await asyncio.gather(
                *(self._client.hget(self.keys.row(t, e, i), "row") for t, e, i in keys)
            )
        return [json.loads(v) if v is not None else None for v in vals]

    # -- internals ---------------------------------------------------------------------

    def _calls(
        self, writes: Sequence[SourceWrite], mode: str, generation: str, atomic_writes: int
    ) -> list[_Call]:
        """The script calls of a batch: per partition, chunks of `atomic_writes` writes
        in position order, each grouped by (tenant, entity).

        Every write is checked here, before anything is sent (`InvalidRow`); a call's
        arguments are encoded when it is sent, so Redis runs one call while the next
        is encoded.
        """
        per_partition: dict[int, list[tuple[SourceWrite, dict[str, Any] | None]]]
        per_partition = defaultdict(list)
        layouts: dict[tuple[str, str], Any] = {}
        for i, w in enumerate(writes):
            target = (w.tenant, w.entity)
            if target not in layouts:
                layouts[target] = self._target(w.tenant, w.entity)[0]
            layout, row, agg_id = layouts[target], w.row, w.agg_id
            # The common case, checked inline (what `_check` would pass, for less).
            if (
                type(row) is dict and layout is not None and type(agg_id) is str
                and agg_id and agg_id.isascii() and layout.valid(row)
            ):  # fmt: skip
                vals: dict[str, Any] | None = row.copy()
            else:
                try:
                    vals = self._check(layout, agg_id, row, None, delete=row is None)
                except InvalidRow as e:
                    raise InvalidRow(f"writes.{i}.{e.field}", e.value, e.reason) from e
            per_partition[partition_of(w.tenant, w.entity)].append((w, vals))
        calls: list[_Call] = []
        for p, ws in per_partition.items():
            for start in range(0, len(ws), atomic_writes):
                part = ws[start : start + atomic_writes]
                calls.append(_Call(p, functools.partial(self._call, p, part, mode, generation)))
        return calls

    def _call(
        self,
        p: int,
        part: list[tuple[SourceWrite, dict[str, Any] | None]],
        mode: str,
        generation: str,
    ) -> list[Any]:
        """One script call's arguments (after the sha) for checked writes of partition `p`."""
        groups: dict[tuple[str, str], list[tuple[SourceWrite, dict[str, Any] | None]]]
        groups = defaultdict(list)
        for item in part:
            groups[(item[0].tenant, item[0].entity)].append(item)
        keys: list[str] = [self.keys.source_position(self.source, p), "", ""]
        argv: list[Any] = [mode, generation, self.settings.events_maxlen, len(groups)]
        for (tenant, entity), items in groups.items():
            layout, fixed, prefix = self._target(tenant, entity)
            keys[1], keys[2] = fixed[1], fixed[3]
            keys += (fixed[0], fixed[2])
            argv += (tenant, entity, prefix, len(items))
            live = [(w.agg_id, vals) for w, vals in items if vals is not None]
            blobs = iter(
                layout.entries_many(tenant, [a for a, _ in live], [v for _, v in live])[0]
                if layout is not None and live
                else [b""] * len(live)
            )
            for w, vals in items:
                keys.append(prefix + w.agg_id)
                if vals is None:
                    argv += (w.pos, "d", w.agg_id, "", b"")
                else:
                    argv += (w.pos, "u", w.agg_id, _row_json(vals), next(blobs))
        return [len(keys), *keys, *argv]

    async def _load(self, script: str) -> str:
        """The script's SHA1, loaded (on every master) once since the last NOSCRIPT."""
        sha = _SHA[script]
        if sha not in self._loaded:
            with translate_errors("script load"):
                await self._client.script_load(script)
            self._loaded.add(sha)
        return sha

    async def _retrying_noscript(self, what: str, run: Any) -> Any:
        """`run(sha_of)` once, and again after loading the scripts if Redis forgot them
        (a restarted server, a failed-over master): every caller's calls are idempotent."""
        for attempt in (0, 1):
            try:
                return await run()
            except RedisCommandError as e:
                if attempt or not isinstance(e.__cause__, rx.NoScriptError):
                    raise
                self._loaded.clear()
        raise AssertionError("unreachable")

    async def _evalsha(self, what: str, script: str, *args: Any) -> Any:
        async def run() -> Any:
            sha = await self._load(script)
            with translate_errors(what):
                return await self._client.evalsha(sha, *args)

        return await self._retrying_noscript(what, run)

    async def _run(self, calls: list[_Call]) -> tuple[ApplyStats, bool]:
        """Send `calls` (in order per partition); their summed stats, and whether a
        truncate has more rows to delete."""
        stats = ApplyStats()
        if not calls:
            return stats, False

        async def run() -> list[Any]:
            return await self._send(calls, await self._load(SOURCE_APPLY))

        replies = await self._retrying_noscript("source apply", run)
        more = False
        for applied, skipped, same, flag in replies:
            stats.applied += int(applied)
            stats.skipped += int(skipped)
            stats.unchanged += int(same)
            more = more or bool(int(flag))
        stats.calls = len(calls)
        return stats, more

    async def _send(self, calls: list[_Call], sha: str) -> list[Any]:
        def commands(part: list[_Call]) -> Iterator[list[Any]]:
            for c in part:
                yield ["EVALSHA", sha, *c.build()]

        with translate_errors(f"source apply ({len(calls)} calls)"):
            if not isinstance(self._client, ClusterClient):
                # One connection, in order: Redis runs them one by one anyway.
                return await self._pipelined(commands(calls), _IN_FLIGHT, "")
            # Redis Cluster: one pipeline per partition (one slot), partitions in parallel.
            per_p: dict[int, list[_Call]] = defaultdict(list)
            for c in calls:
                per_p[c.partition].append(c)
            results = await asyncio.gather(
                *(self._pipelined(commands(part), _IN_FLIGHT,
                                  self.keys.source_position(self.source, p))
                  for p, part in per_p.items())
            )  # fmt: skip
            return [r for res in results for r in res]


class SourceStatus(ClientComponent):
    """The status a source's running process publishes, readable by any process of the
    tier (the controller, `raycluster status`, the edge's /metrics).

    One JSON string per source (`Keys.source_status`) with a TTL: a process
    that stops publishing disappears once it expires.
    """

    client_name = "raycluster-source-status"

    async def publish(
        self, source: str, status: Mapping[str, Any], *, ttl_s: float, if_absent: bool = False
    ) -> bool:
        """Store `status` for `ttl_s`; with `if_absent`, only where no other status is
        (a standby does not hide the active one's). Whether it was stored."""
        key = self.keys.source_status(source)
        with translate_errors(f"source status {source}"):
            done = await self._client.set(
                key, json.dumps(status, default=str), px=max(1, round(ttl_s * 1000)),
                nx=if_absent,
            )  # fmt: skip
        return bool(done)

    async def read(self, source: str) -> dict[str, Any] | None:
        """The last status published for `source` (None: none, or it expired)."""
        with translate_errors(f"source status {source}"):
            raw = await self._client.get(self.keys.source_status(source))
        if raw is None:
            return None
        try:
            status = json.loads(raw)
        except ValueError:
            return None  # not one of ours: nothing to report
        return status if isinstance(status, dict) else None
