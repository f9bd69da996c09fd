"""Control bus (consumer group, ack, redelivery) and delta bus (resume by id), with failures."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis_helpers import client_list, kill_clients
from support import wait_for

from raycluster.cluster.keys import Keys
from raycluster.cluster.protocol import Control
from raycluster.livequery import DeltaOp, LiveDelta
from raycluster.redis import (
    ControlMessage,
    ControlStream,
    DeltaStream,
    LocalRedis,
    RedisControlBus,
    RedisDeltaBus,
    RedisSettings,
)
from raycluster.redis._client import Client


def ctl(sub: str, op: str = "subscribe") -> Control:
    return Control(op=op, sub_id=sub, gateway_id="gw-1", tenant="acme", partition=3)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def draining(
    stream: ControlStream | DeltaStream, on_item: Callable[[Any], Awaitable[None]]
) -> AsyncIterator[asyncio.Task[None]]:
    """Read `stream` in a task, handing each item to `on_item`."""

    async def run() -> None:
        async for item in stream:
            await on_item(item)

    task = asyncio.create_task(run())
    try:
        yield task
    finally:
        await stream.aclose()
        await asyncio.wait_for(task, 5)


# -- control -----------------------------------------------------------------------------


async def test_messages_sent_before_any_reader_arrive(
    redis_url: str, settings: RedisSettings
) -> None:
    async with RedisControlBus.from_url(redis_url, settings=settings) as bus:
        await bus.send_control("shard-a", ctl("s1"))
        await bus.send_control("shard-a", {"op": "unsubscribe", "sub_id": "s1", "gateway_id": "g"})
        await bus.send_control("shard-b", ctl("other"))
        pairs = bus.controls("shard-a")
        (id1, c1), (id2, c2) = await anext(pairs), await anext(pairs)
        assert c1 == ctl("s1") and (c2.op, c2.sub_id) == ("unsubscribe", "s1")
        assert await bus.pending("shard-a") == 2
        await bus.ack("shard-a", id1, id2)
        assert await bus.pending("shard-a") == 0
        await pairs.aclose()


async def test_unacked_messages_are_redelivered_to_a_restarted_reader(
    redis_url: str, settings: RedisSettings
) -> None:
    async with RedisControlBus.from_url(redis_url, settings=settings) as bus:
        for i in range(4):
            await bus.send_control("shard-a", ctl(f"s{i}"))
        first = bus.control("shard-a")
        got = [await anext(first) for _ in range(4)]
        await first.ack(got[0])
        await first.ack(got[2].id)
        await first.aclose()  # "crash" with s1, s3 taken but not acknowledged
        await bus.send_control("shard-a", ctl("s4"))  # sent while no reader runs
        again = bus.control("shard-a")
        redelivered = [await anext(again) for _ in range(3)]
        assert [m.body["sub_id"] for m in redelivered] == ["s1", "s3", "s4"]
        assert [m.id for m in redelivered[:2]] == [got[1].id, got[3].id]
        await again.ack(*redelivered)
        assert await bus.pending("shard-a") == 0
        await again.aclose()


async def test_malformed_controls_are_skipped_and_acked(
    redis_url: str, settings: RedisSettings, admin: Client, keys: Keys
) -> None:
    key = keys.ctrl_stream("shard-a")
    async with RedisControlBus.from_url(redis_url, settings=settings) as bus:
        await admin.xadd(key, {"c": "{not json"})
        await admin.xadd(key, {"x": "1"})
        await admin.xadd(key, {"c": "[1]"})
        await bus.send_control("shard-a", {"op": "bogus"})  # JSON, but not a Control
        await bus.send_control("shard-a", ctl("good"))
        pairs = bus.controls("shard-a")
        _, c = await anext(pairs)
        assert c.sub_id == "good"
        assert bus.stats.malformed == 4
        assert await bus.pending("shard-a") == 1  # only the good one awaits its ack
        await pairs.aclose()


async def _control_exactly_once(
    url: str, settings: RedisSettings, breaker: Callable[[], Awaitable[None]], n: int, every: int
) -> None:
    seen: list[str] = []
    async with RedisControlBus.from_url(url, settings=settings) as bus:
        stream = bus.control("shard-a")

        async def handle(msg: ControlMessage) -> None:
            seen.append(msg.body["sub_id"])
            await stream.ack(msg)

        async with draining(stream, handle):
            for i in range(n):
                await bus.send_control("shard-a", ctl(f"s{i}"))
                if i % every == every - 1:
                    await breaker()
            await wait_for(lambda: len(seen) >= n)
            assert seen == [f"s{i}" for i in range(n)]
        assert await bus.pending("shard-a") == 0
        assert bus.stats.reconnects >= 1


async def test_control_survives_dropped_connections(
    redis_url: str, settings: RedisSettings
) -> None:
    async def breaker() -> None:
        await kill_clients(redis_url)

    await _control_exactly_once(redis_url, settings, breaker, 200, 40)


async def test_control_survives_a_redis_restart(
    restartable: LocalRedis, settings: RedisSettings
) -> None:
    async def breaker() -> None:
        await asyncio.to_thread(restartable.restart)

    await _control_exactly_once(restartable.url, settings, breaker, 60, 25)


# -- delta -------------------------------------------------------------------------------


async def test_deltas_from_now_and_resume_by_id(redis_url: str, settings: RedisSettings) -> None:
    frame = LiveDelta(op=DeltaOp.ENTER, agg_id="a1", version=2, row={"n": 1}, new_index=0)
    async with RedisDeltaBus.from_url(redis_url, settings=settings) as bus:
        await bus.send("gw-1", [["old", 1, 1, {}]])  # before the reader: not delivered
        stream = bus.deltas("gw-1")
        got: list[list[Any]] = []

        async def take(frames: list[Any]) -> None:
            got.append(frames)

        async with draining(stream, take):
            await wait_for(lambda: stream.last_id != "$")
            await bus.send("gw-1", [["s1", 1, 7, frame], ["s2", 1, 7, {"op": "reset"}]])
            await bus.send("gw-1", [])
            await bus.send("gw-2", [["elsewhere", 1, 1, {}]])
            await wait_for(lambda: len(got) == 2)
            mark = stream.last_id
        assert got[0][0] == ["s1", 1, 7, frame.model_dump(mode="json")]
        assert got[1] == []
        await bus.send("gw-1", [["s1", 2, 7, {}]])
        await bus.send("gw-1", [["s1", 3, 7, {}]])
        resumed = bus.deltas("gw-1", last_id=mark)
        later = [await anext(resumed), await anext(resumed)]
        assert [b[0][1] for b in later] == [2, 3]
        await resumed.aclose()


async def test_delta_stream_is_bounded_and_skips_malformed(
    redis_url: str, settings: RedisSettings, admin: Client, keys: Keys
) -> None:
    s = settings.model_copy(update={"delta_maxlen": 50})
    async with RedisDeltaBus.from_url(redis_url, settings=s) as bus:
        for i in range(500):
            await bus.send("gw-1", [[f"s{i}", i, 1, {}]])
        assert 50 <= await admin.xlen(keys.delta_channel("gw-1")) <= 250
        await admin.xadd(keys.delta_channel("gw-2"), {"f": "{bad"})
        await admin.xadd(keys.delta_channel("gw-2"), {"g": "[]"})
        await bus.send("gw-2", [["ok", 1, 1, {}]])
        stream = bus.deltas("gw-2", last_id="0-0")
        assert await anext(stream) == [["ok", 1, 1, {}]]
        assert bus.stats.malformed == 2
        await stream.aclose()


async def _deltas_exactly_once(
    url: str, settings: RedisSettings, breaker: Callable[[], Awaitable[None]], n: int, every: int
) -> None:
    got: list[int] = []
    async with RedisDeltaBus.from_url(url, settings=settings) as bus:
        stream = bus.deltas("gw-1", last_id="0-0")

        async def take(frames: list[Any]) -> None:
            got.extend(f[1] for f in frames)

        async with draining(stream, take):
            for i in range(n):
                await bus.send("gw-1", [["s", 2 * i, 1, {}], ["s", 2 * i + 1, 1, {}]])
                if i % every == every - 1:
                    await breaker()
            await wait_for(lambda: len(got) >= 2 * n)
        assert got == list(range(2 * n))
        assert bus.stats.reconnects >= 1


async def test_deltas_survive_dropped_connections(redis_url: str, settings: RedisSettings) -> None:
    async def breaker() -> None:
        await kill_clients(redis_url)

    await _deltas_exactly_once(redis_url, settings, breaker, 200, 40)


async def test_deltas_survive_a_redis_restart(
    restartable: LocalRedis, settings: RedisSettings
) -> None:
    async def breaker() -> None:
        await asyncio.to_thread(restartable.restart)

    await _deltas_exactly_once(restartable.url, settings, breaker, 60, 25)


async def test_bus_close_ends_open_readers(
    redis_url: str, settings: RedisSettings, admin: Client
) -> None:
    s = settings.model_copy(update={"bus_block_ms": 10_000})
    bus = RedisControlBus.from_url(redis_url, settings=s)
    stream = bus.control("shard-a")
    task = asyncio.create_task(anext(stream))

    async def blocked() -> bool:
        clients = await client_list(admin)
        return any(
            c.get("name") == "raycluster-ctrl-read" and c.get("cmd") == "xreadgroup"
            for c in clients
        )

    await wait_for(blocked)
    await asyncio.wait_for(bus.aclose(), 2)  # does not wait out the 10 s block
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(task, 2)
