"""Client construction and the reconnect backoff shared by the Redis adapters."""

from __future__ import annotations

import asyncio
import random

import redis.asyncio as aioredis
import redis.exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from .settings import RedisSettings

__all__ = ("RETRYABLE", "Backoff", "make_client", "resolve_url")

# What a blocking reader treats as "connection lost: back off and resume".
# BusyLoadingError (a ConnectionError) covers a restarted server still loading its AOF.
RETRYABLE: tuple[type[BaseException], ...] = (rx.ConnectionError, rx.TimeoutError, OSError)


def resolve_url(url: str | None, settings: RedisSettings) -> str:
    """`url`, else the configured one; a clear error when there is none."""
    found = url if url is not None else settings.redis_url
    if not found:
        raise ValueError(
            "no Redis URL: pass one, set RAYCLUSTER_REDIS_URL, or use raycluster.local_redis()"
        )
    return found


def make_client(
    url: str, settings: RedisSettings, *, blocking_ms: int | None = None, name: str | None = None
) -> aioredis.Redis:
    """An asyncio client (bytes replies, hiredis parser when installed).

    `blocking_ms` makes a single-connection client for one blocking reader: its
    reply timeout covers the block, and redis-py's own retry is off because the
    reader must see a lost connection (to re-read what it had in flight).
    Command clients retry a dropped connection `command_retries` times.
    """
    if blocking_ms is not None:
        return aioredis.Redis.from_url(
            url,
            decode_responses=False,
            socket_connect_timeout=settings.connect_timeout_s,
            socket_timeout=blocking_ms / 1000 + settings.socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
            single_connection_client=True,
            client_name=name,
        )
    return aioredis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=settings.connect_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        retry=Retry(
            ExponentialWithJitterBackoff(
                base=settings.reconnect_min_s, cap=settings.reconnect_max_s
            ),
            settings.command_retries,
        ),
        client_name=name,
    )


class Backoff:
    """Exponential backoff with jitter between reconnect attempts."""

    def __init__(self, min_s: float, max_s: float) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self._next_s = min_s

    def reset(self) -> None:
        """After a success: the next failure waits the minimum again."""
        self._next_s = self.min_s

    async def sleep(self) -> None:
        """Wait the current delay (with jitter), then double it up to the ceiling."""
        delay_s = self._next_s * (0.5 + random.random() / 2)
        self._next_s = min(self._next_s * 2, self.max_s)
        await asyncio.sleep(delay_s)
