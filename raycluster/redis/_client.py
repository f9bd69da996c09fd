"""Client construction and the reconnect backoff shared by the Redis adapters."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Self

import redis.asyncio as aioredis
import redis.exceptions as rx
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from raycluster._resources import AsyncResource
from raycluster.cluster.routing import PARTITIONS

from .errors import UNREACHABLE
from .settings import RedisSettings

__all__ = (
    "Client",
    "ClientComponent",
    "ClusterClient",
    "ReadGate",
    "interruptible",
    "make_client",
    "resolve_url",
)


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


Client = aioredis.Redis | RedisCluster
"""A client of a standalone Redis or of a Redis Cluster (`RedisSettings.redis_cluster`)."""


def _command_retry(settings: RedisSettings) -> Retry:
    """A command client's retry of a dropped connection (with backoff).

    A timeout is not retried: a server that accepts but never answers would
    make a command wait `command_retries + 1` timeouts (the cluster client
    does not retry one either). Nor is a refused password: a retry sends the
    same one.
    """
    backoff = ExponentialWithJitterBackoff(
        base=settings.reconnect_min_s, cap=settings.reconnect_max_s
    )
    return Retry(backoff, settings.command_retries, is_retryable=_retryable)


def _retryable(error: Exception) -> bool:
    return not isinstance(error, rx.TimeoutError | rx.AuthenticationError)


class ClusterClient(RedisCluster):
    """A Redis Cluster client that survives the death of nodes (redis-py's does not quite).

    * redis-py asks its default node (`COMMAND GETKEYS`) which keys an XREAD
      or XREADGROUP names, and once that node has died it keeps asking it: no
      stream read works again. Every stream read here names streams of one
      slot, so it is routed by its first stream's key instead.
    * With `limit`, at most that many commands are in flight; more wait for a
      slot. (redis-py's cluster nodes fail a command at once, "Too many
      connections", when their pool is full; a standalone client waits for a
      connection, `BlockingConnectionPool`, and so does this one.)
    * Learning the slot map again after a lost connection is retried as
      the client's commands are (`retry`): redis-py runs it outside its
      command retries, so one connection cut while it ran failed the command.
      A timeout is not retried: a node that does not answer would multiply
      the wait (redis-py already asks every known node in turn).
    * When no known node can be reached, redis-py raises a bare
      `RedisClusterException` (not even a `RedisError`): it is a
      `ConnectionError` here, so callers see "unavailable" as they do for a
      standalone server, and readers back off and retry.
    * `aclose` closes every node's connections, those a failover dropped from
      the map included. (redis-py's skips them while the client is marked for
      re-initialization, as it is after any lost connection, and forgets the
      dropped nodes: both leaked connections.)
    * A command that takes a free connection redis-py is tearing down (after
      another command lost its own) fails with `ConnectionError`, and is
      retried, instead of an `AttributeError` (`_ClusterConnection`).
    """

    def __init__(self, *args: Any, limit: int | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._known: dict[int, Any] = {}  # every node this client has used, by identity
        self._slots: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Semaphore(limit) if limit is not None else contextlib.nullcontext()
        )
        nodes = self.nodes_manager
        cls = _CLUSTER_CONNECTIONS.get(nodes.connection_kwargs.get("connection_class"))
        if cls is not None:
            nodes.connection_kwargs["connection_class"] = cls
            for node in nodes.startup_nodes.values():
                node.connection_class = cls

    async def initialize(self, *args: Any, **kw: Any) -> RedisCluster:
        async def once() -> RedisCluster:
            try:
                return await super(ClusterClient, self).initialize(*args, **kw)
            except rx.RedisClusterException as e:
                cause = e.__cause__
                if isinstance(cause, rx.AuthenticationError):  # its own error: not "unavailable"
                    raise rx.AuthenticationError(str(cause)) from e
                if isinstance(cause, rx.TimeoutError):
                    raise rx.TimeoutError(str(e)) from e  # (not retried)
                if isinstance(cause, UNREACHABLE):
                    raise rx.ConnectionError(str(e)) from e
                raise

        if not self._initialize:  # the slot map is known: nothing to retry
            return self
        for node in self.nodes_manager.nodes_cache.values():  # (a refresh may drop some)
            self._known[id(node)] = node
        return await self.retry.call_with_retry(once, _no_op, _retryable)

    async def aclose(self) -> None:
        await super().aclose()
        await self.nodes_manager.aclose()
        await self.nodes_manager.aclose("startup_nodes")
        # Nodes a failover dropped from the map may still hold connections (a read
        # that was blocked on them): redis-py no longer knows them, this client does.
        await asyncio.gather(*(node.disconnect() for node in self._known.values()))

    @asynccontextmanager
    async def connection_for(self, key: str) -> AsyncIterator[Connection]:
        """A connection to the master serving `key`'s slot, for a raw pipeline of
        commands on that slot (`Writer`), counted against `limit`. An error
        disconnects it (replies may still be due); a lost connection or a moved
        slot makes the client learn the slot map again before its next command."""
        await self.initialize()
        async with self._slots:
            node = self.get_node_from_key(key)
            if node is None:
                raise rx.SlotNotCoveredError(f"no master serves the slot of {key!r}")
            conn = node.acquire_connection()
            try:
                yield conn
            except BaseException as e:
                await conn.disconnect()
                if isinstance(e, UNREACHABLE):
                    self._initialize = True
                raise
            finally:
                node.release(conn)

    async def execute_command(self, *args: Any, **kw: Any) -> Any:
        if "target_nodes" not in kw and _word(args[0]) in _STREAM_READS:
            await self.initialize()  # (a no-op once the slot map is known)
            at = next(i for i, a in enumerate(args) if _word(a) == "STREAMS")
            kw["target_nodes"] = self.get_node_from_key(args[at + 1])
            try:
                return await self._limited(*args, **kw)
            except rx.ResponseError as e:
                if str(e).startswith("UNBLOCKED"):  # its master became a replica
                    raise rx.ConnectionError(str(e)) from e
                raise
        return await self._limited(*args, **kw)

    async def _limited(self, *args: Any, **kw: Any) -> Any:
        async with self._slots:
            return await super().execute_command(*args, **kw)


class _ClusterConnection(Connection):
    """A cluster node's connection that reports being torn down under a command
    (and packs commands with hiredis, as `_PackedConnection` does, when it can)."""

    if _hiredis_pack is not None:
        pack_command = _HiredisPack.pack_command

    async def _send_packed_command(self, command: Any) -> None:
        # redis-py disconnects a node's free connections when a command on the
        # node loses its own, and a command that took one of them meanwhile
        # finds no writer: the connection is lost (retried), not a bug.
        if self._writer is None:
            raise rx.ConnectionError("connection closed while a command was sent")
        await super()._send_packed_command(command)


class _ClusterSSLConnection(_ClusterConnection, SSLConnection):
    pass


_CLUSTER_CONNECTIONS: dict[Any, type[Connection]] = {
    Connection: _ClusterConnection,
    SSLConnection: _ClusterSSLConnection,
}


async def _no_op(error: Exception) -> None:
    pass


_STREAM_READS = frozenset({"XREAD", "XREADGROUP"})


def _word(arg: Any) -> str:
    return (arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)).upper()


def _cluster_client(
    url: str, settings: RedisSettings, blocking_ms: int | None, name: str | None
) -> RedisCluster:
    """A Redis Cluster client from a seed node's URL (it learns the rest from the node).

    A blocking one holds a connection per concurrent read (`RedisFeed` reads
    each partition on its own), so its nodes allow one per partition.
    """
    common: dict[str, Any] = {
        "decode_responses": False,
        "socket_connect_timeout": settings.connect_timeout_s,
        "client_name": name,
    }
    if blocking_ms is not None:
        return ClusterClient.from_url(
            url,
            socket_timeout=blocking_ms / 1000 + settings.socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
            max_connections=PARTITIONS + settings.max_connections,
            **common,
        )
    return ClusterClient.from_url(
        url,
        limit=settings.max_connections,
        socket_timeout=settings.socket_timeout_s,
        retry=_command_retry(settings),
        max_connections=2 * settings.max_connections,  # pipelines bypass the limit
        **common,
    )


def make_client(
    url: str, settings: RedisSettings, *, blocking_ms: int | None = None, name: str | None = None
) -> Client:
    """An asyncio client (bytes replies, hiredis parser when installed); a cluster
    client when `settings.redis_cluster`.

    `blocking_ms` makes a single-connection client for one blocking reader: its
    reply timeout covers the block, and redis-py's own retry is off because the
    reader must see a lost connection (to re-read what it had in flight).
    Command clients retry a dropped connection `command_retries` times.
    """
    if settings.redis_cluster:
        return _cluster_client(url, settings, blocking_ms, name)
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
        retry=_command_retry(settings),
        client_name=name,
        **_connection_class(url),
    )
    return aioredis.Redis.from_pool(pool)  # the client owns (and closes) the pool


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


_CANCEL_GRACE_S = 1.0  # how long a woken read may take to end before its connection is cut


class ReadGate:
    """The one blocking read of a client in flight, and the closing of that client.

    Closing a redis-py client under a command that still runs corrupts its
    pool (the command's own release then fails), and a cancelled blocking
    read does not always end at once (a cancel that lands while the
    connection is being set up can be lost, and the read blocks its full
    time). So `close` waits for the read to end, cuts the connection if it
    does not, and closes the client only once no read runs; a read that
    outlives all that closes the client itself when it ends.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._closed = False

    @asynccontextmanager
    async def busy(self) -> AsyncIterator[None]:
        """Wrap one read (or one step of reads)."""
        self._idle.clear()
        try:
            yield
        finally:
            self._idle.set()
            if self._closing:
                await self._close_client()

    async def close(self, timeout_s: float) -> None:
        """Close the client once its read (already woken by the caller) has ended."""
        self._closing = True
        if not await self._wait_idle(min(timeout_s, _CANCEL_GRACE_S)):
            conn = getattr(self.client, "connection", None)  # a single-connection client's
            if conn is not None:
                await conn.disconnect()  # the read fails at once with a connection error
            if not await self._wait_idle(timeout_s):
                return  # the read closes the client when it ends
        await self._close_client()

    async def _wait_idle(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def _close_client(self) -> None:
        if not self._closed:
            self._closed = True
            await self.client.aclose()


class ClientComponent(AsyncResource):
    """A component over one Redis client: `from_url`, `async with` and `aclose`.

    `from_url` gives the component its own connection pool, which `aclose`
    closes; a component built on a shared client leaves that client open.
    """

    client_name = "raycluster"

    def __init__(
        self,
        client: Client,
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

    async def aclose(self) -> None:
        """Close the connection pool if this component created it."""
        if self._owns_client:
            await self._client.aclose()
