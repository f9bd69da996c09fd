"""What the ingester carries, checked against the database's catalog at start.

`plan_tables` reads the catalog once and returns a `TablePlan` per configured
table, or raises ONE `SourceConfigError` naming the first setting that does
not fit (a table, column or type that does not exist or is not supported; a
publication that misses the table or a kind of change). `TablePlan.follow`
then checks each Relation message of the stream against the plan: a change
of a carried column stops the ingester (`SchemaChanged`) before any row of
the new shape is applied.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from raycluster.livequery.models import EntitySpec

from ._pg import quote_ident, translate
from .errors import SchemaChanged, SourceConfigError
from .pgoutput import Relation
from .settings import PostgresSettings, TableSource
from .values import (
    BOOL,
    INT2,
    INT4,
    INT8,
    TEXT,
    UUID,
    VARCHAR,
    Convert,
    converter,
    natural_type,
    type_label,
)

__all__ = ("CarriedColumn", "Shape", "TablePlan", "fingerprint", "plan_tables")

_TENANT_TYPES = frozenset({TEXT, VARCHAR, UUID, INT2, INT4, INT8})
_ID_TYPES = frozenset({TEXT, VARCHAR, UUID, INT2, INT4, INT8, BOOL})
_MIN_VERSION = 100000  # logical replication with pgoutput: PostgreSQL 10


@dataclass(frozen=True, slots=True)
class CarriedColumn:
    """A column the tier keeps: its name, Postgres type and conversion."""

    name: str
    type_oid: int
    typmod: int
    tier_type: str
    indexed: bool
    """Filterable or sortable: its values sort as Postgres sorts them."""
    convert: Convert


@dataclass(frozen=True, slots=True)
class Shape:
    """Where the plan's columns sit in one Relation's tuples (None: not sent)."""

    tenant: int
    id: int
    carried: tuple[int, ...]


@dataclass(slots=True)
class TablePlan:
    """One configured table as the ingester handles it."""

    index: int
    """Its position in `postgres.tables` (errors name `postgres.tables.{index}`)."""
    source: TableSource
    relid: int
    spec: EntitySpec
    tenant_column: str
    tenant_type: int
    id_column: str
    id_type: int
    carried: tuple[CarriedColumn, ...]
    identity: str
    """Replica identity: `d` primary key, `i` an index, `f` full."""
    tenant_in_identity: bool
    """Whether deletes and key updates name the tenant; if not, the tenant of an id
    is looked up in Redis (the owner map)."""
    row_filter: str | None
    """The publication's row filter of the table (PostgreSQL 15+), applied to the copy."""
    partitioned: bool
    """A partitioned table (its partitions' rows are copied with it)."""
    shape: Shape | None = field(default=None)

    @property
    def name(self) -> str:
        """`schema.table`."""
        return self.source.qualified

    @property
    def entity(self) -> str:
        """The entity its rows become."""
        return self.spec.name

    def follow(self, rel: Relation) -> Shape:
        """Check a Relation message of this table against the plan; the column
        positions its tuples use (`SchemaChanged` when a carried column is gone or
        changed type, or the table was renamed)."""
        if (rel.namespace, rel.name) != (self.source.schema_name, self.source.table_name):
            raise SchemaChanged(self.name, f"renamed to {rel.namespace}.{rel.name}")
        by_name = {c.name: (i, c) for i, c in enumerate(rel.columns)}

        def where(name: str, oid: int, typmod: int | None) -> int:
            found = by_name.get(name)
            if found is None:
                raise SchemaChanged(self.name, f"column {name} is gone (dropped or renamed)")
            i, col = found
            if col.type_oid != oid or (typmod is not None and col.typmod != typmod):
                was, now = type_label(oid, typmod or -1), type_label(col.type_oid, col.typmod)
                raise SchemaChanged(self.name, f"column {name} changed type from {was} to {now}")
            return i

        shape = Shape(
            tenant=where(self.tenant_column, self.tenant_type, None),
            id=where(self.id_column, self.id_type, None),
            # A carried column's typmod matters where it decides the conversion (numeric).
            carried=tuple(where(c.name, c.type_oid, c.typmod) for c in self.carried),
        )
        self.shape = shape
        return shape


def fingerprint(plans: Sequence[TablePlan]) -> str:
    """A digest of what the plans carry: a change means Redis holds rows of another
    shape, and the tables are copied again."""
    doc = [
        [p.name, p.relid, p.entity, p.tenant_column, p.id_column, p.row_filter,
         [[c.name, c.type_oid, c.typmod, c.tier_type] for c in p.carried],
         p.spec.model_dump(mode="json")]
        for p in plans
    ]  # fmt: skip
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def plan_tables(
    conn: Any, settings: PostgresSettings, entities: Mapping[str, EntitySpec]
) -> list[TablePlan]:
    """A plan per configured table, checked against the catalog (one
    `SourceConfigError` naming the first problem)."""
    with translate("read catalog"), conn.cursor() as cur:
        _check_server(cur)
        pub = _publication(cur, settings.publication)
        return [
            _plan(cur, settings, pub, i, t, entities.get(t.entity))
            for i, t in enumerate(settings.tables)
        ]


def _check_server(cur: Any) -> None:
    cur.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('wal_level'), "
        "pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()"
    )
    version, wal_level, encoding = cur.fetchone()
    if version < _MIN_VERSION:
        raise SourceConfigError("postgres.dsn", f"PostgreSQL {version} is too old (10+ needed)")
    if wal_level != "logical":
        raise SourceConfigError(
            "postgres.dsn", f"the server has wal_level={wal_level}; set wal_level = logical"
        )
    if encoding != "UTF8":
        raise SourceConfigError("postgres.dsn", f"the database's encoding is {encoding}, not UTF8")
    cur.execute(
        "SELECT current_user, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
    )
    role, may_replicate = cur.fetchone()
    if not may_replicate:
        raise SourceConfigError(
            "postgres.dsn",
            f"role {role!r} may not stream changes: ALTER ROLE {quote_ident(role)} REPLICATION",
        )


def _publication(cur: Any, name: str) -> dict[str, Any]:
    cur.execute(
        "SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot "
        "FROM pg_publication WHERE pubname = %s",
        (name,),
    )
    row = cur.fetchone()
    if row is None:
        raise SourceConfigError(
            "postgres.publication", f"publication {name!r} does not exist in this database"
        )
    keys = ("all_tables", "insert", "update", "delete", "truncate", "via_root")
    pub = dict(zip(keys, row, strict=True))
    missing = [k for k in ("insert", "update", "delete", "truncate") if not pub[k]]
    if missing:
        raise SourceConfigError(
            "postgres.publication",
            f"publication {name!r} does not publish {', '.join(missing)}: the windows would "
            "miss those changes (publish = 'insert, update, delete, truncate')",
        )
    pub["name"] = name
    return pub


def _plan(
    cur: Any,
    settings: PostgresSettings,
    pub: dict[str, Any],
    index: int,
    t: TableSource,
    declared: EntitySpec | None,
) -> TablePlan:
    at = f"postgres.tables.{index}"
    cur.execute(
        "SELECT c.oid, c.relkind, c.relreplident FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (t.schema_name, t.table_name),
    )
    row = cur.fetchone()
    if row is None:
        raise SourceConfigError(f"{at}.table", f"table {t.qualified} does not exist")
    relid, relkind, identity = row
    if relkind not in ("r", "p"):
        raise SourceConfigError(f"{at}.table", f"{t.qualified} is not a table (relkind {relkind})")
    if relkind == "p" and not pub["via_root"]:
        raise SourceConfigError(
            f"{at}.table",
            f"{t.qualified} is partitioned: create the publication WITH "
            "(publish_via_partition_root = true) so its changes name the table",
        )
    cur.execute("SELECT has_table_privilege(%s::oid, 'SELECT')", (relid,))
    if not cur.fetchone()[0]:
        raise SourceConfigError(
            f"{at}.table", f"the role may not read {t.qualified}: GRANT SELECT ON it to the role"
        )
    row_filter = _publication_member(cur, pub, t, at)

    cur.execute(
        "SELECT a.attname, a.atttypid, a.atttypmod, t.typname FROM pg_attribute a "
        "JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (relid,),
    )
    cols = {name: (oid, typmod, typname) for name, oid, typmod, typname in cur.fetchall()}
    pk = _index_columns(cur, relid, "indisprimary")
    replident = _index_columns(cur, relid, "indisreplident")

    def column(field: str, name: str) -> tuple[int, int, str]:
        if name not in cols:
            raise SourceConfigError(field, f"column {name!r} does not exist in {t.qualified}")
        return cols[name]

    tenant_oid, _, tenant_typname = column(f"{at}.tenant_column", t.tenant_column)
    if tenant_oid not in _TENANT_TYPES:
        raise SourceConfigError(
            f"{at}.tenant_column",
            f"{t.qualified}.{t.tenant_column} is {tenant_typname}: a tenant column must be "
            "text, varchar, uuid or an integer",
        )
    id_column = t.id_column
    if id_column is None:
        rest = [c for c in pk if c != t.tenant_column]
        if len(rest) != 1:
            why = "has no primary key" if not pk else f"has the primary key ({', '.join(pk)})"
            raise SourceConfigError(
                f"{at}.id_column",
                f"{t.qualified} {why}: name the id column (with the tenant column, it must be "
                "the primary key or a unique index's columns)",
            )
        id_column = rest[0]
    id_oid, _, id_typname = column(f"{at}.id_column", id_column)
    if id_oid not in _ID_TYPES:
        raise SourceConfigError(
            f"{at}.id_column",
            f"{t.qualified}.{id_column} is {id_typname}: an id column must be text, varchar, "
            "uuid or an integer",
        )

    # Deletes and key changes name the replica identity's columns only.
    if identity == "d":
        ident = pk
    elif identity == "i":
        ident = replident
    elif identity == "f":
        ident = list(cols)
    else:
        ident = []
    key_ok = ident and id_column in ident and set(ident) <= {id_column, t.tenant_column}
    if identity == "f":
        unique = _unique_indexes(cur, relid)
        key_ok = any(set(u) <= {id_column, t.tenant_column} for u in unique)
    if not key_ok:
        raise SourceConfigError(
            f"{at}.id_column",
            f"(tenant, id) = ({t.tenant_column}, {id_column}) must identify a row of "
            f"{t.qualified} and name it in deletes: its replica identity ("
            + {"d": "the primary key", "i": "an index", "f": "full", "n": "nothing"}[identity]
            + f"{': ' + ', '.join(ident) if ident and identity != 'f' else ''}) must be "
            "(id) or (tenant, id), or be FULL with such a unique index",
        )

    carried = _carried(t, at, cols, declared)
    specs_cols = {c.name: c.tier_type for c in carried}
    if declared is not None:
        spec = declared
    else:
        indexed = [c.name for c in carried if c.indexed]
        spec = EntitySpec(name=t.entity, columns=specs_cols, filterable=indexed, sortable=indexed)
    return TablePlan(
        index=index,
        source=t,
        relid=relid,
        spec=spec,
        tenant_column=t.tenant_column,
        tenant_type=tenant_oid,
        id_column=id_column,
        id_type=id_oid,
        carried=tuple(carried),
        identity=identity,
        tenant_in_identity=identity == "f" or t.tenant_column in ident,
        row_filter=row_filter,
        partitioned=relkind == "p",
    )


def _carried(
    t: TableSource,
    at: str,
    cols: dict[str, tuple[int, int, str]],
    declared: EntitySpec | None,
) -> list[CarriedColumn]:
    for name in t.approximate_numeric:
        if name not in cols or cols[name][2] != "numeric":
            raise SourceConfigError(
                f"{at}.approximate_numeric", f"{name!r} is not a numeric column of {t.qualified}"
            )
    approx = set(t.approximate_numeric)
    if declared is not None:
        names = list(declared.columns)
        if t.columns is not None and set(t.columns) != set(names):
            raise SourceConfigError(
                f"{at}.columns",
                f"entity {t.entity!r} is declared with columns {sorted(names)}: carry exactly "
                "those (or leave columns out)",
            )
        filterable = set(declared.filterable if declared.filterable is not None else names)
        sortable = set(declared.sortable if declared.sortable is not None else names)
        wanted: list[tuple[str, str, bool]] = [
            (n, declared.columns[n], n in filterable or n in sortable) for n in names
        ]
    else:
        names = t.columns if t.columns is not None else [c for c in cols if c != t.tenant_column]
        wanted = []
        for n in names:
            if n not in cols:
                raise SourceConfigError(
                    f"{at}.columns", f"column {n!r} does not exist in {t.qualified}"
                )
            natural = natural_type(cols[n][0], cols[n][1], approximate=n in approx)
            wanted.append((n, natural or "str", natural is not None))
    out = []
    for n, tier_type, indexed in wanted:
        if n not in cols:
            raise SourceConfigError(
                f"{at}.columns", f"column {n!r} of entity {t.entity!r} does not exist in "
                f"{t.qualified}"
            )  # fmt: skip
        oid, typmod, _ = cols[n]
        conv = converter(oid, typmod, tier_type, indexed=indexed, approximate=n in approx)
        if isinstance(conv, str):
            raise SourceConfigError(f"{at}.columns", f"{t.qualified}.{n}: {conv}")
        out.append(CarriedColumn(n, oid, typmod, tier_type, indexed, conv))
    return out


def _publication_member(cur: Any, pub: dict[str, Any], t: TableSource, at: str) -> str | None:
    """The publication's row filter of the table (None: none), checking it is published
    with every column (a column list would leave carried columns out)."""
    cur.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        "'pg_catalog' AND table_name = 'pg_publication_tables' AND column_name IN "
        "('attnames', 'rowfilter')"
    )
    extra = {r[0] for r in cur.fetchall()}  # PostgreSQL 15+: column lists and row filters
    fields = ", ".join(sorted(extra)) or "1"
    cur.execute(
        f"SELECT {fields} FROM pg_publication_tables "
        "WHERE pubname = %s AND schemaname = %s AND tablename = %s",
        (pub["name"], t.schema_name, t.table_name),
    )
    row = cur.fetchone()
    if row is None:
        raise SourceConfigError(
            f"{at}.table", f"{t.qualified} is not in publication {pub['name']!r}"
        )
    got = dict(zip(sorted(extra), row, strict=False)) if extra else {}
    cur.execute(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
        "AND NOT attisdropped",
        (f'"{t.schema_name}"."{t.table_name}"',),
    )
    (ncols,) = cur.fetchone()
    if got.get("attnames") is not None and len(got["attnames"]) != ncols:
        raise SourceConfigError(
            f"{at}.table",
            f"publication {pub['name']!r} publishes only some columns of {t.qualified}: "
            "publish them all (the ingester needs the identity and carried columns)",
        )
    return got.get("rowfilter")


def _index_columns(cur: Any, relid: int, flag: str) -> list[str]:
    cur.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        f"AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND i.{flag} ORDER BY a.attnum",
        (relid,),
    )
    return [r[0] for r in cur.fetchall()]


def _unique_indexes(cur: Any, relid: int) -> list[list[str]]:
    cur.execute(
        "SELECT array_agg(a.attname::text) FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL "
        "AND i.indexprs IS NULL GROUP BY i.indexrelid",
        (relid,),
    )
    return [list(r[0]) for r in cur.fetchall()]
