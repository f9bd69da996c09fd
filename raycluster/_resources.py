"""Resources a component holds, closed explicitly or by `with` / `async with`.

`AsyncResource` (anyio's pattern): `async with x` closes `x` with `await
x.aclose()`; every component with connections or tasks is one. A `Service`
is one that also needs `await start()`: `async with` starts it (and closes
it again if the start fails). `LocalServer`:
a server this process starts and stops (`with` starts it, closes it): the
private servers of tests, demos and benchmarks (`LocalRedis`,
`LocalRedisCluster`, `LocalPostgres`). `ServerProcess`: the life cycle of a
`LocalServer` that is one child process with a port and a directory
(`LocalRedis`, `LocalPostgres`); subclasses say how to spawn it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import functools
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from raycluster.errors import RayclusterError

__all__ = (
    "AsyncResource",
    "LocalServer",
    "ServerProcess",
    "Service",
    "die_with_parent",
    "free_port",
    "on_lasting_thread",
)

HOST = "127.0.0.1"  # local servers listen here only
_PORT_ATTEMPTS = 5  # a free port can be taken between probing and binding it
_PR_SET_PDEATHSIG = 1

T = TypeVar("T")


class AsyncResource:
    """Closed by `await aclose()`, or by leaving `async with` (which returns it as is)."""

    async def aclose(self) -> None:
        """Release what it holds (idempotent)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class Service(AsyncResource):
    """An `AsyncResource` started by `await start()`; `async with` starts it, and closes
    what a start that failed halfway left behind before the error propagates."""

    async def start(self) -> None:
        """Start it (idempotent)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self


class LocalServer:
    """A server process of this process's own: `start()` it, `close()` it, or use `with`."""

    def start(self) -> Any:
        """Start the server (idempotent); subclasses return how to reach it."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the server and remove what it left (idempotent)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (it can be taken before it is bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def die_with_parent(sig: int) -> None:
    """In a child between fork and exec: get `sig` when the thread that started it
    dies, even by SIGKILL (Linux), so nothing outlives a killed run or job."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def on_lasting_thread(fn: Callable[[], T]) -> T:
    """`fn()`, run on a thread that lives as long as this process; call it to start
    processes that should die with this one.

    Linux sends a parent-death signal (`die_with_parent`; Ray's GCS and raylet
    have one too) when the *thread* that started the child ends, not the
    process. Started from a thread that ends early (a thread pool shut down,
    `asyncio.to_thread` under an event loop that ends), a server would die
    with it; a local Ray, and with it the driver 60 s later ("Failed to
    connect to GCS"). So `fn` runs on one daemon thread kept for this (at once
    on the main thread, which lasts); the caller waits, and gets its error.
    """
    if threading.current_thread() in (threading.main_thread(), _lasting.thread):
        return fn()
    done: concurrent.futures.Future[T] = concurrent.futures.Future()
    _lasting.submit(fn, done)
    return done.result()


_Call = tuple[Callable[[], Any], concurrent.futures.Future[Any]]


class _LastingThread:
    """One daemon thread, started on first use, that runs the calls it is given."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], Any], done: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, name="raycluster-spawner", daemon=True
                )
                self.thread.start()
        self._calls.put((fn, done))

    def _run(self) -> None:
        while True:
            fn, done = self._calls.get()
            if not done.set_running_or_notify_cancel():
                continue
            try:
                done.set_result(fn())
            except BaseException as e:  # (handed to the caller, which raises it)
                done.set_exception(e)


_lasting = _LastingThread()


def terminate(
    proc: subprocess.Popen[bytes], sig: int, timeout_s: float, *, then: int | None = None
) -> None:
    """Stop `proc` with `sig`; after `timeout_s`, with `then` (given 10 s more), then SIGKILL.
    Reaps it and closes its output pipe."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            if then is not None:
                proc.send_signal(then)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10.0)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


class ServerProcess(LocalServer):
    """A `LocalServer` that is one child process, on a port, with its own directory.

    The directory (`data_dir` given, else a fresh temporary one that
    `close()` removes) survives `stop()`, `kill()` and `restart()`; once
    started, the port is kept by later starts, so addresses stay valid.
    Thread-safe, from any thread: `_spawn` runs on the thread of
    `on_lasting_thread`, so the server outlives a caller's worker thread.
    Subclasses implement `_spawn(port)` (start the process and
    wait until it answers: `(True, "")`, or `(False, why)` with it reaped),
    `address()` (what `start()` returns) and may `_prepare()` the directory
    before a start.
    """

    error: ClassVar[type[RayclusterError]] = RayclusterError
    name: ClassVar[str] = "server"
    dir_prefix: ClassVar[str] = "raycluster-server-"
    stop_signal: ClassVar[int] = signal.SIGTERM  # graceful stop
    stop_then: ClassVar[int | None] = None  # a quicker stop when the graceful one hangs
    stop_timeout_s: ClassVar[float] = 10.0

    def __init__(self, *, port: int | None, data_dir: str | Path | None) -> None:
        if port is not None and not 0 < port < 65536:
            raise self.error(f"port must be in 1..65535, got {port!r}")
        self._fixed_port = port
        self._port: int | None = port
        self._own_dir = data_dir is None
        self._dir = Path(data_dir) if data_dir is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The TCP port (known once started, or given)."""
        if self._port is None:
            raise self.error("not started")
        return self._port

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        p = self._proc
        return p.pid if p is not None and p.poll() is None else None

    def _home(self) -> Path:
        """The server's own directory (`data_dir` or the one made at the first start)."""
        if self._dir is None:
            raise self.error("not started")
        return self._dir

    def address(self) -> str:
        """How to reach the server (a URL or DSN)."""
        raise NotImplementedError

    def start(self) -> str:
        """Start the server (idempotent) and return its address once it answers."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return self.address()
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix=self.dir_prefix))
            self._dir.mkdir(parents=True, exist_ok=True)
            self._prepare()
            attempts = 1 if self._fixed_port is not None else _PORT_ATTEMPTS
            last = ""
            for _ in range(attempts):
                port = self._fixed_port if self._fixed_port is not None else self._pick_port()
                ok, last = on_lasting_thread(functools.partial(self._spawn, port))
                if ok:
                    self._port = self._fixed_port = port
                    return self.address()
            raise self.error(f"{self.name} did not start: {last}")

    def _prepare(self) -> None:
        """Get the directory ready for a start (called under the lock)."""

    def _pick_port(self) -> int:
        return free_port()

    def _spawn(self, port: int) -> tuple[bool, str]:
        raise NotImplementedError

    def _started(self, proc: subprocess.Popen[bytes]) -> None:
        """Record `proc` as the running server (from `_spawn`, once it answers)."""
        self._proc = proc

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the server gracefully (its files are kept)."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None:
                wait = self.stop_timeout_s if timeout_s is None else timeout_s
                terminate(proc, self.stop_signal, wait, then=self.stop_then)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would; its files are kept."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None:
                terminate(proc, signal.SIGKILL, 10.0)

    def restart(self) -> str:
        """Stop and start again on the same port and directory."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its directory if this object created it."""
        self.stop()
        with self._lock:
            if self._own_dir and self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
