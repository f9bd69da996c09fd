"""Postgres column types the tier carries, and their text → tier value conversions.

Values arrive as Postgres prints them (pgoutput's text format, and `::text`
in the initial copy, on sessions with `DateStyle=ISO`, `TimeZone=UTC`,
`extra_float_digits=3`), and become tier values that **sort as Postgres
sorts them** (strings by code point, as `COLLATE "C"`):

| Postgres | tier type | value |
|---|---|---|
| smallint, integer, bigint | int | the integer |
| real, double precision | float | the number (NaN and ±Infinity are refused) |
| numeric(p, s), p ≤ 15 | float | exact in a double: order kept |
| numeric, numeric(p > 15) | float | only when the table lists it in `approximate_numeric` |
| smallint, integer | float | the integer, as a float |
| boolean | bool | false < true |
| text, varchar | str | the text |
| uuid | str | lowercase `8-4-4-4-12`: text order is Postgres' byte order |
| date | str | `YYYY-MM-DD` (`infinity`, `-infinity` kept: they sort right) |
| timestamp | str | `YYYY-MM-DDTHH:MM:SS.ffffff` |
| timestamptz | str | `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC) |
| date | int | days since 1970-01-01 |
| timestamp, timestamptz | int | microseconds since 1970-01-01 UTC |
| anything else | str | Postgres' text form: carried, never filtered or sorted on |

Dates and timestamps as text cover years 1 to 9999 (fixed width); a value
outside (BC, or after 9999) is refused, as is ±infinity as an int. A
refused value stops the ingester with an error naming table, column and
row: the tier never stores a value that would sort differently.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

__all__ = (
    "CARRY_AS_TEXT",
    "Convert",
    "UnsupportedValue",
    "converter",
    "natural_type",
    "type_label",
)

Convert = Callable[[str], Any]
"""Postgres text of a non-null value → tier value (raises `UnsupportedValue`)."""

BOOL, INT8, INT2, INT4, TEXT, FLOAT4, FLOAT8 = 16, 20, 21, 23, 25, 700, 701
BPCHAR, VARCHAR, DATE, TIMESTAMP, TIMESTAMPTZ, NUMERIC, UUID = (
    1042,
    1043,
    1082,
    1114,
    1184,
    1700,
    2950,
)

_NAMES = {
    BOOL: "boolean",
    INT8: "bigint",
    INT2: "smallint",
    INT4: "integer",
    TEXT: "text",
    FLOAT4: "real",
    FLOAT8: "double precision",
    BPCHAR: "character",
    VARCHAR: "character varying",
    DATE: "date",
    TIMESTAMP: "timestamp without time zone",
    TIMESTAMPTZ: "timestamp with time zone",
    NUMERIC: "numeric",
    UUID: "uuid",
}
_INTS = frozenset({INT2, INT4, INT8})
_FLOATS = frozenset({FLOAT4, FLOAT8})
_TEXTS = frozenset({TEXT, VARCHAR})
_TIMES = frozenset({DATE, TIMESTAMP, TIMESTAMPTZ})
_EXACT_DIGITS = 15  # every decimal of at most 15 significant digits is distinct as a double
CARRY_AS_TEXT = "str"


class UnsupportedValue(ValueError):
    """Raised when a value cannot become a tier value that sorts as Postgres sorts it."""


def type_label(oid: int, typmod: int = -1, name: str | None = None) -> str:
    """A readable name of a column type (for errors)."""
    label = _NAMES.get(oid) or name or f"type oid {oid}"
    if oid == NUMERIC and typmod >= 4:
        p, s = _numeric_precision(typmod)
        label = f"numeric({p},{s})"
    return label


def _numeric_precision(typmod: int) -> tuple[int, int]:
    t = typmod - 4
    return (t >> 16) & 0xFFFF, t & 0xFFFF


def natural_type(oid: int, typmod: int, *, approximate: bool = False) -> str | None:
    """The tier type a column of this type maps to when the entity is not declared
    (None: not filterable or sortable; carried as text)."""
    if oid in _INTS:
        return "int"
    if oid in _FLOATS:
        return "float"
    if oid == NUMERIC:
        return "float" if approximate or _numeric_exact(typmod) else None
    if oid == BOOL:
        return "bool"
    if oid in _TEXTS or oid == UUID or oid in _TIMES:
        return "str"
    return None


def _numeric_exact(typmod: int) -> bool:
    return typmod >= 4 and _numeric_precision(typmod)[0] <= _EXACT_DIGITS


def converter(
    oid: int, typmod: int, tier_type: str, *, indexed: bool, approximate: bool = False
) -> Convert | str:
    """The conversion of a column of Postgres type `oid` into tier type `tier_type`,
    or why it is not supported (a string naming the problem).

    `indexed`: the column is filterable or sortable, so its values must sort
    as Postgres sorts them; a column that is neither may carry any type as
    its text (`tier_type` "str").
    """
    label = type_label(oid, typmod)
    if tier_type == "int":
        if oid in _INTS:
            return int
        if oid == DATE:
            return _date_days
        if oid in (TIMESTAMP, TIMESTAMPTZ):
            return _timestamp_us
    elif tier_type == "float":
        if oid in _FLOATS:
            return _finite
        if oid in (INT2, INT4):
            return _int_float
        if oid == NUMERIC:
            if approximate or _numeric_exact(typmod):
                return _finite
            return (
                f"{label} does not fit a float exactly (precision above {_EXACT_DIGITS}); "
                "declare numeric(p,s) with p <= 15, or list the column in approximate_numeric"
            )
    elif tier_type == "bool":
        if oid == BOOL:
            return _bool
    elif tier_type == "str":
        if oid in _TEXTS or oid == UUID:
            return str
        if oid == DATE:
            return _date_text
        if oid == TIMESTAMP:
            return _timestamp_text
        if oid == TIMESTAMPTZ:
            return _timestamptz_text
        if not indexed:
            return str
        return (
            f"{label} is not supported for filtering or sorting; carry it as text by "
            "making the column neither filterable nor sortable"
        )
    return f"{label} cannot be carried as {tier_type}"


# -- conversions (each gets Postgres' text of a non-null value) -----------------------


def _finite(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise UnsupportedValue(f"{s} is not a finite number")
    return v


def _int_float(s: str) -> float:
    return float(int(s))


def _bool(s: str) -> bool:
    return s == "t"


def _check_year(s: str) -> None:
    # ISO output: 'YYYY-…' for years 1-9999, longer years, or a ' BC' suffix.
    if s.endswith(" BC") or len(s) < 10 or s[4] != "-":
        raise UnsupportedValue(f"{s!r} is outside the years 1-9999")


def _date_text(s: str) -> str:
    if s in ("infinity", "-infinity"):
        return s
    _check_year(s)
    return s


def _timestamp_text(s: str) -> str:
    if s in ("infinity", "-infinity"):
        return s
    _check_year(s)
    day, _, clock = s.partition(" ")
    hms, _, frac = clock.partition(".")
    return f"{day}T{hms}.{frac.ljust(6, '0')}"


def _timestamptz_text(s: str) -> str:
    if s in ("infinity", "-infinity"):
        return s
    _check_year(s)
    # With TimeZone=UTC the offset is always '+00'.
    if not s.endswith("+00"):
        raise UnsupportedValue(f"{s!r} is not in UTC (the session's TimeZone must be UTC)")
    return _timestamp_text(s[:-3]) + "Z"


_EPOCH_DAY = date(1970, 1, 1).toordinal()
_EPOCH = datetime(1970, 1, 1)
_US = timedelta(microseconds=1)


def _date_days(s: str) -> int:
    if s in ("infinity", "-infinity"):
        raise UnsupportedValue(f"{s} has no number of days")
    _check_year(s)
    return date.fromisoformat(s).toordinal() - _EPOCH_DAY


def _timestamp_us(s: str) -> int:
    if s in ("infinity", "-infinity"):
        raise UnsupportedValue(f"{s} has no number of microseconds")
    _check_year(s)
    if s.endswith("+00"):
        s = s[:-3]
    dt = datetime.fromisoformat(s)
    return (dt - _EPOCH) // _US


def utc_now_us() -> int:
    """Microseconds since 1970 (for lag in seconds)."""
    return int(datetime.now(UTC).timestamp() * 1_000_000)
