"""`IngesterStatus`: what an ingester reports, and how it reads in a table.

An ingester publishes its status to Redis (`SourceStatus`, key
`Keys.source_status(slot)`) every `status_interval_s`; it expires after
`STATUS_TTL_INTERVALS` intervals without one, so a stopped or lost ingester
disappears from `raycluster status`, the edge's `/metrics` and the tier's
status. Light: no Postgres client is imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

__all__ = ("STATUS_TTL_INTERVALS", "IngesterStatus", "describe_ingester", "lsn_number")

STATUS_TTL_INTERVALS = 5  # a published status expires after this many status intervals


class IngesterStatus(TypedDict):
    """`Ingester.status()`: where it is, how far behind, how fast."""

    # starting | copying | streaming | waiting | reconnecting | recopying | failed | stopped
    state: str
    slot: str
    publication: str
    dsn: str  # credentials masked
    ingester: str  # host:pid of the process
    generation: int  # copies made since the slot's state began (a new copy: +1)
    confirmed_lsn: str  # the slot position confirmed to Postgres (everything before is in Redis)
    received_lsn: str  # the server's WAL position as of its last message
    synced_lsn: str  # every transaction committed before it is in Redis
    lag_bytes: int  # received_lsn - synced_lsn
    lag_s: float  # age of the oldest committed transaction not yet in Redis (0: none)
    pending_changes: int
    rows_per_s: float  # rows written (copied or streamed) per second, over the last 10 s
    applied: int
    skipped: int
    unchanged: int
    uncarried: int
    transactions: int
    truncates: int
    copies: int
    copied_rows: int
    reconnects: int
    error: str | None  # the last error (cleared once streaming again)
    uptime_s: float
    updated_at: float  # epoch seconds of this report


def lsn_number(text: str) -> int:
    """A WAL position `X/Y` as a number (bytes of WAL since 0/0)."""
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo or "0", 16)


def describe_ingester(st: Mapping[str, Any] | None, slot: str = "?") -> str:
    """One line for a terminal: slot, state, confirmed position, lag, rows/s (and the error);
    for no status (None), that none reports on `slot`."""
    if st is None:
        return f"ingester {slot}: none reporting (while none runs, Postgres keeps the slot's WAL)"
    line = (
        f"ingester {st.get('slot', '?')}: {st.get('state', '?')}, confirmed "
        f"{st.get('confirmed_lsn', '?')}, lag {st.get('lag_bytes', 0)} bytes / "
        f"{st.get('lag_s', 0.0):g} s, {st.get('rows_per_s', 0.0):g} rows/s"
    )
    if st.get("error"):
        line += f"; last error: {st['error']}"
    return line
