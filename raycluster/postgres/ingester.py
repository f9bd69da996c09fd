"""`Ingester`: follows a Postgres publication and writes every change to the tier.

How it stays exact (docs/postgres.md says it for users):

* **Handoff.** With no copy yet (or the slot lost, or what it carries
  changed), it creates the slot with an exported snapshot, copies the tables
  in a REPEATABLE READ transaction set to that snapshot while the
  replication connection waits, then streams from the slot's consistent
  point: the copy holds exactly the transactions the stream does not. The
  copy makes Redis equal to the snapshot (`SourceWriter.copy` + `sweep`),
  whatever Redis held, so it also repairs every window after a lost slot.
  A state hash in Redis says whether the copy finished (`status`); a crash
  during it means a new slot and a new copy.
* **Idempotence.** Each change has a position (commit LSN, index in its
  transaction, step) and each partition keeps the last position applied to
  it, updated in the same Redis script call as its rows, so replaying the
  stream from the slot after a crash applies nothing twice.
* **Confirmation.** A transaction's end LSN is confirmed to Postgres only
  once the whole transaction is in Redis.
* **Atomicity.** The changes of a batch (whole transactions, up to
  `batch_changes` changes) land per partition in one script call (at most
  `atomic_writes` writes; more are split) — so a transaction's changes to
  one partition land together, up to that bound; a TRUNCATE lands in steps.

A second ingester on the same slot waits (`SlotBusy`); a lost Postgres or
Redis is retried with backoff, resuming from the slot.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from raycluster._tasks import Backoff, TaskSet, cancel_and_wait, checkpoint, logged, race
from raycluster.cluster.routing import PARTITIONS
from raycluster.livequery.models import EntitySpec
from raycluster.redis import make_client
from raycluster.redis.errors import RedisUnavailable
from raycluster.redis.settings import RedisSettings
from raycluster.redis.source import SourceStatus, SourceWrite, SourceWriter

from ._pg import connect, connect_replication, quote_ident, slot_info, translate
from .catalog import TablePlan, fingerprint, plan_tables
from .errors import (
    PostgresAuthFailed,
    PostgresSourceError,
    PostgresUnavailable,
    ResyncNeeded,
    SchemaChanged,
    SlotBusy,
    SlotLost,
    UnsupportedRowValue,
)
from .pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Relation,
    Truncate,
    Update,
    Value,
    decode,
    format_lsn,
    parse_lsn,
)
from .settings import PostgresSettings, masked_dsn
from .status import STATUS_TTL_INTERVALS, IngesterStatus
from .values import UnsupportedValue

__all__ = ("Ingester", "drop_slot", "position")

log = logging.getLogger(__name__)

_PG_EPOCH_S = 946_684_800  # 2000-01-01 in Unix time: Postgres timestamps count from it
_TRUNCATE_CHUNK = 1000  # rows one truncate call deletes
_RATE_WINDOW_S = 10.0  # rows/s is measured over this long
_YIELD_EVERY = 256  # messages the reader decodes before it lets the applier run
_UNKNOWN = object()  # a tenant the change does not name (looked up in the owner map)
_PROTO = {"proto_version": "1"}


def position(lsn: int, index: int, step: int = 0) -> str:
    """A change's position: commit LSN, index in its transaction, step within the change
    (fixed-width hex: compares as the changes' order)."""
    return f"{lsn:016x}{index:08x}{step:04x}"


@dataclass(slots=True)
class _Change:
    """One change of a carried table, in tier terms (tenants None: not carried)."""

    index: int
    plan: TablePlan
    kind: str  # i u d t
    new_tenant: str | None = None
    new_id: str = ""
    row: dict[str, Any] | None = None
    old_tenant: Any = None  # str | None | _UNKNOWN
    old_id: str = ""
    truncated: tuple[TablePlan, ...] = ()


@dataclass(slots=True)
class _Txn:
    """A transaction's changes (or a part of a large one: `final` False)."""

    commit_lsn: int
    end_lsn: int
    commit_ts_us: int
    changes: list[_Change] = field(default_factory=list)
    final: bool = False


class _Stats:
    """The ingester's counters and rates (read by `status()`)."""

    def __init__(self) -> None:
        self.applied = self.skipped = self.unchanged = self.transactions = 0
        self.truncates = self.copies = self.copied_rows = self.uncarried = 0
        self.reconnects = 0
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    @property
    def written(self) -> int:
        """Rows written to Redis: streamed writes that changed a row, and copied rows."""
        return self.applied + self.copied_rows

    def sample(self, now: float) -> None:
        self._samples.append((now, self.written))
        while self._samples and self._samples[0][0] < now - _RATE_WINDOW_S:
            self._samples.popleft()

    def rate(self, now: float) -> float:
        """Rows written per second over the samples of the last `_RATE_WINDOW_S`."""
        if len(self._samples) < 2:
            return 0.0
        t0, n0 = self._samples[0]
        span = max(now - t0, 1e-3)
        return (self.written - n0) / span


class Ingester:
    """Follows `settings.publication` through slot `settings.slot` into Redis.

    `entities` are the tier's declared entities: a table feeding a declared
    entity carries its columns (checked against the table's types); an
    undeclared entity gets a spec from the table. `run()` works until
    `aclose()` (or cancellation), reconnecting with backoff; it raises only
    for what retrying cannot fix (`SourceConfigError`, `SchemaChanged`,
    `UnsupportedRowValue`). `status()` reports progress at any time.
    """

    def __init__(
        self,
        settings: PostgresSettings,
        redis_url: str,
        *,
        redis_settings: RedisSettings | None = None,
        entities: Iterable[EntitySpec] = (),
    ) -> None:
        self.settings = settings
        self.redis_settings = rs = redis_settings or RedisSettings.from_env()
        self._declared = {e.name: e for e in entities}
        self._redis_url = redis_url
        self._client = make_client(redis_url, rs, name="raycluster-ingest")
        self._writer: SourceWriter | None = None
        self._plans: list[TablePlan] = []
        self._by_relid: dict[int, TablePlan] = {}
        self._stats = _Stats()
        self._state = "starting"
        self._error: str | None = None
        self._generation = 0
        self._confirmed = 0
        self._received = 0
        self._pending_ts: collections.deque[int] = collections.deque()  # commit ts, µs
        self._pending = 0  # changes read, not yet applied
        self._in_txn = False  # the reader holds part of a transaction
        self._closed = asyncio.Event()
        self._ready = asyncio.Event()  # past its config checks (or stopped)
        self._room = asyncio.Event()  # set by the applier whenever it took changes
        # Per entity, the tenants this session recorded in Redis (`SourceWriter.add_tenants`).
        self._tenants: dict[str, set[str]] = collections.defaultdict(set)
        self._failure: Exception | None = None
        self._last_error: BaseException | None = None
        self._runner: asyncio.Task[Any] | None = None
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        self._status = SourceStatus(self._client, settings=rs)
        self._who = f"{socket.gethostname()}:{os.getpid()}"
        self._rcur: Any = None
        self._started = time.monotonic()

    # -- public ------------------------------------------------------------------------

    async def run(self) -> None:
        """Ingest until `aclose()` or cancellation; reconnect with backoff on lost
        connections. Publishes `status()` to Redis every `status_interval_s` meanwhile
        (`SourceStatus`), and a last time when it ends."""
        s = self.settings
        self._runner = asyncio.current_task()
        tasks = TaskSet(f"ingest {s.slot}")
        tasks.every(s.status_interval_s, self._publish, "status")
        try:
            await self._retrying()
        except asyncio.CancelledError:
            # aclose()'s own cancellation ends run() normally; any other propagates.
            me = asyncio.current_task()
            if self._closed.is_set() and me is not None and me.uncancel() == 0:
                return
            raise
        finally:
            if self._state != "failed":
                self._state = "stopped"
            self._ready.set()
            await tasks.aclose()
            with logged(f"ingest {s.slot}: publishing its last status"):
                await asyncio.wait_for(self._publish(), s.connect_timeout_s)

    async def _retrying(self) -> None:
        s = self.settings
        backoff = self._backoff
        force_copy = False
        while not self._closed.is_set():
            checkpoint()
            try:
                await self._session(force_copy)
                force_copy = False
                continue
            except (SchemaChanged, UnsupportedRowValue, PostgresAuthFailed) as e:
                self._fail(e)
                raise
            except (SlotBusy, SlotLost, ResyncNeeded, PostgresUnavailable) as e:
                self._error = str(e)
                if isinstance(e, SlotBusy):
                    self._state, wait = "waiting", s.slot_busy_retry_s
                    self._ready.set()  # it runs: as the slot's standby
                    log.info("ingest %s: slot busy, waiting: %s", s.slot, e)
                elif isinstance(e, PostgresUnavailable):
                    self._reconnecting(e)
                    wait = backoff.next_delay_s()
                else:
                    log.warning("ingest %s: %s; copying the tables again", s.slot, e)
                    self._state, wait, force_copy = "recopying", 0.0, True
                    backoff.reset()
            except PostgresSourceError as e:  # SourceConfigError and the like
                self._fail(e)
                raise
            except RedisUnavailable as e:
                self._reconnecting(e)
                wait = backoff.next_delay_s()
            except Exception as e:  # a bug, or Redis refusing a write (a key of another type)
                self._fail(e)
                raise
            with contextlib.suppress(TimeoutError):  # (the wait ends early on aclose())
                await asyncio.wait_for(self._closed.wait(), wait)

    async def ready(self) -> None:
        """Return once the ingester runs: it checked its config against the database
        and copies, streams or waits for its slot (or retries a lost connection).
        Raises the error that stopped it, if it stopped for good."""
        await self._ready.wait()
        if self._failure is not None:
            raise self._failure

    async def aclose(self) -> None:
        """Stop `run()` (its connections close; what is in Redis stays exact) and close
        the Redis client. Idempotent."""
        self._closed.set()
        runner = self._runner
        if runner is not None and not runner.done() and runner is not asyncio.current_task():
            await cancel_and_wait([runner], self.settings.connect_timeout_s)
        await self._client.aclose()

    def status(self) -> IngesterStatus:
        """Where the ingester is: state, confirmed slot position, lag, rates, counters.

        `lag_bytes` is the server's WAL position (as of its last message)
        minus `synced_lsn`; `lag_s` how long ago the oldest transaction
        not yet in Redis committed (0 when none is waiting); `synced_lsn`
        the position before which every committed transaction is in Redis;
        `rows_per_s` the rows written (copied or streamed) per second over
        the last 10 s.
        """
        now = time.monotonic()
        st = self._stats
        st.sample(now)
        lag_s = 0.0
        if self._pending_ts:
            lag_s = max(0.0, time.time() - (_PG_EPOCH_S + self._pending_ts[0] / 1e6))
        return {
            "state": self._state,
            "slot": self.settings.slot,
            "publication": self.settings.publication,
            "dsn": masked_dsn(self.settings.dsn),
            "ingester": self._who,
            "generation": self._generation,
            "confirmed_lsn": format_lsn(self._confirmed),
            "received_lsn": format_lsn(self._received),
            "synced_lsn": format_lsn(self._synced()),
            "lag_bytes": max(0, self._received - self._synced()),
            "lag_s": round(lag_s, 3),
            "pending_changes": self._pending,
            "rows_per_s": round(st.rate(now), 1),
            "applied": st.applied,
            "skipped": st.skipped,
            "unchanged": st.unchanged,
            "uncarried": st.uncarried,
            "transactions": st.transactions,
            "truncates": st.truncates,
            "copies": st.copies,
            "copied_rows": st.copied_rows,
            "reconnects": st.reconnects,
            "error": self._error,
            "uptime_s": round(now - self._started, 1),
            "updated_at": round(time.time(), 3),
        }

    async def _publish(self) -> None:
        """Put `status()` in Redis (expiring after a few intervals); a standby (waiting
        for the slot, or not yet past its start) only where no other ingester's is."""
        st = self.status()
        standby = st["state"] in ("starting", "waiting")
        if self._state == "reconnecting" and isinstance(self._last_error, RedisUnavailable):
            return  # Redis is away (run() says so, and retries): nowhere to publish
        try:
            await self._status.publish(
                self.settings.slot, st,
                ttl_s=STATUS_TTL_INTERVALS * self.settings.status_interval_s, if_absent=standby,
            )  # fmt: skip
        except RedisUnavailable as e:  # (run() notices the outage itself, and says so)
            log.info("ingest %s: status not published: %s", self.settings.slot, e)

    def caught_up(self, lsn: int) -> bool:
        """Whether every transaction committed before WAL position `lsn` is in Redis."""
        return self._synced() >= lsn

    def _synced(self) -> int:
        """The WAL position before which every committed transaction is in Redis."""
        if self._state == "streaming" and self._pending == 0 and not self._in_txn:
            return max(self._received, self._confirmed)
        return self._confirmed

    # -- one session: connect, copy if needed, stream ----------------------------------

    def _fail(self, e: Exception) -> None:
        self._state, self._error, self._failure = "failed", str(e), e
        self._ready.set()
        if isinstance(e, PostgresSourceError):
            log.error("ingest %s: stopped: %s", self.settings.slot, e)
        else:
            log.error("ingest %s: stopped: %s: %s", self.settings.slot, type(e).__name__, e,
                      exc_info=e)  # fmt: skip

    def _reconnecting(self, e: BaseException) -> None:
        self._state, self._error, self._last_error = "reconnecting", str(e), e
        self._ready.set()  # it runs, and retries
        self._stats.reconnects += 1
        log.warning("ingest %s: %s; reconnecting", self.settings.slot, e)

    async def _session(self, force_copy: bool) -> None:
        s = self.settings
        self._tenants.clear()  # (Redis may have restarted since they were recorded)
        conn = await asyncio.to_thread(connect, s.dsn, s.connect_timeout_s)
        rconn: Any = None
        try:
            plans = await asyncio.to_thread(plan_tables, conn, s, self._declared)
            self._use_plans(plans)
            self._ready.set()
            rconn = await asyncio.to_thread(connect_replication, s.dsn, s.connect_timeout_s)
            rcur = rconn.cursor()
            sysid = await asyncio.to_thread(_identify, rcur)
            slot = await asyncio.to_thread(slot_info, conn, s.slot)
            if slot is not None and slot.active:
                raise SlotBusy(f"slot {s.slot} is in use by process {slot.active_pid}")
            writer = self._writer
            assert writer is not None
            state = await writer.state()
            self._generation = int(state.get("generation", "0") or 0)
            why = await self._copy_reason(force_copy, state, slot, sysid, plans)
            if why is not None:
                log.info("ingest %s: copying the tables (%s)", s.slot, why)
                start = await self._copy(conn, rcur, slot is not None, sysid, plans, why)
            else:
                start = 0  # the slot's confirmed position
                self._confirmed = parse_lsn(slot.confirmed_flush_lsn or "0/0") if slot else 0
            await self._stream(rcur, start)
        finally:
            self._rcur = None
            for c in (rconn, conn):
                if c is not None:
                    with logged(f"ingest {s.slot}: closing a Postgres connection"):
                        c.close()

    def _use_plans(self, plans: list[TablePlan]) -> None:
        self._plans = plans
        self._by_relid = {p.relid: p for p in plans}
        specs = {p.entity: p.spec for p in plans}
        if self._writer is None or self._writer.layouts.keys() != specs.keys():
            self._writer = SourceWriter(
                self._client,
                settings=self.redis_settings,
                entities=specs.values(),
                source=self.settings.slot,
            )

    async def _copy_reason(
        self,
        force: bool,
        state: Mapping[str, str],
        slot: Any,
        sysid: str,
        plans: list[TablePlan],
    ) -> str | None:
        """Why the tables must be copied (again), or None to resume from the slot."""
        if force:
            return "forced"
        if slot is None:
            return "no slot" if not state else "the slot is gone"
        if slot.wal_status == "lost":
            return "the slot was invalidated"
        if state.get("status") != "streaming":
            return "no finished copy in Redis"
        if state.get("sysid") != sysid:
            return "another database server"
        if state.get("fingerprint") != fingerprint(plans):
            return "the carried tables or columns changed"
        run_id = await self._redis_run_id()
        if run_id is not None and state.get("redis_run_id") not in (None, run_id):
            # Redis restarted: if it lost writes confirmed to Postgres, copy again.
            confirmed = parse_lsn(state.get("confirmed", "0/0"))
            if confirmed < parse_lsn(slot.confirmed_flush_lsn or "0/0"):
                return "Redis restarted without writes the slot confirmed"
        if run_id is not None:
            assert self._writer is not None
            await self._writer.set_state({"redis_run_id": run_id})
        return None

    async def _redis_run_id(self) -> str | None:
        assert self._writer is not None
        return await self._writer.server_run_id()  # None on Redis Cluster: not checked

    # -- the copy ------------------------------------------------------------------------

    async def _copy(
        self,
        conn: Any,
        rcur: Any,
        slot_exists: bool,
        sysid: str,
        plans: list[TablePlan],
        why: str,
    ) -> int:
        s = self.settings
        writer = self._writer
        assert writer is not None
        self._state = "copying"
        if slot_exists:
            await asyncio.to_thread(_drop_slot_cmd, rcur, s.slot)
        cp, snapshot = await asyncio.to_thread(_create_slot, rcur, s.slot, conn.server_version)
        self._generation += 1
        gen = self._generation
        await writer.set_state(
            {
                "status": "copying",
                "generation": gen,
                "sysid": sysid,
                "slot": s.slot,
                "consistent_lsn": format_lsn(cp),
                "reason": why,
            }
        )
        copy_conn = await asyncio.to_thread(connect, s.dsn, s.connect_timeout_s)
        try:
            copy_conn.autocommit = False
            copy_conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
            with translate("copy"):
                await asyncio.to_thread(_set_snapshot, copy_conn, snapshot)
            for plan in plans:
                await writer.clear_owners(plan.entity)
                await self._copy_table(copy_conn, plan, gen)
            with translate("copy"):
                await asyncio.to_thread(copy_conn.commit)
        finally:
            with logged(f"ingest {s.slot}: closing the copy's connection"):
                copy_conn.close()
        for plan in plans:
            for tenant in await writer.tenants(plan.entity):
                await writer.sweep(gen, tenant, plan.entity)
        await writer.set_watermarks(range(PARTITIONS), position(cp, 0))
        fields: dict[str, str | int] = {
            "status": "streaming",
            "confirmed": format_lsn(cp),
            "fingerprint": fingerprint(plans),
        }
        run_id = await self._redis_run_id()
        if run_id is not None:
            fields["redis_run_id"] = run_id
        await writer.set_state(fields)
        self._stats.copies += 1
        self._confirmed = cp
        log.info("ingest %s: copy %d done at %s", s.slot, gen, format_lsn(cp))
        return cp

    async def _copy_table(self, conn: Any, plan: TablePlan, gen: int) -> None:
        s = self.settings
        writer = self._writer
        assert writer is not None
        cols = [plan.tenant_column, plan.id_column, *(c.name for c in plan.carried)]
        only = "" if plan.partitioned else "ONLY "
        # Values as their type's output function prints them, as the stream sends them
        # (not `::text`: some casts differ, e.g. boolean's 'true' against 't').
        oids = {plan.tenant_type, plan.id_type, *(c.type_oid for c in plan.carried)}
        raw = psycopg2.extensions.new_type(tuple(oids), "RAYCLUSTER_TEXT", _as_text)
        psycopg2.extensions.register_type(raw, conn)
        sql = (
            f"SELECT {', '.join(quote_ident(c) for c in cols)} FROM {only}"
            f"{quote_ident(plan.source.schema_name)}.{quote_ident(plan.source.table_name)}"
        )
        if plan.row_filter:
            sql += f" WHERE {plan.row_filter}"
        cur = conn.cursor(name=f"raycluster_copy_{plan.index}")
        cur.itersize = s.copy_rows
        with translate(f"copy {plan.name}"):
            await asyncio.to_thread(cur.execute, sql)
        try:
            while True:
                checkpoint()
                with translate(f"copy {plan.name}"):
                    rows = await asyncio.to_thread(cur.fetchmany, s.copy_rows)
                if not rows:
                    return
                writes: list[SourceWrite] = []
                owners: dict[str, str | None] = {}
                for tenant_text, id_text, *vals in rows:
                    tenant = _tenant(tenant_text)
                    agg_id = _id(plan, id_text)
                    if tenant is None:
                        self._stats.uncarried += 1
                        continue
                    row = _row(plan, agg_id, plan.carried, vals)
                    writes.append(SourceWrite("", tenant, plan.entity, agg_id, row))
                    if not plan.tenant_in_identity:
                        owners[agg_id] = tenant
                await writer.add_tenants(plan.entity, {w.tenant for w in writes})
                await writer.copy(gen, writes, atomic_writes=s.atomic_writes)
                await writer.set_owners(plan.entity, owners)
                self._stats.copied_rows += len(writes)
                self._stats.sample(time.monotonic())
        finally:
            with logged(f"ingest {s.slot}: closing the copy's cursor of {plan.name}"):
                cur.close()

    # -- the stream ----------------------------------------------------------------------

    async def _stream(self, rcur: Any, start: int) -> None:
        s = self.settings
        options = {**_PROTO, "publication_names": s.publication}
        with translate("start replication"):
            await asyncio.to_thread(
                rcur.start_replication,
                slot_name=s.slot,
                decode=False,
                start_lsn=start,
                options=options,
                status_interval=max(1.0, s.feedback_interval_s),
            )
        self._rcur = rcur
        self._state, self._error = "streaming", None
        self._backoff.reset()
        queue: asyncio.Queue[_Txn | None] = asyncio.Queue()  # (bounded by _hand_over)
        log.info("ingest %s: streaming from %s", s.slot, format_lsn(start or self._confirmed))
        try:
            # Reading and applying run until one fails (its error ends the session) or
            # aclose(); either way the other is cancelled.
            await race(self._read(rcur, queue), self._apply_loop(rcur, queue),
                       self._closed.wait())  # fmt: skip
        finally:
            self._pending, self._in_txn = 0, False
            self._pending_ts.clear()

    async def _read(self, rcur: Any, queue: asyncio.Queue[_Txn | None]) -> None:
        """Read messages, decode them into transactions (parts of `batch_changes`
        changes for large ones), hand them to the applier."""
        loop = asyncio.get_running_loop()
        fd = rcur.connection.fileno()
        txn: _Txn | None = None
        index = 0
        interval = self.settings.feedback_interval_s
        limit = self.settings.batch_changes
        data_wal_end: int | None = None  # the cursor's wal_end right after a data message
        turn = 0
        while True:
            turn += 1
            if turn % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # the applier's replies and the next calls go on
            try:
                msg = rcur.read_message()
            except psycopg2.Error:  # (translated only when raised: a `with` per message costs)
                with translate("replication stream"):
                    raise
            if msg is None:
                # A keepalive moved the cursor's wal_end since the last data message:
                # the server has sent everything before it.
                wal_end = int(rcur.wal_end or 0)
                if txn is None and wal_end != data_wal_end:
                    self._received = max(self._received, wal_end)
                checkpoint()
                if not await _readable(loop, fd, interval) and self._pending == 0:
                    # Idle: ask for a keepalive, so received_lsn follows the server.
                    with translate("feedback"):
                        rcur.send_feedback(reply=True)
                continue
            data_wal_end = int(rcur.wal_end or 0)
            m = decode(bytes(msg.payload))
            if isinstance(m, Begin):
                txn = _Txn(m.final_lsn, 0, m.commit_ts_us)
                index = 0
                self._in_txn = True
            elif isinstance(m, Commit):
                if txn is None:
                    continue
                txn.end_lsn, txn.final = m.end_lsn, True
                await self._hand_over(queue, txn)
                txn, self._in_txn = None, False
                self._received = max(self._received, m.end_lsn)
            elif isinstance(m, Relation):
                self._follow(m)
            elif isinstance(m, Insert | Update | Delete | Truncate):
                if txn is None:
                    continue
                index += 1
                ch = self._change(m, index)
                if ch is not None:
                    txn.changes.append(ch)
                    if len(txn.changes) >= limit:
                        part = _Txn(txn.commit_lsn, 0, txn.commit_ts_us, txn.changes)
                        txn.changes = []
                        await self._hand_over(queue, part)

    async def _hand_over(self, queue: asyncio.Queue[_Txn | None], txn: _Txn) -> None:
        """Queue `txn` for the applier; wait while two batches' worth of changes wait."""
        checkpoint()
        while self._pending >= 2 * self.settings.batch_changes:
            self._room.clear()
            await self._room.wait()
        self._pending += len(txn.changes) + 1
        self._pending_ts.append(txn.commit_ts_us)
        queue.put_nowait(txn)

    def _follow(self, rel: Relation) -> None:
        plan = self._by_relid.get(rel.relid)
        if plan is not None:
            plan.follow(rel)
            return
        for p in self._plans:
            if (rel.namespace, rel.name) == (p.source.schema_name, p.source.table_name):
                raise SchemaChanged(p.name, "dropped and created again (a new table)")

    def _change(self, m: Insert | Update | Delete | Truncate, index: int) -> _Change | None:
        if isinstance(m, Truncate):
            plans = tuple(self._by_relid[r] for r in m.relids if r in self._by_relid)
            return _Change(index, plans[0], "t", truncated=plans) if plans else None
        plan = self._by_relid.get(m.relid)
        if plan is None:
            return None
        shape = plan.shape
        if shape is None:
            raise SchemaChanged(plan.name, "a change arrived before the table's shape")
        if isinstance(m, Delete):
            old_id = _id(plan, _text(plan, m.old[shape.id]))
            old_tenant = _tenant(m.old[shape.tenant]) if plan.tenant_in_identity else _UNKNOWN
            return _Change(index, plan, "d", old_tenant=old_tenant, old_id=old_id)
        new_id = _id(plan, _text(plan, m.new[shape.id]))
        new_tenant = _tenant(_text(plan, m.new[shape.tenant]))
        vals = [m.new[i] for i in shape.carried]
        row = _row(plan, new_id, plan.carried, vals)
        if isinstance(m, Insert):
            return _Change(index, plan, "i", new_tenant, new_id, row)
        if m.old is not None:
            old_id = _id(plan, _text(plan, m.old[shape.id]))
            old_tenant = _tenant(m.old[shape.tenant]) if plan.tenant_in_identity else _UNKNOWN
        else:
            old_id = new_id
            old_tenant = new_tenant if plan.tenant_in_identity else _UNKNOWN
        return _Change(index, plan, "u", new_tenant, new_id, row, old_tenant, old_id)

    async def _apply_loop(self, rcur: Any, queue: asyncio.Queue[_Txn | None]) -> None:
        limit = self.settings.batch_changes
        while True:
            checkpoint()
            batch = [await queue.get()]
            size = len(batch[0].changes) if batch[0] else 0
            while size < limit and not queue.empty():
                nxt = queue.get_nowait()
                batch.append(nxt)
                size += len(nxt.changes) if nxt else 0
            txns = [t for t in batch if t is not None]
            await self._apply_batch(txns)
            ends = [t.end_lsn for t in txns if t.final]
            done = sum(len(t.changes) + 1 for t in txns)
            self._pending -= done
            self._room.set()
            for _ in txns:
                self._pending_ts.popleft()
            if ends:
                await self._confirm(rcur, ends[-1])
            self._stats.transactions += len(ends)
            self._stats.sample(time.monotonic())

    async def _confirm(self, rcur: Any, lsn: int) -> None:
        writer = self._writer
        assert writer is not None
        await writer.set_state({"confirmed": format_lsn(lsn)})
        with translate("feedback"):
            rcur.send_feedback(flush_lsn=lsn, force=True)
        self._confirmed = max(self._confirmed, lsn)

    async def _apply_batch(self, txns: list[_Txn]) -> None:
        """Turn the batch's changes into writes (looking up tenants and unchanged
        values where the change lacks them), then apply them."""
        writer = self._writer
        assert writer is not None
        owners = await self._prefetch_owners(txns)
        overlay: dict[tuple[str, str, str], dict[str, Any] | None] = {}
        owner_changes: dict[str, dict[str, str | None]] = collections.defaultdict(dict)
        writes: list[SourceWrite] = []

        def owner(plan: TablePlan, ch: _Change) -> str | None:
            if ch.old_tenant is not _UNKNOWN:
                tenant: str | None = ch.old_tenant
                return tenant
            changed = owner_changes[plan.entity]
            if ch.old_id in changed:
                return changed[ch.old_id]
            return owners[plan.entity].get(ch.old_id)

        for txn in txns:
            for ch in txn.changes:
                plan, e = ch.plan, ch.plan.entity
                if ch.kind == "t":
                    await self._flush(writes, owner_changes)
                    writes, owner_changes = [], collections.defaultdict(dict)
                    for p in ch.truncated:
                        pos = position(txn.commit_lsn, ch.index)
                        tenants = await writer.tenants(p.entity)
                        self._stats.applied += await writer.truncate(
                            pos, p.entity, tenants, chunk=_TRUNCATE_CHUNK
                        )
                        await writer.clear_owners(p.entity)
                        owners[p.entity] = {}
                        for k in [k for k in overlay if k[1] == p.entity]:
                            overlay[k] = None
                    self._stats.truncates += 1
                    continue
                if ch.kind == "i":
                    if ch.new_tenant is not None:
                        pos = position(txn.commit_lsn, ch.index)
                        writes.append(SourceWrite(pos, ch.new_tenant, e, ch.new_id, ch.row))
                        overlay[(ch.new_tenant, e, ch.new_id)] = ch.row
                    else:
                        self._stats.uncarried += 1
                    if not plan.tenant_in_identity:
                        owner_changes[e][ch.new_id] = ch.new_tenant
                    continue
                old_tenant = owner(plan, ch)
                if ch.kind == "d":
                    if old_tenant is not None:
                        pos = position(txn.commit_lsn, ch.index)
                        writes.append(SourceWrite(pos, old_tenant, e, ch.old_id, None))
                        overlay[(old_tenant, e, ch.old_id)] = None
                    if not plan.tenant_in_identity:
                        owner_changes[e][ch.old_id] = None
                    continue
                # An update: a leave of the old key and an enter of the new one if it moved.
                row = ch.row
                assert row is not None
                if any(v is UNCHANGED for v in row.values()):
                    row = await self._merge_unchanged(plan, ch, old_tenant, row, overlay)
                moved = (old_tenant, ch.old_id) != (ch.new_tenant, ch.new_id)
                if moved and old_tenant is not None:
                    pos = position(txn.commit_lsn, ch.index, 0)
                    writes.append(SourceWrite(pos, old_tenant, e, ch.old_id, None))
                    overlay[(old_tenant, e, ch.old_id)] = None
                if ch.new_tenant is not None:
                    pos = position(txn.commit_lsn, ch.index, 1)
                    writes.append(SourceWrite(pos, ch.new_tenant, e, ch.new_id, row))
                    overlay[(ch.new_tenant, e, ch.new_id)] = row
                else:
                    self._stats.uncarried += 1
                if not plan.tenant_in_identity:
                    if ch.old_id != ch.new_id:
                        owner_changes[e][ch.old_id] = None
                    owner_changes[e][ch.new_id] = ch.new_tenant
        await self._flush(writes, owner_changes)

    async def _flush(
        self, writes: list[SourceWrite], owner_changes: Mapping[str, Mapping[str, str | None]]
    ) -> None:
        writer = self._writer
        assert writer is not None
        per_entity: dict[str, set[str]] = collections.defaultdict(set)
        for w in writes:
            if w.row is not None:
                per_entity[w.entity].add(w.tenant)
        # Tenants first: a TRUNCATE (or a copy's sweep) must find every tenant with rows.
        # (Those this session recorded are in Redis already: one round trip less.)
        for entity, tenants in per_entity.items():
            known = self._tenants[entity]
            if not tenants <= known:
                await writer.add_tenants(entity, tenants - known)
                known |= tenants
        stats = await writer.apply(writes, atomic_writes=self.settings.atomic_writes)
        # Owners after the rows: see docs/postgres.md (a crash in between replays alike).
        for entity, changes in owner_changes.items():
            await writer.set_owners(entity, changes)
        self._stats.applied += stats.applied
        self._stats.skipped += stats.skipped
        self._stats.unchanged += stats.unchanged

    async def _prefetch_owners(self, txns: list[_Txn]) -> dict[str, dict[str, str]]:
        writer = self._writer
        assert writer is not None
        wanted: dict[str, set[str]] = collections.defaultdict(set)
        for txn in txns:
            for ch in txn.changes:
                if ch.kind in ("u", "d") and ch.old_tenant is _UNKNOWN:
                    wanted[ch.plan.entity].add(ch.old_id)
        out: dict[str, dict[str, str]] = collections.defaultdict(dict)
        for entity, ids in wanted.items():
            out[entity] = await writer.owners(entity, sorted(ids))
        return out

    async def _merge_unchanged(
        self,
        plan: TablePlan,
        ch: _Change,
        old_tenant: str | None,
        row: dict[str, Any],
        overlay: Mapping[tuple[str, str, str], dict[str, Any] | None],
    ) -> dict[str, Any]:
        """The row with each unchanged TOASTed value taken from the stored row."""
        writer = self._writer
        assert writer is not None
        base: dict[str, Any] | None = None
        if old_tenant is not None:
            key = (old_tenant, plan.entity, ch.old_id)
            if key in overlay:
                base = overlay[key]
            else:
                (base,) = await writer.rows([key])
        if base is None:
            raise ResyncNeeded(
                f"{plan.name} row {ch.old_id!r}: an unchanged TOASTed value must come from the "
                "stored row, which Redis does not hold"
            )
        return {k: (base.get(k) if v is UNCHANGED else v) for k, v in row.items()}


# -- helpers ---------------------------------------------------------------------------


def _text(plan: TablePlan, v: Value) -> str | None:
    if v is UNCHANGED:
        raise UnsupportedRowValue(
            plan.name, "?", "?", "a tenant or id value too large to be sent with every change"
        )
    return v  # type: ignore[return-value]


def _tenant(v: Any) -> str | None:
    """A row's tenant from its text; None when no tier tenant can hold it."""
    if v is None or v is UNCHANGED or v == "" or ":" in v:
        return None
    return str(v)


def _id(plan: TablePlan, v: str | None) -> str:
    if not v:
        raise UnsupportedRowValue(plan.name, plan.id_column, repr(v), "an id must be non-empty")
    return v


def _row(
    plan: TablePlan, agg_id: str, carried: Sequence[Any], vals: Sequence[Value]
) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for c, v in zip(carried, vals, strict=True):
        if v is None or v is UNCHANGED:
            row[c.name] = v
            continue
        try:
            row[c.name] = c.convert(v)
        except (UnsupportedValue, ValueError) as e:
            raise UnsupportedRowValue(plan.name, c.name, agg_id, str(e)) from e
    return row


def _as_text(value: str | None, cur: Any) -> str | None:
    return value


async def _readable(loop: asyncio.AbstractEventLoop, fd: int, timeout_s: float) -> bool:
    """Wait until `fd` is readable (True) or `timeout_s` passed (False).

    The reader is registered only while waiting: a level-triggered reader left
    on a socket with unread data would wake the loop on every turn (a busy
    loop while the applier waits on Redis).
    """
    ready: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await asyncio.wait_for(ready, timeout_s)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


def _identify(rcur: Any) -> str:
    with translate("identify system"):
        rcur.execute("IDENTIFY_SYSTEM")
        row = rcur.fetchone()
    return str(row[0])


def _create_slot(rcur: Any, slot: str, server_version: int) -> tuple[int, str]:
    """Create the slot with an exported snapshot; (consistent point, snapshot name).

    The snapshot lives until the next command on this connection: the copy
    runs meanwhile."""
    if server_version >= 150000:
        cmd = f"CREATE_REPLICATION_SLOT {quote_ident(slot)} LOGICAL pgoutput (SNAPSHOT 'export')"
    else:
        cmd = f"CREATE_REPLICATION_SLOT {quote_ident(slot)} LOGICAL pgoutput EXPORT_SNAPSHOT"
    try:
        with translate("create slot"):
            rcur.execute(cmd)
            _, consistent, snapshot, _ = rcur.fetchone()
    except psycopg2.errors.DuplicateObject as e:
        raise SlotBusy(f"slot {slot} was created by another ingester") from e
    return parse_lsn(consistent), snapshot


def _drop_slot_cmd(rcur: Any, slot: str) -> None:
    try:
        with translate("drop slot"):
            rcur.execute(f"DROP_REPLICATION_SLOT {quote_ident(slot)}")
    except SlotLost:
        pass  # already gone


def _set_snapshot(conn: Any, snapshot: str) -> None:
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))


def drop_slot(settings: PostgresSettings) -> bool:
    """Drop the ingester's slot (Postgres stops keeping WAL for it); whether it existed.

    `SlotBusy` while an ingester uses it. The next ingester copies the tables again.
    """
    conn = connect(settings.dsn, settings.connect_timeout_s)
    try:
        info = slot_info(conn, settings.slot)
        if info is None:
            return False
        if info.active:
            raise SlotBusy(f"slot {settings.slot} is in use by process {info.active_pid}")
        with translate("drop slot"), conn.cursor() as cur:
            cur.execute("SELECT pg_drop_replication_slot(%s)", (settings.slot,))
        return True
    finally:
        conn.close()
