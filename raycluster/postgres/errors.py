"""Errors of the Postgres source: one subclass per failure mode.

Fatal ones (`SourceConfigError`, `SchemaChanged`, `UnsupportedRowValue`,
`PostgresAuthFailed`) stop
the ingester: retrying cannot help until a person acts. The others are
retried with backoff (`PostgresUnavailable`, `SlotBusy`) or make the ingester
copy the tables again (`SlotLost`, `ResyncNeeded`).
"""

from __future__ import annotations

from raycluster.errors import AuthenticationError, RayclusterError, UnavailableError

__all__ = (
    "PostgresAuthFailed",
    "PostgresSourceError",
    "PostgresUnavailable",
    "ResyncNeeded",
    "SchemaChanged",
    "SlotBusy",
    "SlotLost",
    "SourceConfigError",
    "UnsupportedRowValue",
)


class PostgresSourceError(RayclusterError):
    """Root of the Postgres source's errors."""


class SourceConfigError(PostgresSourceError, ValueError):
    """Raised at start when the config names a table, column or type that does not
    exist or is not supported (or the server is not set up for it). One error,
    naming the setting (`postgres.tables.0.columns`) and what is wrong."""

    init_fields = ("field", "reason")

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class SchemaChanged(PostgresSourceError):
    """Raised when a published table changed in a way the ingester cannot follow
    (a carried column dropped, renamed or retyped; the table renamed or recreated).

    The ingester stops: nothing after the change is applied, so no row is
    corrupted. Fix the config (or the table), then restart it.
    """

    init_fields = ("table", "reason")

    def __init__(self, table: str, reason: str) -> None:
        self.table = table
        self.reason = reason
        super().__init__(f"table {table}: {reason}; fix the config or the table and restart")


class UnsupportedRowValue(PostgresSourceError):
    """Raised when a row holds a value the tier cannot store so that it sorts as
    Postgres sorts it (NaN, a year after 9999, …). The ingester stops before the
    change; docs/postgres.md says how to go on."""

    init_fields = ("table", "column", "row_id", "reason")

    def __init__(self, table: str, column: str, row_id: str, reason: str) -> None:
        self.table = table
        self.column = column
        self.row_id = row_id
        self.reason = reason
        super().__init__(f"table {table}, row {row_id!r}, column {column}: {reason}")


class PostgresUnavailable(PostgresSourceError, UnavailableError):
    """Raised when Postgres cannot be reached or the connection was lost (retried)."""


class PostgresAuthFailed(PostgresSourceError, AuthenticationError):
    """Raised when Postgres refuses the DSN's credentials (or `pg_hba.conf` has no entry
    for them). Not retried: fix the DSN or the server, then start again."""


class SlotBusy(PostgresSourceError):
    """Raised when another process holds the replication slot: this ingester waits."""


class SlotLost(PostgresSourceError):
    """Raised when the slot was dropped or invalidated (`max_slot_wal_keep_size`):
    the ingester creates it again and copies the tables again."""


class ResyncNeeded(PostgresSourceError):
    """Raised when Redis does not hold what the stream needs (a row whose unchanged
    TOASTed value must be merged, an id whose tenant is unknown): the ingester
    copies the tables again, which makes Redis exact whatever it held."""
