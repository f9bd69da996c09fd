"""The Postgres source's settings: the `postgres:` section of the tier settings.

Importable without a Postgres client library (the tier's settings load it
whether or not a source is configured). Inside a tier every field can be set
from the environment, `RAYCLUSTER_POSTGRES__DSN`, `RAYCLUSTER_POSTGRES__SLOT`,
… (nested with `__`, as every section).

The DSN is a secret: it shows as `**********` in every repr, dump and log
line (`masked_dsn` gives a loggable form without the password).
"""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from raycluster._section import Section
from raycluster._urls import mask_url

__all__ = ("PostgresSettings", "TableSource", "masked_dsn")


class TableSource(Section):
    """One published table and the entity its rows become.

    Each row becomes the tier row `(tenant, entity, id)`: the tenant is the
    text of `tenant_column`, the id the text of `id_column`. The columns
    carried are `columns`, or the entity's declared columns when the tier
    declares the entity, or else every column of the table but the tenant.
    """

    table: str = Field(
        min_length=1,
        description="The table, `schema.name` or `name` (schema public); names as Postgres "
        "stores them (unquoted identifiers are lower case).",
    )
    entity: str = Field(
        min_length=1,
        pattern=r"^[^:]+$",
        description="The tier entity its rows become (no ':': it is part of key names).",
    )
    tenant_column: str = Field(
        min_length=1,
        description="Column holding the row's tenant (its text). Rows whose tenant is NULL, "
        "empty or contains ':' are not carried: no tenant's window can hold them.",
    )
    id_column: str | None = Field(
        None,
        description="Column holding the row id (its text; ties in a window break on it). "
        "Default: the primary key's column (with the tenant column, if the key has both).",
    )
    columns: list[str] | None = Field(
        None,
        description="Columns to carry. Default: the entity's declared columns if the tier "
        "declares the entity, else every column but the tenant column.",
    )
    approximate_numeric: list[str] = Field(
        default_factory=list,
        description="numeric columns without a precision of at most 15 digits carried as "
        "floats anyway (values that differ only beyond ~15 significant digits then compare "
        "equal and order by id).",
    )

    @property
    def schema_name(self) -> str:
        """The table's schema (`public` when not given)."""
        return self.table.rpartition(".")[0] or "public"

    @property
    def table_name(self) -> str:
        """The table's name without its schema."""
        return self.table.rpartition(".")[2]

    @property
    def qualified(self) -> str:
        """`schema.name`."""
        return f"{self.schema_name}.{self.table_name}"


class PostgresSettings(Section):
    """Where the Postgres source reads (DSN, publication, slot), what it carries, and
    its pacing.

    Set up on the database (docs/postgres.md): `wal_level = logical`, a
    publication of the tables, and a role with REPLICATION and SELECT on
    them. The ingester creates its slot itself.
    """

    dsn: SecretStr = Field(
        description="libpq connection string or URL of the database (a secret: never shown).",
    )
    publication: str = Field(
        min_length=1, description="The publication to follow (CREATE PUBLICATION … FOR TABLE …)."
    )
    slot: str = Field(
        "raycluster",
        pattern=r"^[a-z0-9_]{1,63}$",
        description="The logical replication slot the ingester creates and follows; one "
        "ingester per slot (a second one waits). Lower case letters, digits, underscores.",
    )
    tables: list[TableSource] = Field(min_length=1, description="The tables to carry.")
    batch_changes: int = Field(
        5000,
        gt=0,
        description="Most changes applied to Redis in one batch; a batch's transactions are "
        "confirmed to Postgres once all of it is in Redis.",
    )
    atomic_writes: int = Field(
        2000,
        gt=0,
        description="Most writes to one partition in one atomic Redis call. A transaction "
        "with more writes to one partition lands in several calls (a client may see part "
        "of it); fewer hold Redis for less time (about 20 µs a write).",
    )
    copy_rows: int = Field(
        2000, gt=0, description="Rows read from Postgres per fetch during the initial copy."
    )
    feedback_interval_s: float = Field(
        1.0, gt=0, description="How often the confirmed position is reported to Postgres."
    )
    reconnect_min_s: float = Field(0.2, gt=0, description="First backoff after a lost connection.")
    reconnect_max_s: float = Field(5.0, gt=0, description="Ceiling of the reconnect backoff.")
    slot_busy_retry_s: float = Field(
        2.0, gt=0, description="How often an ingester waiting for a busy slot tries again."
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="Postgres connect timeout.")
    status_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often the ingester publishes its status to Redis (read by "
        "`raycluster status`, the edge's /metrics and the tier's status); it expires after "
        "five intervals without one.",
    )

    @model_validator(mode="after")
    def _check(self) -> PostgresSettings:
        if not self.dsn.get_secret_value().strip():
            raise ValueError("dsn: must not be empty")
        seen_tables: set[str] = set()
        seen_entities: set[str] = set()
        for i, t in enumerate(self.tables):
            if t.qualified in seen_tables:
                raise ValueError(f"tables.{i}.table: {t.table!r} is listed twice")
            if t.entity in seen_entities:
                raise ValueError(f"tables.{i}.entity: {t.entity!r} is fed by two tables")
            seen_tables.add(t.qualified)
            seen_entities.add(t.entity)
        return self

    def table_for(self, entity: str) -> TableSource | None:
        """The table feeding `entity`, if any."""
        return next((t for t in self.tables if t.entity == entity), None)


def masked_dsn(dsn: str | SecretStr) -> str:
    """The DSN with its credentials replaced by `***` (URL or key=value form): safe to
    show or log (`raycluster._urls.mask_url`, as every URL the tier shows)."""
    return mask_url(dsn.get_secret_value() if isinstance(dsn, SecretStr) else dsn)
