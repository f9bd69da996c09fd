"""Postgres text → tier values: conversions that sort as Postgres sorts; settings."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from raycluster.livequery import LiveQuery, SortKey, eq, gt, in_, is_null, or_
from raycluster.postgres.settings import PostgresSettings, TableSource, masked_dsn
from raycluster.postgres.sql import window_sql
from raycluster.postgres.status import describe_ingester, lsn_number
from raycluster.postgres.values import (
    BOOL,
    DATE,
    FLOAT8,
    INT4,
    INT8,
    NUMERIC,
    TEXT,
    TIMESTAMP,
    TIMESTAMPTZ,
    UUID,
    UnsupportedValue,
    converter,
    natural_type,
)  # fmt: skip


def conv(oid: int, tier: str, typmod: int = -1, **kw: object) -> object:
    c = converter(oid, typmod, tier, indexed=True, **kw)  # type: ignore[arg-type]
    assert callable(c), c
    return c


def test_timestamps_as_text_sort_as_postgres() -> None:
    ts = conv(TIMESTAMPTZ, "str")
    texts = ["-infinity", "0001-01-01 00:00:00+00", "1999-12-31 23:59:59.999999+00",
             "2024-05-01 10:00:00+00", "2024-05-01 10:00:00.5+00", "9999-12-31 23:59:59+00",
             "infinity"]  # fmt: skip
    out = [ts(t) for t in texts]  # type: ignore[operator]
    assert out == sorted(out)
    assert out[3:5] == ["2024-05-01T10:00:00.000000Z", "2024-05-01T10:00:00.500000Z"]
    assert conv(TIMESTAMP, "str")("2024-05-01 10:00:00.25") == "2024-05-01T10:00:00.250000"  # type: ignore[operator]
    assert conv(DATE, "str")("2024-05-01") == "2024-05-01"  # type: ignore[operator]
    for bad in ("0044-03-15 BC", "10000-01-01"):
        with pytest.raises(UnsupportedValue):
            conv(DATE, "str")(bad)  # type: ignore[operator]
    assert conv(DATE, "int")("1970-01-02") == 1  # type: ignore[operator]
    assert conv(TIMESTAMPTZ, "int")("1970-01-01 00:00:01.5+00") == 1_500_000  # type: ignore[operator]
    with pytest.raises(UnsupportedValue):
        conv(TIMESTAMP, "int")("infinity")  # type: ignore[operator]


def test_numbers_and_others() -> None:
    assert conv(INT8, "int")("-9223372036854775808") == -(2**63)  # type: ignore[operator]
    assert conv(INT4, "float")("3") == 3.0  # type: ignore[operator]
    assert conv(BOOL, "bool")("t") is True and conv(BOOL, "bool")("f") is False  # type: ignore[operator]
    f = conv(FLOAT8, "float")
    assert f("1.5") == 1.5  # type: ignore[operator]
    for bad in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(UnsupportedValue):
            f(bad)  # type: ignore[operator]
    assert (
        conv(UUID, "str")("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    )  # type: ignore[operator]
    numeric_10_2 = (10 << 16 | 2) + 4
    assert conv(NUMERIC, "float", numeric_10_2)("12.50") == 12.5  # type: ignore[operator]
    assert "does not fit a float" in str(converter(NUMERIC, -1, "float", indexed=True))
    assert callable(converter(NUMERIC, -1, "float", indexed=True, approximate=True))
    # Anything is carried as its text when never filtered or sorted on; else refused.
    assert converter(3802, -1, "str", indexed=False) is str
    assert "not supported" in str(converter(3802, -1, "str", indexed=True))
    assert "cannot be carried as int" in str(converter(TEXT, -1, "int", indexed=True))
    assert natural_type(TEXT, -1) == "str" and natural_type(3802, -1) is None
    assert natural_type(NUMERIC, -1) is None and natural_type(NUMERIC, numeric_10_2) == "float"


def test_settings_hide_the_dsn() -> None:
    t = TableSource(table="t", entity="e", tenant_column="c")
    s = PostgresSettings(dsn="postgresql://ingest:s3cret@db:5432/app", publication="p", tables=[t])
    assert "s3cret" not in repr(s) and "s3cret" not in s.model_dump_json()
    assert masked_dsn(s.dsn) == "postgresql://ingest:***@db:5432/app"
    assert masked_dsn("host=db user=x password='a b' dbname=app") == (
        "host=db user=x password=*** dbname=app"
    )
    assert masked_dsn("postgresql://db/app?password=zz&sslmode=require") == (
        "postgresql://db/app?password=***&sslmode=require"
    )
    assert s.tables[0].qualified == "public.t"


def test_settings_refuse_two_tables_for_one_entity() -> None:
    t = TableSource(table="a", entity="e", tenant_column="c")
    with pytest.raises(ValidationError, match="fed by two tables"):
        PostgresSettings(dsn="x", publication="p",
                         tables=[t, t.model_copy(update={"table": "b"})])  # fmt: skip
    with pytest.raises(ValidationError):
        PostgresSettings(dsn="x", publication="p", slot="Bad-Slot", tables=[t])


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"reconnect_min_s": 2.0, "reconnect_max_s": 1.0}, "reconnect_max_s"),
        ({"dsn": "  "}, "dsn"),
        ({"batch_changes": 0}, "batch_changes"),
        ({"status_interval_s": 0}, "status_interval_s"),
        ({"unknown_key": 1}, "unknown_key"),
        ({"tables": [{"table": "t", "entity": "a:b", "tenant_column": "c"}]}, "entity"),
        ({"tables": [{"table": "t", "entity": "e", "tenant_column": "c", "extra": 1}]}, "extra"),
    ],
)
def test_settings_refuse_bad_values_naming_the_field(changes: dict[str, Any], field: str) -> None:
    base: dict[str, Any] = {
        "dsn": "postgresql://db/app", "publication": "p",
        "tables": [{"table": "t", "entity": "e", "tenant_column": "c"}],
    }  # fmt: skip
    with pytest.raises(ValidationError, match=field):
        PostgresSettings(**{**base, **changes})


def test_status_lines_and_positions() -> None:
    assert lsn_number("0/0") == 0 and lsn_number("1/10") == 2**32 + 16
    st = {"slot": "s", "state": "streaming", "confirmed_lsn": "0/1A", "lag_bytes": 12,
          "lag_s": 0.5, "rows_per_s": 100.0, "error": None}  # fmt: skip
    assert describe_ingester(st) == (
        "ingester s: streaming, confirmed 0/1A, lag 12 bytes / 0.5 s, 100 rows/s"
    )
    failed = {**st, "state": "failed", "error": "table public.t: gone"}
    assert describe_ingester(failed).endswith("; last error: table public.t: gone")
    assert describe_ingester(None, "s").startswith("ingester s: none reporting")


def test_window_sql_is_postgres_own_query_of_the_window() -> None:
    table = TableSource(table="app.asset", entity="asset", tenant_column="org", id_column="id")
    q = LiveQuery(
        entity="asset",
        where=[eq("kind", "pump"), or_(gt("temp", 5), is_null("temp")), in_("site", ["n", "s"])],
        sort=[SortKey(column="name", desc=True), SortKey(column="temp")],
        limit=7,
    )
    sql, params = window_sql(q, table, "acme", {"name", "kind", "site"})
    assert sql == (
        'SELECT "id"::text FROM "app"."asset" WHERE "org"::text = %s AND '
        '"kind" COLLATE "C" = %s AND ("temp" > %s OR "temp" IS NULL) AND '
        '"site" COLLATE "C" = ANY(%s) ORDER BY "name" COLLATE "C" DESC NULLS FIRST, '
        '"temp" ASC NULLS LAST, "id"::text COLLATE "C" LIMIT 7'
    )
    assert params == ["acme", "pump", 5, ["n", "s"]]
