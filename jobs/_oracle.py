"""Brute-force truth for the jobs: the first N matching rows, computed from scratch."""

from __future__ import annotations

from typing import Any

from raycluster.livequery import LiveQuery, compile_predicate, cursor_key, sort_key_of


def top_n(rows: dict[str, dict[str, Any]], query: LiveQuery) -> list[str]:
    """Ids of the first `query.limit` rows matching `query`, strictly after its cursor."""
    pred = compile_predicate(query.where)
    floor = cursor_key(query.cursor, query.sort) if query.cursor is not None else ()
    keyed = sorted(
        (sort_key_of(r, query.sort, agg_id), agg_id) for agg_id, r in rows.items() if pred(r)
    )
    return [agg_id for k, agg_id in keyed if k > floor][: query.limit]
