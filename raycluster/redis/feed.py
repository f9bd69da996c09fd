"""`RedisFeed`: the engine's `Feed` over the partition event streams.

One blocking XREAD tails every partition stream this feed is given (on Redis
Cluster, where one XREAD cannot span slots, one blocking XREAD per stream,
their results gathered into the same batches); each entry is decoded once
into a `Change`. Positions are kept per stream and
reported after every read (an empty one too), so the engine learns that a
quiet stream has nothing more. A lost connection is retried with backoff and
the read resumes from the last ids: XREAD is not destructive, so nothing is
lost or delivered twice. The writer numbers each partition's events (`n`); a
jump in that number means the stream was trimmed past this feed's position
(a gap) — counted and logged, and the engine's `reconcile()` repairs it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from raycluster._resources import AsyncResource
from raycluster._tasks import Backoff, TaskSet, checkpoint
from raycluster.cluster.routing import PARTITIONS
from raycluster.errors import ClosedError
from raycluster.livequery.models import Change, trusted
from raycluster.livequery.ports import FeedBatch, pos_key

from ._client import ReadGate, interruptible, make_client, resolve_url
from ._rows import decode_row
from .errors import REFUSED, UNREACHABLE, refused, translate_errors
from .scripts import STREAM_HEAD
from .settings import RedisSettings

__all__ = ("FeedStats", "RedisFeed")

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_OPS = {b"upsert": "upsert", b"delete": "delete"}


@dataclass(slots=True)
class FeedStats:
    """Counters of one feed (read them; the feed only adds)."""

    reads: int = 0
    changes: int = 0
    malformed: int = 0
    gaps: int = 0
    reconnects: int = 0


class RedisFeed(AsyncResource):
    """Tails partition streams `lq:events:{p}`; implements the `Feed` port.

    `batches()` (one reader at a time) first yields the starting positions,
    then a `FeedBatch` after every read. `set_partitions()` changes the tailed
    set at runtime: a new partition starts at its last id as of that call
    (every event appended after the call returns is delivered), reported in
    the next batch; a removed one stops being read and reported. `on_gap`,
    when given, is called with (stream, position) when a gap is found.
    """

    def __init__(
        self,
        url: str,
        partitions: Iterable[int] = (),
        *,
        settings: RedisSettings | None = None,
        on_gap: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = s = settings if settings is not None else RedisSettings.from_env()
        self.keys = s.keys
        self.stats = FeedStats()
        self.on_gap = on_gap
        self._client = make_client(url, s, name="raycluster-feed")
        self._blocking = make_client(
            url, s, blocking_ms=s.feed_block_ms, name="raycluster-feed-read"
        )
        self._partitions: frozenset[int] = frozenset(_check_partitions(partitions))
        self._pos: dict[str, str] = {}  # stream → last id delivered (or skipped)
        self._seq: dict[str, int] = {}  # stream → `n` of that entry, when known
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._reading = False
        self._closed = False
        self._gate = ReadGate(self._blocking)
        # Redis Cluster: one reader per stream hands its entries over here.
        self._tails: dict[str, asyncio.Task[None]] = {}  # by stream (those ending are in
        self._tail_tasks = TaskSet("feed")  # `_tail_tasks` until they have ended)
        self._arrived: list[tuple[str, list[Any], asyncio.Event]] = []
        self._arrival = asyncio.Event()

    @classmethod
    def from_url(
        cls,
        url: str | None = None,
        *,
        partitions: Iterable[int] = (),
        settings: RedisSettings | None = None,
        on_gap: Callable[[str, str], None] | None = None,
    ) -> RedisFeed:
        """A feed over `partitions` (its own connections; closed by `aclose`)."""
        s = settings if settings is not None else RedisSettings.from_env()
        return cls(resolve_url(url, s), partitions, settings=s, on_gap=on_gap)

    async def aclose(self) -> None:
        """Stop: a reader's iteration ends; connections are closed."""
        self._closed = True
        self._changed.set()
        await self._tail_tasks.aclose(self.settings.socket_timeout_s)
        await self._gate.close(self.settings.socket_timeout_s)
        await self._client.aclose()

    @property
    def partitions(self) -> frozenset[int]:
        """The partitions tailed now."""
        return self._partitions

    @property
    def gaps(self) -> int:
        """How many gaps (events trimmed before they were read) were found."""
        return self.stats.gaps

    # -- Feed port -------------------------------------------------------------------

    async def head(self) -> dict[str, str]:
        """The last id of each tailed stream now (`0-0` for an empty one)."""
        streams = [self.keys.event_stream(p) for p in sorted(self._partitions)]
        with translate_errors("feed head"):
            async with self._client.pipeline(transaction=False) as pipe:
                for key in streams:
                    pipe.xrevrange(key, "+", "-", count=1)
                res = await pipe.execute()
        return {key: r[0][0].decode() if r else "0-0" for key, r in zip(streams, res, strict=True)}

    async def batches(self) -> AsyncIterator[FeedBatch]:
        """Batches of changes in stream order; the first reports the starting positions."""
        if self._closed:
            raise ClosedError("feed is closed")
        if self._reading:
            raise RuntimeError("a RedisFeed has one reader at a time")
        self._reading = True
        try:
            await self._retrying(self._resolve_missing)
            yield FeedBatch([], dict(self._pos))
            while not self._closed:
                checkpoint()
                batch = await self._next_batch()
                if batch is not None:
                    yield batch
        finally:
            self._reading = False

    async def set_partitions(self, partitions: Iterable[int]) -> None:
        """Tail exactly `partitions` from now on (see the class docstring)."""
        wanted = frozenset(_check_partitions(partitions))
        async with self._lock:
            added = wanted - self._partitions
            starts = await self._start_positions(added) if added else {}
            for p in self._partitions - wanted:
                key = self.keys.event_stream(p)
                self._pos.pop(key, None)
                self._seq.pop(key, None)
            for key, (pos, n) in starts.items():
                self._pos[key] = pos
                self._seq[key] = n
            self._partitions = wanted
            self._changed.set()  # a blocked read re-issues itself over the new set

    # -- internals -------------------------------------------------------------------

    async def _resolve_missing(self) -> None:
        async with self._lock:
            missing = [p for p in self._partitions if self.keys.event_stream(p) not in self._pos]
            for key, (pos, n) in (await self._start_positions(missing)).items():
                self._pos[key] = pos
                self._seq[key] = n

    async def _start_positions(self, partitions: Iterable[int]) -> dict[str, tuple[str, int]]:
        """Each stream's last id and event number, each pair read atomically (one
        script per partition, pipelined: partitions may live on different nodes)."""
        parts = sorted(partitions)
        async with self._client.pipeline(transaction=False) as pipe:
            for p in parts:
                pipe.eval(STREAM_HEAD, 2, self.keys.event_stream(p), self.keys.event_seq(p))
            res = await pipe.execute()
        return {
            self.keys.event_stream(p): (last.decode(), int(n))
            for p, (last, n) in zip(parts, res, strict=True)
        }

    async def _retrying(self, step: Callable[[], Awaitable[_T]], what: str = "Redis") -> _T:
        """`step()`, again (with backoff) while Redis is unreachable; ClosedError once closed."""
        backoff = Backoff(self.settings.reconnect_min_s, self.settings.reconnect_max_s)
        while True:
            checkpoint()
            if self._closed:
                raise ClosedError("feed is closed")
            try:
                return await step()
            except REFUSED as e:
                raise refused("feed", e) from e
            except UNREACHABLE as e:
                self.stats.reconnects += 1
                log.warning("feed: %s unavailable (%s); retrying", what, e)
                await backoff.sleep()

    async def _next_batch(self) -> FeedBatch | None:
        """One read (retried until it succeeds); None once closed."""
        if self.settings.redis_cluster:
            return await self._next_gathered()
        try:
            return await self._retrying(self._read_once, "read")
        except ClosedError:
            return None

    async def _read_once(self) -> FeedBatch | None:
        self._changed.clear()
        streams = dict(self._pos)
        if not streams:
            wait_s = self.settings.feed_block_ms / 1000
            await interruptible(asyncio.sleep(wait_s), self._changed)
            return FeedBatch([], {})
        async with self._gate.busy():
            done, resp = await interruptible(
                self._blocking.xread(
                    streams,  # type: ignore[arg-type]
                    count=self.settings.feed_count,
                    block=self.settings.feed_block_ms,
                ),
                self._changed,
            )
        if not done:
            # The tailed set changed: report the new positions at once.
            return None if self._closed else FeedBatch([], dict(self._pos))
        self.stats.reads += 1
        return self._decode(resp or [])

    async def _next_gathered(self) -> FeedBatch | None:
        """Redis Cluster: what the per-stream readers read since the last batch (an
        empty batch after a block time with none, or at once when the set changed)."""
        if self._closed:
            return None
        self._changed.clear()
        for key in self._tails.keys() - self._pos.keys():
            self._tails.pop(key).cancel()  # its handed-over entries are dropped by _decode
        for key, task in list(self._tails.items()):
            if task.done() and not task.cancelled() and task.exception() is not None:
                del self._tails[key]
                raise task.exception()  # type: ignore[misc]  # what a read raises, as one XREAD
        for key in self._pos.keys() - self._tails.keys():
            task = self._tail_tasks.spawn(self._tail(key, self._pos[key]), f"feed-tail-{key}")
            self._tails[key] = task
            task.add_done_callback(lambda _: self._arrival.set())
        if not self._arrived:
            self._arrival.clear()
            try:
                async with asyncio.timeout(self.settings.feed_block_ms / 1000):
                    await interruptible(self._arrival.wait(), self._changed)
            except TimeoutError:
                pass
        if self._closed:
            return None
        arrived, self._arrived = self._arrived, []
        if arrived:
            self.stats.reads += 1
        batch = self._decode([(key.encode(), entries) for key, entries, _ in arrived])
        for _, _, taken in arrived:
            taken.set()
        return batch

    async def _tail(self, key: str, start: str) -> None:
        """Redis Cluster: tail one stream, handing each read over to the batches and
        waiting until it was taken (so a slow consumer bounds what is read ahead)."""
        pos, taken = start, asyncio.Event()
        count, block = self.settings.feed_count, self.settings.feed_block_ms
        while not self._closed:
            try:
                resp: Any = await self._retrying(
                    partial(self._blocking.xread, {key: pos}, count=count, block=block),
                    f"read of {key}",
                )
            except ClosedError:
                return
            if resp and resp[0][1]:
                entries = resp[0][1]
                pos = entries[-1][0].decode()
                taken.clear()
                self._arrived.append((key, entries, taken))
                self._arrival.set()
                await taken.wait()

    def _decode(self, resp: Any) -> FeedBatch:
        changes: list[Change] = []
        pos, seqs, stats = self._pos, self._seq, self.stats
        for name, entries in resp:
            key = name.decode()
            if key not in pos or not entries:
                continue  # removed by set_partitions while the read was in flight
            floor = pos_key(pos[key])
            if pos_key(entries[0][0].decode()) <= floor:
                # Re-added at a later start while the read was in flight: drop the overlap.
                entries = [e for e in entries if pos_key(e[0].decode()) > floor]
                if not entries:
                    continue
            seq = seqs.get(key)
            for raw_id, fields in entries:
                sid = raw_id.decode()
                ch = _change(key, sid, fields)
                if ch is None:
                    stats.malformed += 1
                    log.warning("feed: skipped malformed entry %s %s", key, sid)
                    continue
                n = _int(fields.get(b"n"))
                if n is not None:
                    if seq is not None and n != seq + 1:
                        stats.gaps += 1
                        log.error(
                            "feed: gap on %s before %s (events %s..%s trimmed unread);"
                            " reconcile the views of this partition",
                            key,
                            sid,
                            seq + 1,
                            n - 1,
                        )
                        if self.on_gap is not None:
                            self.on_gap(key, sid)
                    seq = n
                changes.append(ch)
            if seq is not None:
                seqs[key] = seq
            pos[key] = entries[-1][0].decode()
        stats.changes += len(changes)
        return FeedBatch(changes, dict(pos))


def _int(raw: Any) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _change(source: str, sid: str, f: dict[bytes, bytes] | None) -> Change | None:
    """Decode one event (fields: docs/redis.md#events), or None if it is malformed."""
    if not f:
        return None
    try:
        op = _OPS.get(f[b"op"])
        version = int(f[b"v"])
        at = int(f.get(b"at", b"0"))
        tenant, entity, agg_id = f[b"t"].decode(), f[b"e"].decode(), f[b"id"].decode()
        row = None
        if op == "upsert":
            row = decode_row(f[b"row"])
            if row is None:
                return None
        elif op is None:
            return None
    except (KeyError, ValueError, TypeError, UnicodeDecodeError):
        return None
    if version < 1 or not tenant or not entity or not agg_id:
        return None
    return trusted(
        Change,
        {
            "tenant": tenant,
            "entity": entity,
            "agg_id": agg_id,
            "version": version,
            "op": op,
            "row": row,
            "stream_id": sid,
            "at": at,
            "source": source,
        },
    )


def _check_partitions(partitions: Iterable[int]) -> list[int]:
    out = []
    for p in partitions:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < PARTITIONS:
            raise ValueError(f"partitions: {p!r} is not a partition (0..{PARTITIONS - 1})")
        out.append(p)
    return out
