"""The unit tier reaches no server: a connect from a test, its tasks or threads is refused."""

from __future__ import annotations

import asyncio
import socket

import pytest
import redis
import redis.asyncio as aioredis
from support import free_port

REFUSED = "unit tests must not connect to a server"


def test_a_socket_connect_is_refused() -> None:
    with socket.socket() as s, pytest.raises(ConnectionRefusedError, match=REFUSED):
        s.connect(("127.0.0.1", free_port()))
    with socket.socket() as s, pytest.raises(ConnectionRefusedError, match=REFUSED):
        s.connect_ex(("127.0.0.1", free_port()))


async def test_redis_clients_are_refused_in_tasks_and_threads() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"

    def sync_ping() -> None:
        with redis.Redis.from_url(url) as c:
            c.ping()

    async def async_ping() -> None:
        c = aioredis.Redis.from_url(url)
        try:
            await c.ping()
        finally:
            await c.aclose()

    with pytest.raises(redis.ConnectionError, match=REFUSED):
        await asyncio.to_thread(sync_ping)
    with pytest.raises(redis.ConnectionError, match=REFUSED):
        await asyncio.create_task(async_ping())
