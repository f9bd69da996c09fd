"""`window_sql`: a live query's window as Postgres itself computes it (the demo's and the
benchmark's truth).

`SELECT id … WHERE tenant = … AND <filters> ORDER BY <sort keys>, id COLLATE "C"
LIMIT n`: text columns compare and sort by code point (`COLLATE "C"`), nulls
sort last ascending and first descending (Postgres' default) — the tier's
order (docs/semantics.md). Only for tables whose carried columns keep their
own type (text, numbers, booleans); a cursor is not supported.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from raycluster.livequery.models import Cond, LiveQuery

from .settings import TableSource

__all__ = ("window_sql",)

_OPS = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def window_sql(
    q: LiveQuery, table: TableSource, tenant: str, text_columns: Collection[str]
) -> tuple[str, list[Any]]:
    """The SQL and parameters (psycopg2 style) of `q`'s window of `tenant` in `table`:
    it returns the ids, as text, in window order. `text_columns` are the columns of a
    text type (compared with `COLLATE "C"`)."""
    if q.cursor is not None:
        raise ValueError("window_sql: a query with a cursor is not supported")
    id_column = table.id_column or "id"

    def col(name: str) -> str:
        return f'{_ident(name)} COLLATE "C"' if name in text_columns else _ident(name)

    def cond(c: Cond, params: list[Any]) -> str:
        if c.op in ("or", "and"):
            glue = " OR " if c.op == "or" else " AND "
            return "(" + glue.join(cond(a, params) for a in c.args or ()) + ")"
        column = col(c.column or "")
        if c.op == "is_null":
            return f"{column} IS NULL"
        if c.op == "is_not_null":
            return f"{column} IS NOT NULL"
        if c.op in ("in", "not_in"):
            params.append(list(c.values or ()))
            return f"{column} {'= ANY' if c.op == 'in' else '<> ALL'}(%s)"
        params.append(c.value)
        if c.op in ("like", "ilike"):
            return f"{column} {c.op.upper()} %s"
        return f"{column} {_OPS[c.op]} %s"

    params: list[Any] = [tenant]
    where = [f"{_ident(table.tenant_column)}::text = %s", *(cond(c, params) for c in q.where)]
    order = [
        f"{col(k.column)} {'DESC NULLS FIRST' if k.desc else 'ASC NULLS LAST'}" for k in q.sort
    ]
    order.append(f'{_ident(id_column)}::text COLLATE "C"')
    qualified = f"{_ident(table.schema_name)}.{_ident(table.table_name)}"
    sql = (
        f"SELECT {_ident(id_column)}::text FROM {qualified} WHERE {' AND '.join(where)} "
        f"ORDER BY {', '.join(order)} LIMIT {int(q.limit)}"
    )
    return sql, params
