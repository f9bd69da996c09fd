"""Key names the Redis layer needs beyond `raycluster.cluster.keys.Keys`.

These belong in `cluster/keys.py` (the one home for wire names); they live
here only until its owner moves them. Same prefix rules: everything under
`{prefix}:`.
"""

from __future__ import annotations

from dataclasses import dataclass

from raycluster.cluster.keys import Keys

__all__ = ("ExtraKeys", "row_prefix")


@dataclass(frozen=True, slots=True)
class ExtraKeys:
    """Further key names under one prefix (move to `Keys`)."""

    prefix: str

    def index_counts(self, tenant: str, entity: str) -> str:
        """Hash `v:{column}` → how many rows the column's (earlier) value sets hold.

        Only rows written by earlier versions are in value sets (new rows go
        to `filter_index` or a sort index): the sets are complete (usable by
        a read) exactly when this count equals the number of live rows.
        """
        return f"{self.prefix}:ixc:{tenant}:{entity}"

    def sort_num(self, tenant: str, entity: str, column: str) -> str:
        """Sorted set id → numeric value (null: +inf) of a sortable int/float/bool column."""
        return f"{self.prefix}:sn:{tenant}:{entity}:{column}"

    def sort_lex(self, tenant: str, entity: str, column: str) -> str:
        """Sorted set (scores 0) of `enc(value) + id` of a sortable str column."""
        return f"{self.prefix}:sl:{tenant}:{entity}:{column}"

    def filter_index(self, tenant: str, entity: str, column: str) -> str:
        """Sorted set (scores 0) of `enc(canon(value)) + id` of a filterable, unsortable column."""
        return f"{self.prefix}:fx:{tenant}:{entity}:{column}"

    def event_seq(self, p: int) -> str:
        """Counter of events appended to partition `p`'s stream (the `n` event field)."""
        return f"{self.prefix}:evseq:{p}"


def row_prefix(keys: Keys, tenant: str, entity: str) -> str:
    """The text every row key of one (tenant, entity) starts with.

    The read script builds `Keys.row(tenant, entity, id)` as this prefix plus
    the id; the check keeps the two from drifting apart.
    """
    prefix = keys.row(tenant, entity, "")
    if keys.row(tenant, entity, "id") != prefix + "id":
        raise RuntimeError("Keys.row no longer ends with the row id; update the read script")
    return prefix
