"""`LiveList`: the client side of a live query — a list kept by applying frames."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from raycluster.errors import DesyncError
from raycluster.livequery import DeltaOp, LiveDelta

__all__ = ("Item", "LiveList")


class Item:
    """One row the client holds."""

    __slots__ = ("agg_id", "row", "version")

    def __init__(self, agg_id: str, version: int, row: dict[str, Any]) -> None:
        self.agg_id = agg_id
        self.version = version
        self.row = row

    def __repr__(self) -> str:
        return f"Item({self.agg_id!r}, v{self.version}, {self.row!r})"


class LiveList:
    """A list of rows maintained by applying `LiveDelta` frames in order.

    Maintained mode: `reset` clears, `enter` inserts at `new_index`, `leave`
    removes at `old_index`, `move` removes at `old_index` and inserts at
    `new_index`, `update` replaces at `new_index`. Streamed mode (`match`,
    `unmatch`, and `update` without an index) keeps members in arrival order.
    A frame that does not fit (index out of range, wrong row at an index)
    raises `DesyncError` and leaves the list unchanged.
    """

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.resets = 0
        self.expected = 0  # enters still owed by the last reset

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    @property
    def ids(self) -> list[str]:
        """The ids, in list order."""
        return [i.agg_id for i in self.items]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The rows' values, in list order."""
        return [i.row for i in self.items]

    @property
    def complete(self) -> bool:
        """False while the `enter` frames announced by the last `reset` are still arriving."""
        return self.expected == 0

    def apply(self, d: LiveDelta) -> None:
        """Apply one frame."""
        items = self.items
        op = d.op
        if op is DeltaOp.RESET:
            items.clear()
            self.resets += 1
            self.expected = d.count or 0
            return
        agg_id = d.agg_id or ""
        if op is DeltaOp.ENTER:
            i = self._index(d.new_index, len(items) + 1)
            items.insert(i, Item(agg_id, d.version, d.row or {}))
            if self.expected:
                self.expected -= 1
        elif op is DeltaOp.LEAVE:
            i = self._at(d.old_index, agg_id)
            del items[i]
        elif op is DeltaOp.MOVE:
            i = self._at(d.old_index, agg_id)
            j = self._index(d.new_index, len(items))
            del items[i]
            items.insert(j, Item(agg_id, d.version, d.row or {}))
        elif op is DeltaOp.UPDATE and d.new_index is not None:
            i = self._at(d.new_index, agg_id)
            items[i] = Item(agg_id, d.version, d.row or {})
        elif op in (DeltaOp.MATCH, DeltaOp.UPDATE):
            # A match of a member, or an update of a non-member, means a frame was lost.
            pos = self._find(agg_id)
            if (pos is None) == (op is DeltaOp.UPDATE):
                held = "holds" if pos is not None else "does not hold"
                raise DesyncError(f"{op.value} of {agg_id!r}, which the list {held}")
            item = Item(agg_id, d.version, d.row or {})
            if pos is None:
                items.append(item)
            else:
                items[pos] = item
        elif op is DeltaOp.UNMATCH:
            pos = self._find(agg_id)
            if pos is None:
                raise DesyncError(f"unmatch of {agg_id!r}, which the list does not hold")
            del items[pos]

    def _index(self, i: int | None, bound: int) -> int:
        if i is None or not 0 <= i < bound:
            raise DesyncError(f"index {i} outside a list of {len(self.items)}")
        return i

    def _at(self, i: int | None, agg_id: str) -> int:
        i = self._index(i, len(self.items))
        if self.items[i].agg_id != agg_id:
            raise DesyncError(f"expected {agg_id!r} at {i}, found {self.items[i].agg_id!r}")
        return i

    def _find(self, agg_id: str) -> int | None:
        for k, item in enumerate(self.items):
            if item.agg_id == agg_id:
                return k
        return None
