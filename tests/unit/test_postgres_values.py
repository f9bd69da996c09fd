"""Postgres text → tier values: conversions that sort as Postgres sorts; settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from raycluster.postgres.settings import PostgresSettings, TableSource, masked_dsn
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
