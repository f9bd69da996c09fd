"""The Postgres source: follows a publication through a logical replication slot and
writes every change through the Redis write path (docs/postgres.md).

Importing this package is light (the settings, errors and status only): the
ingester, which needs psycopg2 (the `[postgres]` extra), and the local server
helper load on first use (`raycluster.postgres.Ingester`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raycluster._lazy import lazy_attributes

from .errors import (
    PostgresAuthFailed,
    PostgresSourceError,
    PostgresUnavailable,
    ResyncNeeded,
    SchemaChanged,
    SlotBusy,
    SlotLost,
    SourceConfigError,
    UnsupportedRowValue,
)
from .settings import PostgresSettings, TableSource, masked_dsn
from .status import IngesterStatus, describe_ingester

if TYPE_CHECKING:
    from .ingester import Ingester, drop_slot
    from .local import LocalPostgres, LocalPostgresError, local_postgres

__all__ = (
    "Ingester",
    "IngesterStatus",
    "LocalPostgres",
    "LocalPostgresError",
    "PostgresAuthFailed",
    "PostgresSettings",
    "PostgresSourceError",
    "PostgresUnavailable",
    "ResyncNeeded",
    "SchemaChanged",
    "SlotBusy",
    "SlotLost",
    "SourceConfigError",
    "TableSource",
    "UnsupportedRowValue",
    "describe_ingester",
    "drop_slot",
    "local_postgres",
    "masked_dsn",
)

_LAZY = {
    "Ingester": ".ingester",
    "drop_slot": ".ingester",
    "LocalPostgres": ".local",
    "LocalPostgresError": ".local",
    "local_postgres": ".local",
}

__getattr__ = lazy_attributes(__name__, globals(), _LAZY)
