"""A private PostgreSQL server for tests, the `--postgres` demo and the benchmark.

The server is always one this process created (`initdb` in its own directory)
and started, on a port it chose (or was given), listening on 127.0.0.1 and on
a Unix socket inside its own directory, with `wal_level=logical`. It never
touches another server (the machine's own on 5432 included): readiness is
read from the `postmaster.pid` of its own data directory, whose pid must be
the child this object started.

Postgres refuses to run as root. Run as root (as CI is), the server and
`initdb` run as the unprivileged `postgres` user (Debian's package creates
it; `RAYCLUSTER_PG_USER` names another), owning the server's directory.
The binaries are found in `RAYCLUSTER_PG_BIN`, else `pg_config --bindir`,
else the newest `/usr/lib/postgresql/*/bin` (Debian's layout), else PATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

from raycluster._resources import (
    HOST,
    ServerProcess,
    die_with_parent,
    terminate,
)
from raycluster.errors import RayclusterError

__all__ = ("LocalPostgres", "LocalPostgresError", "local_postgres", "postgres_bin_dir")

_POLL_S = 0.05  # readiness poll interval while the server starts
_DEFAULT_USER = "postgres"  # the OS user a root process runs the server as


class LocalPostgresError(RayclusterError):
    """Raised when a local PostgreSQL cannot be found, initialised or started."""


def postgres_bin_dir(bin_dir: str | Path | None = None) -> Path:
    """The directory of `initdb` and `postgres`: `bin_dir`, `RAYCLUSTER_PG_BIN`,
    `pg_config --bindir`, the newest `/usr/lib/postgresql/*/bin`, or PATH."""
    candidates: list[Path] = []
    given = bin_dir or os.environ.get("RAYCLUSTER_PG_BIN")
    if given:
        candidates.append(Path(given))
    else:
        pg_config = shutil.which("pg_config")
        if pg_config:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(
                    [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
                ).stdout.strip()
                candidates.append(Path(out))
        debian = sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
            reverse=True,
        )
        candidates += debian
        initdb = shutil.which("initdb")
        if initdb:
            candidates.append(Path(initdb).parent)
    for c in candidates:
        if (c / "initdb").exists() and (c / "postgres").exists():
            return c
    where = given or "pg_config, /usr/lib/postgresql/*/bin or PATH"
    raise LocalPostgresError(
        f"no PostgreSQL server binaries (initdb, postgres) in {where}: install Debian's "
        "`postgresql` (tests/setup.sh does) or set RAYCLUSTER_PG_BIN"
    )


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("RAYCLUSTER_PG_USER", _DEFAULT_USER)
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise LocalPostgresError(
            f"running as root, and Postgres refuses root: no OS user {name!r} to run it as "
            "(Debian's `postgresql` package creates `postgres`; tests/setup.sh installs it; "
            "RAYCLUSTER_PG_USER names another)"
        ) from None


class LocalPostgres(ServerProcess):
    """One private PostgreSQL server: `start()`, `stop()`, `kill()`, `restart()`, `close()`.

    The data directory (default: a fresh temporary one, removed by
    `close()`) survives `stop()`/`kill()`/`restart()`, so does the data.
    `settings` are extra `postgresql.conf` lines (e.g.
    `{"max_slot_wal_keep_size": "1MB"}`); `durable=False` (the default)
    turns `fsync` off: fine for tests, which never outlive the machine.
    `wal_segment_mb` sets the WAL segment size (small ones let a test
    invalidate a slot with little WAL).
    `kill()` is a crash (SIGKILL of the postmaster; the next start recovers).
    Usable as a context manager. Thread-safe.
    """

    error = LocalPostgresError
    name = "postgres"
    dir_prefix = "raycluster-pg-"
    stop_signal = signal.SIGINT  # fast shutdown: clients disconnected, a checkpoint written
    stop_then = signal.SIGQUIT  # immediate shutdown
    stop_timeout_s = 30.0

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | Path | None = None,
        bin_dir: str | Path | None = None,
        settings: Mapping[str, str] | None = None,
        durable: bool = False,
        wal_segment_mb: int | None = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        super().__init__(port=port, data_dir=data_dir)
        self.bin_dir = postgres_bin_dir(bin_dir)
        self.settings = dict(settings or {})
        self.durable = durable
        self.wal_segment_mb = wal_segment_mb
        self.startup_timeout_s = startup_timeout_s
        self._user = _run_as()

    # -- where it is ---------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (`PGDATA`)."""
        return self._home() / "data"

    def address(self) -> str:
        """The server's DSN (`dsn()`)."""
        return self.dsn()

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """A libpq URL of the server over TCP: `postgresql://user@127.0.0.1:PORT/dbname`."""
        return f"postgresql://{quote(user, safe='')}@{HOST}:{self.port}/{quote(dbname, safe='')}"

    # -- lifecycle -------------------------------------------------------------------------

    def _prepare(self) -> None:
        self._own(self._home())
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()

    def kill(self) -> None:
        """Kill the postmaster at once (SIGKILL), as a crash would; the next start recovers.

        Its backends notice their postmaster is gone and exit by themselves."""
        super().kill()
        # A new postmaster cannot start while the old one's backends still hold
        # its shared memory: wait for them (they exit within moments).
        self._wait_orphans_gone()

    # -- internals -------------------------------------------------------------------------

    def _own(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)
        path.chmod(0o700)

    def _preexec(self) -> None:
        # Runs in the child between fork and exec. The user first: a change of
        # credentials clears the parent-death signal, so that comes after.
        user = self._user
        if user is not None:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        die_with_parent(signal.SIGINT)  # fast shutdown
        os.setsid()  # Ctrl-C in a terminal must not reach it before its users shut down

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self._user is not None:
            env["HOME"] = self._user.pw_dir
            env["USER"] = env["LOGNAME"] = self._user.pw_name
        return env

    def _initdb(self) -> None:
        cmd = [
            str(self.bin_dir / "initdb"),
            "-D", str(self.data_dir),
            "-U", "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            *([f"--wal-segsize={self.wal_segment_mb}"] if self.wal_segment_mb else []),
        ]  # fmt: skip
        res = subprocess.run(
            cmd,
            cwd=self._home(),
            env=self._env(),
            preexec_fn=self._preexec,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if res.returncode != 0:
            raise LocalPostgresError(f"initdb failed: {(res.stdout + res.stderr)[-800:]}")
        conf = {
            "listen_addresses": f"'{HOST}'",
            "unix_socket_directories": f"'{self._home()}'",
            "wal_level": "logical",
            "max_replication_slots": "20",
            "max_wal_senders": "20",
            "max_connections": "100",
            "fsync": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
            "shared_buffers": "64MB",
            "logging_collector": "off",
            "log_min_messages": "warning",
            **self.settings,
        }
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as f:
            f.write("\n# raycluster LocalPostgres\n")
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")

    def _spawn(self, port: int) -> tuple[bool, str]:
        log = self._home() / "postgres.log"
        if log.exists():
            log.unlink()
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self._user is not None:
            os.fchown(log_fd, self._user.pw_uid, self._user.pw_gid)
        try:
            proc = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(port)],
                cwd=self._home(),
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                preexec_fn=self._preexec,
            )
        finally:
            os.close(log_fd)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                proc.wait()
                tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
                return False, f"{self.bin_dir}: {tail.strip()}"
            if self._ready(proc.pid):
                self._started(proc)
                return True, ""
            time.sleep(_POLL_S)
        terminate(proc, signal.SIGQUIT, 10.0)
        return False, f"{self.bin_dir}: timed out waiting for it to accept connections"

    def _ready(self, pid: int) -> bool:
        """Whether our own postmaster (`pid`) says, in its pid file, that it accepts
        connections (line 8 is `ready` once it does; PostgreSQL 10+)."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"

    def _wait_orphans_gone(self, timeout_s: float = 30.0) -> None:
        if self._dir is None:
            return
        pid_file = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                shm = pid_file.read_text().splitlines()
            except OSError:
                return
            if len(shm) < 7 or not _shm_attached(shm[6]):
                return
            time.sleep(_POLL_S)


def _shm_attached(line: str) -> bool:
    """Whether the SysV shared memory segment named on line 7 of a pid file
    (`key id`) still has processes attached."""
    parts = line.split()
    if len(parts) != 2:
        return False
    shmid = parts[1]
    try:
        text = Path("/proc/sysvipc/shm").read_text()
    except OSError:
        return False
    for row in text.splitlines()[1:]:
        cols = row.split()
        if len(cols) > 6 and cols[1] == shmid:
            return cols[6] != "0"  # nattch
    return False


@asynccontextmanager
async def local_postgres(
    *,
    port: int | None = None,
    data_dir: str | Path | None = None,
    settings: Mapping[str, str] | None = None,
) -> AsyncIterator[LocalPostgres]:
    """Start a private PostgreSQL on a free port; yield it; stop and remove it on exit."""
    srv = LocalPostgres(port=port, data_dir=data_dir, settings=settings)
    try:
        await asyncio.to_thread(srv.start)
        yield srv
    finally:
        await asyncio.shield(asyncio.to_thread(srv.close))
