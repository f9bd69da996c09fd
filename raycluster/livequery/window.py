"""The maintained window: an exact, bounded prefix of a query's total order.

A `Window` knows *every* matching row whose key lies in `(anchor, horizon]`
— its known range — and nothing beyond. The client sees the first `limit`
of them; the rest are the cushion. Holding a key range rather than "the first
K rows" is what keeps it exact under any interleaving: a change is applied by
asking only whether the row's new key is inside the range, so rows can move
in and out across the edge in any order without opening a hole. The range
grows only by merging a keyset read of rows strictly after `horizon`, and
shrinks only by trimming its tail (the new horizon is then the last kept key).
`horizon is None` means the range is unbounded: the window holds every match.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from .filter import Predicate
from .models import Cursor, DeltaOp, LiveDelta, Row, SortKey, trusted
from .order import KeyFn, cursor_of

__all__ = ("Entry", "Frame", "StreamSet", "Window", "row_of")

Key = tuple[Any, ...]

_ENTER, _LEAVE, _MOVE, _UPDATE = DeltaOp.ENTER, DeltaOp.LEAVE, DeltaOp.MOVE, DeltaOp.UPDATE
_ROWLESS = frozenset({DeltaOp.LEAVE, DeltaOp.UNMATCH, DeltaOp.RESET})


class Entry:
    """One known row: its key in the total order and its latest state."""

    __slots__ = ("agg_id", "at", "key", "stream_id", "vals", "version")

    def __init__(
        self,
        key: Key,
        agg_id: str,
        version: int,
        vals: dict[str, Any],
        stream_id: str | None = None,
        at: int | None = None,
    ) -> None:
        self.key = key
        self.agg_id = agg_id
        self.version = version
        self.vals = vals
        self.stream_id = stream_id
        self.at = at


class Frame:
    """A client frame as the engine produces it: cheap to make, converted on demand.

    The hot path only records (op, entry, indexes); the pydantic `LiveDelta`
    (or a plain wire dict) is built when a consumer asks, once per frame even
    when a shared view hands the same frame to many subscribers.
    """

    __slots__ = ("_delta", "_wire", "count", "entry", "new_index", "old_index", "op")

    def __init__(
        self,
        op: DeltaOp,
        entry: Entry | None,
        old_index: int | None = None,
        new_index: int | None = None,
        count: int | None = None,
    ) -> None:
        self.op = op
        self.entry = entry
        self.old_index = old_index
        self.new_index = new_index
        self.count = count
        self._delta: LiveDelta | None = None
        self._wire: dict[str, Any] | None = None

    def __repr__(self) -> str:
        agg_id = self.entry.agg_id if self.entry else None
        return f"Frame({self.op.value}, {agg_id}, {self.old_index}, {self.new_index})"

    def wire(self, sort: list[SortKey]) -> dict[str, Any]:
        """The frame as a JSON-ready dict of the `LiveDelta` fields (cached; do not mutate)."""
        w = self._wire
        if w is None:
            w = self._wire = self._make_wire(sort)
        return w

    def _make_wire(self, sort: list[SortKey]) -> dict[str, Any]:
        e = self.entry
        if e is None:
            return {
                "op": self.op.value,
                "agg_id": None,
                "version": 0,
                "row": None,
                "old_index": self.old_index,
                "new_index": self.new_index,
                "cursor": None,
                "stream_id": None,
                "at": None,
                "count": self.count,
            }
        return {
            "op": self.op.value,
            "agg_id": e.agg_id,
            "version": e.version,
            "row": None if self.op in _ROWLESS else e.vals,
            "old_index": self.old_index,
            "new_index": self.new_index,
            "cursor": {"values": [*(e.vals.get(k.column) for k in sort), e.agg_id]},
            "stream_id": e.stream_id,
            "at": e.at,
            "count": self.count,
        }

    def delta(self, sort: list[SortKey]) -> LiveDelta:
        """The frame as a `LiveDelta` (built once, then cached)."""
        d = self._delta
        if d is None:
            fields = dict(self.wire(sort))
            fields["op"] = self.op
            c = fields["cursor"]
            fields["cursor"] = None if c is None else trusted(Cursor, c)
            d = self._delta = trusted(LiveDelta, fields)
        return d


def row_of(e: Entry, sort: list[SortKey]) -> Row:
    """The public `Row` for an entry."""
    return trusted(
        Row,
        {
            "agg_id": e.agg_id,
            "version": e.version,
            "cursor": cursor_of(e.vals, sort, e.agg_id),
            "vals": e.vals,
        },
    )


def _noop(agg_id: str) -> None:
    return None


class _Rows:
    """What a window and a streamed set share: a predicate, an order, known rows."""

    __slots__ = (
        "anchor",
        "entries",
        "keyfn",
        "limit",
        "on_add",
        "on_drop",
        "pred",
        "sort",
        "trimming",
    )

    def __init__(
        self,
        *,
        limit: int,
        pred: Predicate,
        keyfn: KeyFn,
        sort: list[SortKey],
        anchor: Key = (),
        on_add: Callable[[str], None] = _noop,
        on_drop: Callable[[str], None] = _noop,
    ) -> None:
        self.limit = limit
        self.pred = pred
        self.keyfn = keyfn
        self.sort = sort
        self.anchor = anchor
        self.entries: dict[str, Entry] = {}
        self.on_add = on_add
        self.on_drop = on_drop
        # Off while a keyset read is merged: the read starts after the horizon
        # it was asked for, so the horizon must not shrink until it is merged.
        self.trimming = True

    def visible_entries(self) -> list[Entry]:
        """The rows the client holds, in the query's order."""
        raise NotImplementedError

    def visible(self) -> list[Row]:
        """The rows the client holds, as `Row`s."""
        return [row_of(e, self.sort) for e in self.visible_entries()]


class Window(_Rows):
    """Visible rows `[0, limit)` plus a cushion `[limit, limit + cushion)`.

    Invariant: `keys` is exactly the sorted keys of every row matching the
    predicate with `anchor < key <= horizon` (no bound when `horizon is None`).
    `apply` keeps it and returns the client frames that turn the old visible
    list into the new one; `merge` extends the range with a keyset read.
    `on_add`/`on_drop` are told when a row id enters or leaves the known range
    (the engine's reverse index hangs off them).
    """

    __slots__ = ("cushion", "horizon", "keys")

    def __init__(self, *, cushion: int, **common: Any) -> None:
        super().__init__(**common)
        self.cushion = cushion
        self.horizon: Key | None = self.anchor
        self.keys: list[Key] = []

    # -- reading ---------------------------------------------------------------

    def visible_entries(self) -> list[Entry]:
        """The first `limit` entries."""
        ents = self.entries
        return [ents[k[-1]] for k in self.keys[: self.limit]]

    def wants_refill(self) -> bool:
        """True when the cushion fell below half and more rows may exist."""
        return self.horizon is not None and len(self.keys) < self.limit + (self.cushion + 1) // 2

    def refill_size(self) -> int:
        """How many rows a refill should ask for to fill visible + cushion."""
        return max(1, self.limit + self.cushion - len(self.keys))

    def after(self) -> Cursor | None:
        """The keyset position a refill reads strictly after (None: from the start)."""
        if self.keys:
            e = self.entries[self.keys[-1][-1]]
            return cursor_of(e.vals, self.sort, e.agg_id)
        return None

    # -- changing --------------------------------------------------------------

    def apply(
        self,
        agg_id: str,
        version: int,
        row: dict[str, Any] | None,
        stream_id: str,
        at: int,
        out: list[Frame],
    ) -> None:
        """Apply one write (`row is None` for a delete); append client frames to `out`."""
        entries = self.entries
        old = entries.get(agg_id)
        if old is not None and version <= old.version:
            return
        newkey: Key | None = None
        if row is not None and self.pred(row):
            k = self.keyfn(row, agg_id)
            h = self.horizon
            if k > self.anchor and (h is None or k <= h):
                newkey = k
        if old is None and newkey is None:
            return
        keys = self.keys
        n = self.limit
        i = j = n  # "not visible"
        if old is not None:
            i = bisect_left(keys, old.key)
            del keys[i]
            if newkey is None:
                del entries[agg_id]
                self.on_drop(agg_id)
        if newkey is not None:
            j = bisect_left(keys, newkey)
            keys.insert(j, newkey)
            e = Entry(newkey, agg_id, version, row or {}, stream_id, at)
            entries[agg_id] = e
            if old is None:
                self.on_add(agg_id)
        if i < n:
            if j < n:
                op = _UPDATE if i == j else _MOVE
                out.append(Frame(op, e, i, j))
            else:
                out.append(Frame(_LEAVE, old, i))
                if len(keys) >= n:
                    out.append(Frame(_ENTER, entries[keys[n - 1][-1]], None, n - 1))
        elif j < n:
            if len(keys) > n:
                gone = entries[keys[n][-1]]
                out.append(Frame(_LEAVE, gone, n - 1))
            out.append(Frame(_ENTER, e, None, j))
        if len(keys) > n + self.cushion and self.trimming:
            self.trim()

    def trim(self) -> None:
        """Drop rows past visible + cushion; the horizon becomes the last kept key."""
        if len(self.keys) <= self.limit + self.cushion:
            return
        keys, entries = self.keys, self.entries
        keep = self.limit + self.cushion
        for k in keys[keep:]:
            del entries[k[-1]]
            self.on_drop(k[-1])
        del keys[keep:]
        self.horizon = keys[-1] if keys else self.anchor

    def merge(self, rows: Iterable[Entry], complete: bool, out: list[Frame]) -> None:
        """Extend the known range with a keyset read of the rows after `horizon`.

        `rows` are in order, all after the current horizon, and reflect the
        same moment as the window (the engine guarantees it); `complete` says
        the read returned every remaining match.
        """
        keys, entries, n = self.keys, self.entries, self.limit
        for e in rows:
            if self.horizon is not None and e.key <= self.horizon:
                continue  # the read raced a trim; the range already decides these
            if e.agg_id in entries:
                continue
            keys.append(e.key)
            entries[e.agg_id] = e
            self.on_add(e.agg_id)
            if len(keys) <= n:
                out.append(Frame(_ENTER, e, None, len(keys) - 1))
            self.horizon = e.key
        if complete:
            self.horizon = None
        if len(keys) > n + self.cushion and self.trimming:
            self.trim()

    def clear(self) -> None:
        """Forget everything (the range becomes empty at the anchor)."""
        for agg_id in list(self.entries):
            self.on_drop(agg_id)
        self.keys.clear()
        self.entries.clear()
        self.horizon = self.anchor


class StreamSet(_Rows):
    """Streamed mode: the rows known to match, each at its latest state.

    It starts as the snapshot's rows and grows with every row that matches
    after it; a member that stops matching (or is deleted) is dropped with an
    `unmatch`. So the client always holds a subset of the matching rows, each
    current, and sees every change to a matching row. Order is the client's.
    """

    __slots__ = ()

    def trim(self) -> None:
        """Nothing to trim in a membership set."""

    def visible_entries(self) -> list[Entry]:
        """Every member, in the query's order."""
        return sorted(self.entries.values(), key=lambda e: e.key)

    def wants_refill(self) -> bool:
        """Never: a streamed set has no window to keep full."""
        return False

    def apply(
        self,
        agg_id: str,
        version: int,
        row: dict[str, Any] | None,
        stream_id: str,
        at: int,
        out: list[Frame],
    ) -> None:
        """Apply one write; append `match`/`unmatch`/`update` frames to `out`."""
        old = self.entries.get(agg_id)
        if old is not None and version <= old.version:
            return
        if row is not None and self.pred(row):
            k = self.keyfn(row, agg_id)
            if k > self.anchor:
                e = Entry(k, agg_id, version, row, stream_id, at)
                self.entries[agg_id] = e
                if old is None:
                    self.on_add(agg_id)
                out.append(Frame(DeltaOp.MATCH if old is None else _UPDATE, e))
                return
        if old is not None:
            del self.entries[agg_id]
            self.on_drop(agg_id)
            out.append(Frame(DeltaOp.UNMATCH, old))

    def merge(self, rows: Iterable[Entry], complete: bool, out: list[Frame]) -> None:
        """Add snapshot rows as members (no frames: they are the snapshot)."""
        for e in rows:
            if e.agg_id not in self.entries:
                self.entries[e.agg_id] = e
                self.on_add(e.agg_id)

    def clear(self) -> None:
        """Forget every member."""
        for agg_id in list(self.entries):
            self.on_drop(agg_id)
        self.entries.clear()
