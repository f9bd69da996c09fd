"""Client construction and the reconnect backoff shared by the Redis adapters."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self

import redis.asyncio as aioredis
import redis.exceptions as rx
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from .settings import RedisSettings

__all__ = (
    "RETRYABLE",
    "Backoff",
    "ClientComponent",
    "ReadGate",
    "interruptible",
    "make_client",
    "resolve_url",
)

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


_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # the hiredis extra is optional: redis-py packs in Python
    _hiredis_pack = None


class _HiredisPack:
    """Commands packed by hiredis (C), as redis-py's sync client does; its asyncio
    client packs in Python, ~400 µs for an XREAD over 256 streams (8x hiredis)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        assert _hiredis_pack is not None
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [_hiredis_pack(args)]
        except TypeError as e:
            raise rx.DataError(str(e)) from e


class _PackedConnection(_HiredisPack, Connection):
    pass


class _PackedSSLConnection(_HiredisPack, SSLConnection):
    pass


class _PackedUnixConnection(_HiredisPack, UnixDomainSocketConnection):
    pass


def _connection_class(url: str) -> dict[str, Any]:
    """`connection_class` for `url` with hiredis packing, if hiredis is there."""
    if _hiredis_pack is None:
        return {}
    scheme = url.split("://", 1)[0]
    cls = {"redis": _PackedConnection, "rediss": _PackedSSLConnection,
           "unix": _PackedUnixConnection}.get(scheme)  # fmt: skip
    return {"connection_class": cls} if cls is not None else {}


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
            **_connection_class(url),
        )
    # A blocking pool: a burst of concurrent commands (a shard rebuilding
    # thousands of subscriptions) waits for a connection instead of failing
    # with "Too many connections" as redis-py's default pool does past 100.
    # No wait timeout: the pool is not fair (a task that just released a
    # connection takes it back before a woken waiter), so under sustained load
    # beyond `max_connections` a waiter can starve for seconds and a timeout
    # would fail it although Redis is fine. Every command still has its socket
    # timeout, so a dead server fails the commands and frees the connections.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.max_connections,
        timeout=None,
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
        **_connection_class(url),
    )
    return aioredis.Redis.from_pool(pool)  # the client owns (and closes) the pool


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


async def interruptible(coro: Awaitable[Any], wake: asyncio.Event) -> tuple[bool, Any]:
    """Await `coro` unless `wake` is set first: (True, result) or (False, None).

    An interrupted command is cancelled; redis-py then drops that connection,
    so its late reply can never be read as the next command's. Errors of
    `coro` propagate; cancellation of the caller cancels `coro` too.
    """
    task = asyncio.ensure_future(coro)
    waiter = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    if task.cancelled():
        return False, None
    return True, task.result()


class ReadGate:
    """Marks the one blocking read in flight, so `aclose` can let it end first.

    (Closing a redis-py client under a command that is still running breaks
    the pool's bookkeeping; a reader is woken, then its client closed.)
    """

    def __init__(self) -> None:
        self._idle = asyncio.Event()
        self._idle.set()

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Wrap one read (or one step of reads)."""
        self._idle.clear()
        try:
            yield
        finally:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> None:
        """Return once no read is in flight (or after `timeout_s`)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            pass


class ClientComponent:
    """A component over one Redis client: `from_url`, `async with` and `aclose`.

    `from_url` gives the component its own connection pool, which `aclose`
    closes; a component built on a shared client leaves that client open.
    """

    client_name = "raycluster"

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        settings: RedisSettings | None = None,
        owns_client: bool = False,
    ) -> None:
        self.settings = settings if settings is not None else RedisSettings.from_env()
        self.keys = self.settings.keys
        self._client = client
        self._owns_client = owns_client

    @classmethod
    def from_url(
        cls, url: str | None = None, *, settings: RedisSettings | None = None, **kw: Any
    ) -> Self:
        """The component with its own connection pool (closed by `aclose`); `kw` go to
        the constructor."""
        s = settings if settings is not None else RedisSettings.from_env()
        return cls(make_client(resolve_url(url, s), s, name=cls.client_name), settings=s,
                   owns_client=True, **kw)  # fmt: skip

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool if this component created it."""
        if self._owns_client:
            await self._client.aclose()
