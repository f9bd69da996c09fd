"""`connect` and the Redis adapters against servers that misbehave (issue 16, item 10).

A server that accepts but never answers fails a call after one socket
timeout (a timeout is not retried); a refused password is an
`AuthenticationError`, never retried and never "unavailable", whose message
holds no password. Each runs with standalone and cluster settings; the
servers are this test's own (a silent TCP listener, a private redis-server
with `requirepass`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from raycluster._connect import connect
from raycluster.config import TierSettings
from raycluster.errors import AuthenticationError, ConfigError, UnavailableError
from raycluster.redis import LocalRedis, RedisFeed, RedisSettings, RedisStore, Writer
from raycluster.redis.errors import RedisUnavailable

pytestmark = pytest.mark.redis

PASSWORD = "s3cret-Pa55word"


def tier(*, cluster: bool) -> TierSettings:
    return TierSettings(
        redis=RedisSettings(
            redis_cluster=cluster,
            socket_timeout_s=0.5,
            connect_timeout_s=0.5,
            command_retries=3,
            reconnect_min_s=0.01,
            reconnect_max_s=0.05,
        )
    )


class Silent:
    """A TCP listener that accepts connections and never answers; counts them."""

    def __init__(self) -> None:
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Silent:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            try:
                while await reader.read(4096):
                    pass
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize("cluster", [False, True], ids=["standalone", "cluster"])
async def test_a_server_that_never_answers_fails_after_one_timeout(cluster: bool) -> None:
    async with Silent() as silent:
        with pytest.raises(RedisUnavailable) as info:
            await connect(silent.url, tier(cluster=cluster))
        assert isinstance(info.value, UnavailableError)
        # One connection, one timeout: not command_retries + 1 of them.
        assert silent.accepted == 1


@pytest.mark.parametrize("cluster", [False, True], ids=["standalone", "cluster"])
async def test_one_command_to_a_silent_server_is_not_retried(cluster: bool) -> None:
    async with Silent() as silent:
        s = tier(cluster=cluster).redis
        async with Writer.from_url(silent.url, settings=s) as w:
            with pytest.raises(RedisUnavailable):
                await w.get("acme", "thing", "a1")
        assert silent.accepted == 1


@pytest.fixture(scope="module")
def secured() -> Iterator[LocalRedis]:
    """A private server that requires PASSWORD."""
    with LocalRedis(password=PASSWORD) as srv:
        yield srv


@pytest.fixture
async def connections(secured: LocalRedis) -> AsyncIterator[Any]:
    """How many connections the secured server has accepted so far (this one excluded)."""
    admin = aioredis.Redis.from_url(secured.url)
    await admin.ping()

    async def count() -> int:
        return int((await admin.info("stats"))["total_connections_received"])

    try:
        yield count
    finally:
        await admin.aclose()


def _no_password(e: BaseException) -> None:
    """Neither `e` nor anything it was raised from mentions the password."""
    todo, met = [e], set()
    while todo:
        seen = todo.pop()
        if id(seen) in met:
            continue
        met.add(id(seen))
        for text in (str(seen), repr(seen), *map(str, seen.args)):
            assert PASSWORD not in text and "wrong-Pa55" not in text, text
        todo += [x for x in (seen.__cause__, seen.__context__) if x is not None]


@pytest.mark.parametrize("cluster", [False, True], ids=["standalone", "cluster"])
@pytest.mark.parametrize("given", ["wrong", "none"])
async def test_a_refused_password_is_its_own_error(
    secured: LocalRedis, connections: Any, cluster: bool, given: str
) -> None:
    url = (
        secured.url.replace(PASSWORD, "wrong-Pa55")
        if given == "wrong"
        else secured.url.replace(f":{PASSWORD}@", "")
    )
    assert PASSWORD not in url
    before = await connections()
    with pytest.raises(AuthenticationError) as info:
        await connect(url, tier(cluster=cluster))
    assert not isinstance(info.value, UnavailableError)
    _no_password(info.value)
    assert await connections() - before == 1  # refused once, never retried
    # The adapters say the same, the blocking feed included (it does not retry for ever).
    s = tier(cluster=cluster).redis
    async with Writer.from_url(url, settings=s) as w:
        with pytest.raises(AuthenticationError) as info:
            await w.upsert("acme", "thing", "a1", {"x": 1})
        _no_password(info.value)
    async with RedisStore.from_url(url, settings=s) as store:
        with pytest.raises(AuthenticationError):
            await store.rows("acme", "thing")
    feed = RedisFeed.from_url(url, partitions=[1], settings=s)
    try:
        with pytest.raises(AuthenticationError):
            async with asyncio.timeout(10):
                async for _ in feed.batches():
                    pass
    finally:
        await feed.aclose()


async def test_the_right_password_connects(secured: LocalRedis) -> None:
    gw = await connect(secured.url, tier(cluster=False))
    try:
        assert gw.redis_url == secured.url
    finally:
        await gw.aclose()


@pytest.mark.parametrize(
    "url", ["http://:hunter2-secret@host:6379", "localhost:6379", "", None, 6379]
)
async def test_connect_refuses_what_is_not_a_redis_url(url: Any) -> None:
    with pytest.raises(ConfigError) as info:
        await connect(url, tier(cluster=False))
    assert "hunter2-secret" not in str(info.value)
