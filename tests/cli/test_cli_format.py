"""The filter/sort syntax and the status table (pure functions; no Redis, no Ray)."""

from __future__ import annotations

from typing import Any

import pytest

from raycluster import InvalidQuery, SortKey, eq, gt, gte, ilike, is_not_null, is_null, lt, lte, ne
from raycluster.cli import format_status, parse_sort, parse_where

COLUMNS = {"name": "str", "temp": "int", "total": "float", "ok": "bool"}


@pytest.mark.parametrize(
    ("text", "cond"),
    [
        ("kind=pump", eq("kind", "pump")),
        ("temp>50", gt("temp", 50)),
        ("temp >= 50", gte("temp", 50)),
        ("x<2.5", lt("x", 2.5)),
        ("x<=-3", lte("x", -3)),
        ("x!=true", ne("x", True)),
        ("name~%PUMP%", ilike("name", "%PUMP%")),
        ("name=007", eq("name", "007")),  # declared str: stays text
        ("code=007", eq("code", 7)),  # undeclared: looks like an int
        ("code='007'", eq("code", "007")),  # quoted: text
        ('name="a b"', eq("name", "a b")),
        ("total>5", gt("total", 5.0)),
        ("ok=false", eq("ok", False)),
        ("site=null", is_null("site")),
        ("site!=null", is_not_null("site")),
    ],
)
def test_where_syntax(text: str, cond: Any) -> None:
    assert parse_where(text, COLUMNS) == cond


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("temp", "expected COLUMN OP VALUE"),
        ("temp>", "no value"),
        ("temp>x", "'temp' is int"),
        ("ok=yes", "'ok' is bool"),
        ("site<null", "null only works with = and !="),
    ],
)
def test_where_errors_name_the_text(text: str, why: str) -> None:
    with pytest.raises(InvalidQuery) as e:
        parse_where(text, COLUMNS)
    assert e.value.field == "--where"
    assert why in str(e.value)


def test_sort_syntax() -> None:
    assert parse_sort("name,-temp, +site") == [
        SortKey(column="name"),
        SortKey(column="temp", desc=True),
        SortKey(column="site"),
    ]
    with pytest.raises(InvalidQuery):
        parse_sort("name,,temp")


# Shaped like `Tier.status()` from a run (tests/ray/test_cli_status.py checks a live one).
STATUS: dict[str, Any] = {
    "name": "raycluster",
    "desired_shards": 3,
    "live_shards": ["shard-0", "shard-1"],
    "shards": {
        "shard-0": {"shard": "shard-0", "partitions": list(range(130)), "subscriptions": 4,
                    "frames": 1200, "changes": 900, "lag_ms": 1.25},
        "shard-1": {"shard": "shard-1", "partitions": list(range(130, 256)), "subscriptions": 1,
                    "frames": 300, "changes": 200, "lag_ms": None},
        "shard-2": {"shard": "shard-2", "error": "GetTimeoutError: timed out"},
    },
    "subscriptions": 5,
    "partitions_owned": 256,
    "frames_per_s": 150.0,
    "changes_per_s": 110.0,
    "lag_ms": 1.25,
    "gateways": ["ray-gw-0"],
}  # fmt: skip


def test_status_table() -> None:
    earlier = {"shards": {"shard-0": {"frames": 1000}, "shard-1": {"frames": 300}}}
    text = format_status(STATUS, earlier, 2.0)
    assert text.splitlines() == [
        "tier raycluster: 2 live shard(s), 3 desired; in-cluster gateways: ray-gw-0",
        "shard    alive  partitions  subscriptions  frames/s  lag ms",
        "shard-0  yes           130              4     100.0     1.2",
        "shard-1  yes           126              1       0.0       -",
        "shard-2  no              -              -         -       -",
        "total    2/3           256              5     150.0     1.2",
        "changes/s 110.0",
        "errors:",
        "  shard-2: GetTimeoutError: timed out",
    ]


def test_status_table_of_one_sample_has_no_rates() -> None:
    lines = format_status(STATUS).splitlines()
    assert lines[2].split() == ["shard-0", "yes", "130", "4", "-", "1.2"]
    assert lines[5].split() == ["total", "2/3", "256", "5", "-", "1.2"]
    assert not any(ln.startswith("changes/s") for ln in lines)
