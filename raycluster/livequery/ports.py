"""The ports the engine runs against: where snapshots, refills and changes come from.

`MemoryStore` implements all three in-process; the Redis layer implements
them over Redis. Positions are stream ids (`"ms-seq"`), compared as integer
pairs, per *source* (the stream that carries an entity's changes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from .models import Change, Cursor, LiveQuery, Snapshot

__all__ = ("Feed", "FeedBatch", "Refiller", "Snapshotter", "pos_key")


def pos_key(stream_id: str) -> tuple[int, int]:
    """A stream id as a comparable pair (`"5-2"` → `(5, 2)`)."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class Snapshotter(Protocol):
    """Reads the first rows of a query, with the stream position they reflect."""

    async def snapshot(self, tenant: str, query: LiveQuery, limit: int) -> Snapshot:
        """The first `limit` matching rows strictly after `query.cursor`, in total order.

        Read atomically with respect to writers: the rows reflect exactly the
        changes up to and including `watermark` on `source`.
        """
        ...


class Refiller(Protocol):
    """Reads the next rows of a query after a keyset position."""

    async def refill(
        self, tenant: str, query: LiveQuery, after: Cursor | None, limit: int
    ) -> Snapshot:
        """Like `snapshot`, but strictly after `after` (None: from `query.cursor`)."""
        ...


@dataclass(slots=True)
class FeedBatch:
    """Changes in stream order, then where each source stands after them.

    A source whose position is reported has delivered every change up to it,
    including any it skipped as malformed.
    """

    changes: list[Change]
    positions: dict[str, str] = field(default_factory=dict)


class Feed(Protocol):
    """An ordered stream of changes, per source, with no loss or duplicates."""

    def batches(self) -> AsyncIterator[FeedBatch]:
        """Iterate batches; the first reports the starting positions."""
        ...

    async def head(self) -> dict[str, str]:
        """The newest position of each source now (what `settle` waits for)."""
        ...
