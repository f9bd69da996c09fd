"""The differential workload over Postgres: two tables, random SQL, random queries.

`asset` is keyed by its id alone (deletes and tenant moves need the tenant
looked up), `site` by (tenant, code). The workload inserts, updates (values,
ids, tenants, nothing at all), deletes, runs multi-row transactions,
TRUNCATEs, and writes large TOASTed values that later updates leave
unchanged. Used by tests/postgres/test_pg_differential.py (windows over
Redis) and tests/ray/test_postgres_tier.py (in-cluster and external
subscriptions through a tier on Ray).
"""

from __future__ import annotations

import random
from typing import Any

from pg_helpers import Db

from raycluster.livequery import (
    Cond,
    EntitySpec,
    LiveQuery,
    SortKey,
    eq,
    gt,
    ilike,
    in_,
    is_not_null,
    is_null,
    like,
    lte,
    ne,
    or_,
)
from raycluster.postgres.settings import PostgresSettings, TableSource
from raycluster.redis import RedisSettings

ASSET = EntitySpec(
    name="asset",
    columns={
        "name": "str",
        "kind": "str",
        "temp": "float",
        "n": "int",
        "on": "bool",
        "at": "str",
        "notes": "str",
    },
    filterable=["name", "kind", "temp", "n", "on", "at"],
    sortable=["name", "kind", "temp", "n", "on", "at"],
    max_window=50,
)
SITE = EntitySpec(name="site", columns={"label": "str", "size": "int"}, max_window=50)
TENANTS = ["acme", "rival", "umbrella"]
NAMES = ["alpha", "alpine", "beta", "Beta", "gamma", "pump 1", "Pump 2", "zeta", "", "é", "Ω"]
KINDS = ["pump", "valve", "tank", "fan"]

SCHEMA = """
CREATE TABLE asset (id integer PRIMARY KEY, tenant text NOT NULL, name text, kind text,
                    temp double precision, n bigint, "on" boolean, at timestamptz, notes text);
ALTER TABLE asset ALTER COLUMN notes SET STORAGE EXTERNAL;
CREATE TABLE site (tenant text, code text, label text, size integer,
                   PRIMARY KEY (tenant, code));
CREATE PUBLICATION pub FOR TABLE asset, site;
"""


def quick_redis() -> RedisSettings:
    return RedisSettings(feed_block_ms=200, reconnect_min_s=0.02, reconnect_max_s=0.2)


def settings(dsn: str, slot: str, **kw: Any) -> PostgresSettings:
    return PostgresSettings(
        dsn=dsn,
        publication="pub",
        slot=slot,
        tables=[
            TableSource(table="asset", entity="asset", tenant_column="tenant"),
            TableSource(table="site", entity="site", tenant_column="tenant"),
        ],
        feedback_interval_s=0.05,
        reconnect_min_s=0.05,
        reconnect_max_s=0.5,
        slot_busy_retry_s=0.2,
        **kw,
    )


class Workload:
    """Random SQL against both tables; knows which ids exist."""

    def __init__(self, db: Db, rng: random.Random) -> None:
        self.db = db
        self.rng = rng
        self.assets: dict[int, str] = {}  # id -> tenant
        self.sites: set[tuple[str, str]] = set()
        self.next_id = 1
        self.big = "".join(rng.choice("abcdefghij") for _ in range(4000))

    def asset_values(self) -> list[Any]:
        r = self.rng
        at = None
        if r.random() < 0.8:
            year = r.choice(["0999", "2024", "2024", "9999"])
            day = f"{year}-0{r.randint(1, 9)}-1{r.randint(0, 9)}"
            at = f"{day} 1{r.randint(0, 9)}:00:0{r.randint(0, 9)}"
            at += r.choice(["", ".5", ".123456"]) + r.choice(["+00", "+05:30", "-08"])
        return [
            r.choice([*NAMES, None]),
            r.choice(KINDS),
            r.choice([None, -0.0, *(float(x) / 2 for x in range(-4, 40, 3))]),
            r.choice([None, *range(-3, 12), 2**40]),
            r.choice([None, True, False]),
            at,
            r.choice([None, "short", self.big]) if r.random() < 0.3 else None,
        ]

    def statement(self) -> tuple[str, list[Any]] | None:
        r = self.rng
        pick = r.random()
        if pick < 0.35 or not self.assets:
            i = self.next_id
            self.next_id += 1
            tenant = r.choice(TENANTS)
            self.assets[i] = tenant
            return (
                "INSERT INTO asset VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [i, tenant, *self.asset_values()],
            )
        i = r.choice(sorted(self.assets))
        if pick < 0.55:
            col, val = r.choice(
                [("name", r.choice(NAMES)), ("kind", r.choice(KINDS)), ("temp", r.random() * 20),
                 ("n", r.randint(-3, 12)), ('"on"', r.random() < 0.5)]
            )  # fmt: skip
            return (f"UPDATE asset SET {col} = %s WHERE id = %s", [val, i])
        if pick < 0.62:
            return ("UPDATE asset SET kind = kind WHERE id = %s", [i])  # changes nothing
        if pick < 0.70:
            tenant = r.choice(TENANTS)
            self.assets[i] = tenant
            return ("UPDATE asset SET tenant = %s WHERE id = %s", [tenant, i])
        if pick < 0.76:
            new = self.next_id
            self.next_id += 1
            self.assets[new] = self.assets.pop(i)
            return ("UPDATE asset SET id = %s WHERE id = %s", [new, i])
        if pick < 0.86:
            del self.assets[i]
            return ("DELETE FROM asset WHERE id = %s", [i])
        # site: keyed by (tenant, code)
        tenant, code = r.choice(TENANTS), f"s{r.randrange(30)}"
        if (tenant, code) in self.sites and r.random() < 0.3:
            self.sites.discard((tenant, code))
            return ("DELETE FROM site WHERE tenant = %s AND code = %s", [tenant, code])
        if (tenant, code) in self.sites and r.random() < 0.3:
            other = r.choice(TENANTS)
            if (other, code) in self.sites:
                return None
            self.sites.discard((tenant, code))
            self.sites.add((other, code))
            return ("UPDATE site SET tenant = %s WHERE tenant = %s AND code = %s",
                    [other, tenant, code])  # fmt: skip
        self.sites.add((tenant, code))
        return (
            "INSERT INTO site VALUES (%s, %s, %s, %s) ON CONFLICT (tenant, code) DO UPDATE "
            "SET label = excluded.label, size = excluded.size",
            [tenant, code, r.choice(NAMES), r.randint(0, 9)],
        )

    def round(self, n: int) -> None:
        done = 0
        while done < n:
            if self.rng.random() < 0.25:
                stmts = [s for s in (self.statement() for _ in range(self.rng.randint(2, 8))) if s]
                self.db.tx(stmts)
                done += len(stmts)
            else:
                s = self.statement()
                if s is not None:
                    self.db.run(*s)
                    done += 1

    def truncate(self) -> None:
        self.db.run("TRUNCATE asset")
        self.assets.clear()


def rand_cond(rng: random.Random) -> Cond:
    pick = rng.randrange(10)
    if pick < 2:
        return eq("kind", rng.choice(KINDS))
    if pick == 2:
        return in_("kind", rng.sample(KINDS, 2))
    if pick == 3:
        return gt("temp", rng.choice([0.0, 5.0, 10.0]))
    if pick == 4:
        return lte("n", rng.randrange(-2, 10))
    if pick == 5:
        return is_null(rng.choice(["temp", "name", "at"]))
    if pick == 6:
        return is_not_null(rng.choice(["name", "at"]))
    if pick == 7:
        return (
            like("name", rng.choice(["al%", "%a", "_eta"]))
            if rng.random() < 0.5
            else ilike("name", rng.choice(["p%", "%UMP%", "BETA"]))
        )
    if pick == 8:
        return ne("kind", "fan") if rng.random() < 0.5 else eq("on", rng.random() < 0.5)
    return or_(eq("kind", "fan"), [gt("n", 6), is_not_null("at")])


def rand_query(rng: random.Random) -> LiveQuery:
    if rng.random() < 0.2:
        col = rng.choice(["label", "size"])
        return LiveQuery(entity="site", sort=[SortKey(column=col, desc=rng.random() < 0.5)],
                         limit=rng.randint(1, 12))  # fmt: skip
    cols = ["name", "kind", "temp", "n", "on", "at"]
    sort = [SortKey(column=c, desc=rng.random() < 0.5) for c in rng.sample(cols, rng.randint(1, 2))]
    where = [rand_cond(rng) for _ in range(rng.randint(0, 2))]
    return LiveQuery(entity="asset", where=where, sort=sort, limit=rng.randint(1, 15))


def window_of(q: LiveQuery) -> tuple[str, EntitySpec, str]:
    """The table, entity and id column a query of the workload reads."""
    return ("asset", ASSET, "id") if q.entity == "asset" else ("site", SITE, "code")
