"""The Postgres source: follows a publication through a logical replication slot and
writes every change through the Redis write path (docs/postgres.md).

Importing this package is light (the settings and errors only): the ingester,
which needs psycopg2 (the `[postgres]` extra), and the local server helper
load on first use (`raycluster.postgres.Ingester`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
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

if TYPE_CHECKING:
    from .ingester import Ingester, drop_slot
    from .local import LocalPostgres, LocalPostgresError, local_postgres

__all__ = (
    "Ingester",
    "LocalPostgres",
    "LocalPostgresError",
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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
