"""psycopg2 connections of the ingester: options, error translation, slot commands.

Every connection pins the session settings the text of values depends on
(`DateStyle=ISO`, `TimeZone=UTC`, `extra_float_digits=3`, UTF-8), so the
initial copy and the replication stream print values alike. psycopg2 is
imported here only (the package's `__init__` stays light).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
from pydantic import SecretStr

from .errors import PostgresAuthFailed, PostgresUnavailable, SlotBusy, SlotLost

__all__ = (
    "SESSION_OPTIONS",
    "SlotInfo",
    "connect",
    "connect_replication",
    "quote_ident",
    "slot_info",
    "translate",
)

SESSION_OPTIONS = (
    "-c DateStyle=ISO,YMD -c TimeZone=UTC -c extra_float_digits=3 "
    "-c IntervalStyle=postgres -c bytea_output=hex -c client_encoding=UTF8"
)
_APP = "raycluster-ingest"


def _params(dsn: SecretStr, connect_timeout_s: float) -> dict[str, Any]:
    params: dict[str, Any] = dict(psycopg2.extensions.parse_dsn(dsn.get_secret_value()))
    params["options"] = f"{SESSION_OPTIONS} {params.get('options', '')}".strip()
    params.setdefault("application_name", _APP)
    params.setdefault("connect_timeout", max(1, round(connect_timeout_s)))
    # A server that vanishes without closing the connection is noticed in ~25 s.
    params.setdefault("keepalives", 1)
    params.setdefault("keepalives_idle", 10)
    params.setdefault("keepalives_interval", 5)
    params.setdefault("keepalives_count", 3)
    return params


@contextlib.contextmanager
def translate(what: str) -> Iterator[None]:
    """Re-raise psycopg2's connection errors as `PostgresUnavailable`, a busy slot as
    `SlotBusy`, a dropped or invalidated one as `SlotLost` (chained)."""
    try:
        yield
    except psycopg2.errors.ObjectInUse as e:
        raise SlotBusy(f"{what}: {_first_line(e)}") from e
    except psycopg2.errors.UndefinedObject as e:
        if "replication slot" in str(e):
            raise SlotLost(f"{what}: {_first_line(e)}") from e
        raise
    except psycopg2.errors.ObjectNotInPrerequisiteState as e:
        if "replication slot" in str(e):
            raise SlotLost(f"{what}: {_first_line(e)}") from e
        raise
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
        if _AUTH_FAILED.search(str(e)):
            raise PostgresAuthFailed(f"{what}: Postgres refused the credentials "
                                     f"({_auth_line(e)})") from e  # fmt: skip
        raise PostgresUnavailable(f"{what}: Postgres unavailable ({_first_line(e)})") from e
    except psycopg2.Error as e:
        # No SQLSTATE: libpq lost the connection (a crashed server ends a replication
        # stream so); class 08 connection exception, 57 operator intervention (shutdown).
        if e.pgcode is None or e.pgcode[:2] in ("08", "57"):
            raise PostgresUnavailable(f"{what}: Postgres unavailable ({_first_line(e)})") from e
        raise


# libpq's messages when the server refuses a login (they carry no SQLSTATE).
_AUTH_FAILED = re.compile(
    r"authentication failed|no password supplied|no pg_hba\.conf entry|password is required"
)


def _auth_line(e: BaseException) -> str:
    """The FATAL line of a refused login (`password authentication failed for user …`)."""
    lines = [ln.strip() for ln in str(e).splitlines() if _AUTH_FAILED.search(ln)]
    return (lines[0] if lines else _first_line(e)).removeprefix("FATAL:").strip()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def connect(dsn: SecretStr, connect_timeout_s: float) -> Any:
    """A normal connection (autocommit), session settings pinned."""
    with translate("connect"):
        conn = psycopg2.connect(**_params(dsn, connect_timeout_s))
    conn.autocommit = True
    return conn


def connect_replication(dsn: SecretStr, connect_timeout_s: float) -> Any:
    """A logical replication connection (`replication=database`)."""
    with translate("connect for replication"):
        return psycopg2.connect(
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
            **_params(dsn, connect_timeout_s),
        )


def quote_ident(name: str) -> str:
    """`name` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


class SlotInfo(NamedTuple):
    """A row of `pg_replication_slots`."""

    name: str
    plugin: str | None
    database: str | None
    active: bool
    active_pid: int | None
    confirmed_flush_lsn: str | None
    wal_status: str | None
    """`reserved`, `extended`, `unreserved` or `lost` (invalidated)."""


def slot_info(conn: Any, slot: str) -> SlotInfo | None:
    """The slot's row, or None when it does not exist."""
    with translate("read slot"), conn.cursor() as cur:
        cur.execute(
            "SELECT slot_name, plugin, database, active, active_pid, "
            "confirmed_flush_lsn::text, wal_status FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (slot,),
        )
        row = cur.fetchone()
    return SlotInfo(*row) if row is not None else None
