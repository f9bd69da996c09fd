"""The predicate index: which views can a changed row concern?

The reference Go engine allocates a map sized to every view on every change,
which caps it near 5,000 changes/s at 10,000 subscriptions on this machine:
the cost of a change grows with the number of views, not with the number it
touches. Here a change costs a few dict lookups plus the candidate views:

* the **counting algorithm** over top-level `eq`/`in` conjuncts — each view is
  filed under every (column, value) it accepts; a row's values are looked up
  column by column, and a view is a candidate only when every one of its
  indexed columns hit;
* views with no such conjunct (**residual** views) are always candidates;
* the **holders** reverse index (row id → views whose known range holds it),
  so a row that stops matching still reaches the views it must leave.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

__all__ = ("PredicateIndex",)

V = TypeVar("V", bound=Hashable)


class PredicateIndex(Generic[V]):
    """Candidate lookup for views `V` over one (tenant, entity)."""

    def __init__(self) -> None:
        # column → value → views accepting it in that column
        self._by_col: dict[str, dict[Any, set[V]]] = {}
        self._need: dict[V, int] = {}  # view → how many indexed columns must hit
        self._terms: dict[V, list[tuple[str, frozenset[Any]]]] = {}
        self.residual: set[V] = set()
        # Views waiting for a store read see every change of the group: whether
        # a change concerns them depends on parked changes not yet applied
        # (a parked insert of row X makes a later change of X relevant).
        self.loading: set[V] = set()
        self._multi = 0  # views filed under more than one column
        self.holders: defaultdict[str, set[V]] = defaultdict(set)

    def __len__(self) -> int:
        return len(self._need) + len(self.residual)

    def add(self, view: V, terms: list[tuple[str, frozenset[Any]]]) -> None:
        """File `view` under its (column, accepted values) terms (empty: residual)."""
        if not terms:
            self.residual.add(view)
            return
        self._terms[view] = terms
        self._need[view] = len(terms)
        self._multi += len(terms) > 1
        for col, values in terms:
            if not values:
                continue  # nothing can match this column: the view is never a candidate
            buckets = self._by_col.setdefault(col, {})
            for v in values:
                buckets.setdefault(v, set()).add(view)

    def remove(self, view: V) -> None:
        """Forget `view` (its holder entries are dropped by the window)."""
        self.residual.discard(view)
        self.loading.discard(view)
        for col, values in self._terms.pop(view, ()):
            buckets = self._by_col.get(col)
            if buckets is None:  # a term with no values (contradictory eq/in) filed nothing
                continue
            for v in values:
                bucket = buckets[v]
                bucket.discard(view)
                if not bucket:
                    del buckets[v]
            if not buckets:
                del self._by_col[col]
        self._multi -= self._need.pop(view, 0) > 1

    def candidates(self, agg_id: str, row: dict[str, Any] | None) -> list[V]:
        """Views a write of `row` (None: a delete) to `agg_id` may change (no repeats)."""
        held = self.holders.get(agg_id)
        if row is None:
            if self.loading:
                return list(self.loading.union(held or ()))
            return list(held) if held else []
        found: set[V] = set(held) if held else set()
        if self.loading:
            found |= self.loading
        if self.residual:
            found |= self.residual
        need = self._need
        hits: dict[V, int] | None = None
        for col, buckets in self._by_col.items():
            try:
                bucket = buckets.get(row.get(col))
            except TypeError:  # an unhashable value equals no indexed value
                continue
            if not bucket:
                continue
            if self._multi:
                for view in bucket:
                    n = need[view]
                    if n == 1:
                        found.add(view)
                    else:
                        if hits is None:
                            hits = {}
                        c = hits[view] = hits.get(view, 0) + 1
                        if c == n:
                            found.add(view)
            else:
                found |= bucket
        return list(found)

    def hold(self, agg_id: str, view: V) -> None:
        """Record that `view`'s known range holds row `agg_id`."""
        self.holders[agg_id].add(view)

    def release(self, agg_id: str, view: V) -> None:
        """Record that `view` no longer holds row `agg_id`."""
        s = self.holders.get(agg_id)
        if s is not None:
            s.discard(view)
            if not s:
                del self.holders[agg_id]
