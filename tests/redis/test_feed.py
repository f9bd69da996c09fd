"""RedisFeed: positions, decoding, malformed entries, runtime partitions, reconnects, gaps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis_helpers import kill_clients
from support import wait_for

from raycluster.cluster.keys import Keys
from raycluster.cluster.routing import partition_of
from raycluster.livequery import EntitySpec, FeedBatch
from raycluster.redis import LocalRedis, RedisFeed, RedisSettings, Writer
from raycluster.redis._client import Client

SPEC = EntitySpec(name="asset", columns={"name": "str", "n": "int"})
P_ACME = partition_of("acme", "asset")
P_RIVAL = partition_of("rival", "asset")
assert P_ACME != P_RIVAL


class Collector:
    """Reads a feed in a task; keeps every batch."""

    def __init__(self, feed: RedisFeed) -> None:
        self.feed = feed
        self.batches: list[FeedBatch] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for batch in self.feed.batches():
            self.batches.append(batch)

    @property
    def changes(self) -> list[Any]:
        return [c for b in self.batches for c in b.changes]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def collecting(feed: RedisFeed) -> AsyncIterator[Collector]:
    c = Collector(feed)
    try:
        yield c
    finally:
        await c.stop()
        await feed.aclose()


@pytest.fixture
def streams(keys: Keys) -> tuple[str, str]:
    """The event streams of acme's and rival's partitions, in the deployment's form."""
    return keys.event_stream(P_ACME), keys.event_stream(P_RIVAL)


@pytest.fixture
async def writer(redis_url: str, settings: RedisSettings) -> Any:
    async with Writer.from_url(redis_url, entities=[SPEC], settings=settings) as w:
        yield w


async def test_starts_at_the_end_and_decodes(
    redis_url: str,
    settings: RedisSettings,
    writer: Writer,
    admin: Client,
    streams: tuple[str, str],
) -> None:
    s_acme, s_rival = streams
    await writer.upsert("acme", "asset", "old", {"n": 0})
    start = (await admin.xrevrange(s_acme, count=1))[0][0].decode()
    feed = RedisFeed.from_url(redis_url, partitions=[P_ACME, P_RIVAL], settings=settings)
    async with collecting(feed) as c:
        await wait_for(lambda: len(c.batches) >= 1)
        assert c.batches[0].changes == []
        assert c.batches[0].positions == {s_acme: start, s_rival: "0-0"}
        await writer.upsert("acme", "asset", "a1", {"name": "x", "n": 1})
        await writer.upsert("rival", "asset", "r1", {"n": 2})
        await writer.delete("acme", "asset", "a1")
        await wait_for(lambda: len(c.changes) == 3)
        up, dl, other = sorted(c.changes, key=lambda ch: (ch.agg_id, ch.version))
        assert (up.tenant, up.entity, up.agg_id, up.version, up.op) == (
            "acme",
            "asset",
            "a1",
            1,
            "upsert",
        )
        assert up.row == {"name": "x", "n": 1} and up.source == s_acme and up.at > 0
        assert (dl.op, dl.version, dl.row, dl.source) == ("delete", 2, None, s_acme)
        assert (other.tenant, other.source) == ("rival", s_rival)
        head = await feed.head()
        assert head == {s_acme: dl.stream_id, s_rival: other.stream_id}
        await wait_for(lambda: c.batches[-1].positions == head)
        assert feed.stats.malformed == 0 and feed.stats.gaps == 0


async def test_empty_reads_report_positions(
    redis_url: str, settings: RedisSettings, streams: tuple[str, str]
) -> None:
    s_acme, _ = streams
    feed = RedisFeed.from_url(redis_url, partitions=[P_ACME], settings=settings)
    async with collecting(feed) as c:
        await wait_for(lambda: len(c.batches) >= 3, timeout_s=5)
        assert all(b.positions == {s_acme: "0-0"} and not b.changes for b in c.batches)


async def test_malformed_entries_are_skipped_and_counted(
    redis_url: str,
    settings: RedisSettings,
    writer: Writer,
    admin: Client,
    streams: tuple[str, str],
) -> None:
    s_acme, _ = streams
    feed = RedisFeed.from_url(redis_url, partitions=[P_ACME], settings=settings)
    async with collecting(feed) as c:
        await wait_for(lambda: len(c.batches) >= 1)
        await writer.upsert("acme", "asset", "a1", {"n": 1})
        bad = [
            {"garbage": "1"},
            {"t": "acme", "e": "asset", "id": "a2", "v": "x", "op": "upsert", "row": "{}"},
            {"t": "acme", "e": "asset", "id": "a2", "v": "1", "op": "upsert", "row": "{not json"},
            {"t": "acme", "e": "asset", "id": "a2", "v": "1", "op": "upsert", "row": "[1]"},
            {"t": "acme", "e": "asset", "id": "a2", "v": "1", "op": "upsert"},
            {"t": "acme", "e": "asset", "id": "a2", "v": "1", "op": "merge", "row": "{}"},
            {"t": "acme", "e": "asset", "id": "", "v": "1", "op": "delete"},
            {"t": "acme", "e": "asset", "id": "a2", "v": "1", "op": "delete", "at": "soon"},
        ]
        for fields in bad:
            await admin.xadd(s_acme, fields)
        await writer.upsert("acme", "asset", "a3", {"n": 3})
        last = await admin.xadd(s_acme, {"x": "trailing garbage"})
        await wait_for(lambda: c.batches[-1].positions.get(s_acme) == last.decode())
        assert [ch.agg_id for ch in c.changes] == ["a1", "a3"]
        assert feed.stats.malformed == len(bad) + 1
        assert feed.stats.gaps == 0  # entries without `n` do not break the numbering


async def test_partitions_change_at_runtime(
    redis_url: str, settings: RedisSettings, writer: Writer, streams: tuple[str, str]
) -> None:
    s_acme, s_rival = streams
    feed = RedisFeed.from_url(
        redis_url, partitions=[P_ACME], settings=settings.model_copy(update={"feed_block_ms": 5000})
    )
    async with collecting(feed) as c:
        await wait_for(lambda: len(c.batches) >= 1)
        await writer.upsert("rival", "asset", "before", {"n": 0})  # not tailed yet
        await asyncio.sleep(0)
        await feed.set_partitions([P_ACME, P_RIVAL])
        rival_start = (await feed.head())[s_rival]
        # Reported in the next batch, without waiting out the 5 s block.
        await wait_for(lambda: s_rival in c.batches[-1].positions, timeout_s=2)
        assert c.batches[-1].positions[s_rival] == rival_start
        await writer.upsert("rival", "asset", "after", {"n": 1})
        await wait_for(lambda: [ch.agg_id for ch in c.changes] == ["after"], timeout_s=2)
        await feed.set_partitions([P_RIVAL])
        await wait_for(lambda: s_acme not in c.batches[-1].positions, timeout_s=2)
        await writer.upsert("acme", "asset", "ignored", {"n": 2})
        await writer.upsert("rival", "asset", "last", {"n": 3})
        await wait_for(lambda: len(c.changes) == 2, timeout_s=2)
        assert [ch.agg_id for ch in c.changes] == ["after", "last"]
        assert feed.partitions == frozenset({P_RIVAL})
        with pytest.raises(ValueError, match="partitions"):
            await feed.set_partitions([256])


async def _write_through(writer: Writer, n: int, breaker: Any, every: int) -> list[str]:
    """Write n rows (alternating partitions), calling `breaker()` every `every` writes."""
    for i in range(n):
        tenant = "acme" if i % 2 else "rival"
        await writer.upsert(tenant, "asset", f"a{i}", {"n": i})
        if i % every == every - 1:
            await breaker()
    return [f"a{i}" for i in range(n)]


def _check_exactly_once(c: Collector, expected: list[str], streams: tuple[str, str]) -> None:
    got = [ch.agg_id for ch in c.changes]
    assert sorted(got) == sorted(expected)  # nothing lost, nothing twice
    assert {ch.source for ch in c.changes} == set(streams)
    for src in streams:
        ids = [ch.stream_id for ch in c.changes if ch.source == src]
        assert ids == sorted(ids, key=lambda s: tuple(map(int, s.split("-"))))


async def test_survives_dropped_connections(
    redis_url: str, settings: RedisSettings, writer: Writer, streams: tuple[str, str]
) -> None:
    feed = RedisFeed.from_url(redis_url, partitions=[P_ACME, P_RIVAL], settings=settings)
    async with collecting(feed) as c:
        await wait_for(lambda: len(c.batches) >= 1)

        async def breaker() -> None:
            await kill_clients(redis_url)

        expected = await _write_through(writer, 300, breaker, 40)
        await wait_for(lambda: len(c.changes) >= len(expected))
        _check_exactly_once(c, expected, streams)
        assert feed.stats.reconnects >= 1


async def test_survives_a_redis_restart(
    restartable: LocalRedis, settings: RedisSettings, streams: tuple[str, str]
) -> None:
    url = restartable.url
    feed = RedisFeed.from_url(url, partitions=[P_ACME, P_RIVAL], settings=settings)
    async with (
        Writer.from_url(url, entities=[SPEC], settings=settings) as writer,
        collecting(feed) as c,
    ):
        await wait_for(lambda: len(c.batches) >= 1)

        async def breaker() -> None:
            await asyncio.to_thread(restartable.restart)

        expected = await _write_through(writer, 120, breaker, 50)
        await wait_for(lambda: len(c.changes) >= len(expected))
        _check_exactly_once(c, expected, streams)
        assert feed.stats.reconnects >= 1 and feed.stats.gaps == 0


async def test_trimmed_gap_is_detected(
    redis_url: str,
    settings: RedisSettings,
    writer: Writer,
    admin: Client,
    streams: tuple[str, str],
) -> None:
    s_acme, _ = streams
    gaps: list[tuple[str, str]] = []
    feed = RedisFeed.from_url(
        redis_url, partitions=[P_ACME], settings=settings, on_gap=lambda s, i: gaps.append((s, i))
    )
    try:
        batches = feed.batches()
        first = await anext(batches)
        assert first.positions == {s_acme: "0-0"}
        await writer.upsert_many("acme", "asset", {f"a{i}": {"n": i} for i in range(50)})
        await admin.xtrim(s_acme, maxlen=10, approximate=False)  # 40 events never read
        got: list[Any] = []
        while len(got) < 10:
            got += (await anext(batches)).changes
        assert [ch.agg_id for ch in got] == [f"a{i}" for i in range(40, 50)]
        assert feed.gaps == 1 and gaps and gaps[0][0] == s_acme
        await writer.upsert("acme", "asset", "next", {"n": 0})
        while not (await anext(batches)).changes:
            pass
        assert feed.gaps == 1
        await batches.aclose()  # type: ignore[attr-defined]
    finally:
        await feed.aclose()


async def test_one_reader_at_a_time(redis_url: str, settings: RedisSettings) -> None:
    feed = RedisFeed.from_url(redis_url, partitions=[P_ACME], settings=settings)
    async with collecting(feed) as c:
        await wait_for(lambda: len(c.batches) >= 1)
        with pytest.raises(RuntimeError):
            await anext(feed.batches())


async def test_close_ends_the_iteration(redis_url: str, settings: RedisSettings) -> None:
    feed = RedisFeed.from_url(
        redis_url,
        partitions=[P_ACME],
        settings=settings.model_copy(update={"feed_block_ms": 10_000}),
    )
    c = Collector(feed)
    await wait_for(lambda: len(c.batches) >= 1)
    await feed.aclose()
    await asyncio.wait_for(c.task, 2)  # the blocked 10 s read was interrupted
