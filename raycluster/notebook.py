"""Live windows in Jupyter: `show(sub)` draws a subscription as a table kept current.

    sub = await tier.subscribe("acme", LiveQuery(entity="asset", sort=[...], limit=20))
    table = show(sub)          # an HTML table, redrawn in place as frames arrive
    ...
    table.stop()               # stop redrawing (the subscription stays open)

Works with any `Subscription` (from `Tier.subscribe` or `raycluster.connect`):
it hooks `sub.on_change`, which runs on the notebook's event loop whenever a
batch of frames has been applied. Needs IPython (the `notebook` extra).
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raycluster.client import Subscription

__all__ = ("LiveTable", "show")

MAX_REDRAWS_PER_S = 10.0


def _cell(value: Any) -> str:
    if value is None:
        return '<td class="null"></td>'
    if isinstance(value, bool):
        return f"<td>{'true' if value else 'false'}</td>"
    if isinstance(value, int | float):
        return f'<td style="text-align:right">{html.escape(str(value))}</td>'
    return f"<td>{html.escape(str(value))}</td>"


class LiveTable:
    """An HTML view of a subscription's window.

    Guarantees: every redraw shows a whole window (never one half-way through
    a reset); at most `max_fps` redraws a second, and the last change is
    always drawn (a change inside the throttle interval schedules one redraw
    for its end). `_repr_html_` is a static snapshot of the window now.
    """

    def __init__(
        self,
        sub: Subscription,
        *,
        columns: Sequence[str] | None = None,
        max_rows: int = 50,
        max_fps: float = MAX_REDRAWS_PER_S,
    ) -> None:
        self.sub = sub
        self.columns = list(columns) if columns is not None else None
        self.max_rows = max_rows
        self.min_gap_s = 1.0 / max_fps
        self.redraws = 0
        self._handle: Any = None
        self._previous: Any = None
        self._hooked = False
        self._drawn_at = 0.0
        self._pending: asyncio.TimerHandle | None = None

    # -- rendering -----------------------------------------------------------------

    def _columns(self) -> list[str]:
        if self.columns is not None:
            return self.columns
        cols: list[str] = []
        seen: set[str] = set()
        for item in self.sub.rows.items:
            for k in item.row:
                if k not in seen:
                    seen.add(k)
                    cols.append(k)
        return cols

    def to_html(self) -> str:
        """The table of the window as it is now (ids, then columns; at most `max_rows`)."""
        sub = self.sub
        items = sub.rows.items
        cols = self._columns()
        state = "closed" if sub.closed else "live"
        caption = (
            f"{html.escape(sub.tenant)}/{html.escape(sub.query.entity)}: {len(items)} row(s), "
            f"epoch {sub.epoch}, {state}, {time.strftime('%H:%M:%S')}"
        )
        head = "".join(f"<th>{html.escape(c)}</th>" for c in ["#", "id", *cols])
        body = []
        for k, item in enumerate(items[: self.max_rows]):
            cells = "".join(_cell(item.row.get(c)) for c in cols)
            body.append(f"<tr><td>{k + 1}</td><td>{html.escape(item.agg_id)}</td>{cells}</tr>")
        more = len(items) - self.max_rows
        if more > 0:
            body.append(f'<tr><td colspan="{len(cols) + 2}">… {more} more row(s)</td></tr>')
        return (
            f'<table class="raycluster-live" data-sub="{html.escape(sub.id)}">'
            f'<caption style="text-align:left">{caption}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    # -- live display --------------------------------------------------------------

    def display(self) -> LiveTable:
        """Display the table (one output) and redraw that output in place as frames arrive."""
        from IPython.display import HTML, display

        self._handle = display(HTML(self.to_html()), display_id=True)
        self._drawn_at = time.monotonic()
        if not self._hooked:
            self._previous = self.sub.on_change
            self.sub.on_change = self._changed
            self._hooked = True
        return self

    def stop(self) -> None:
        """Stop redrawing (the subscription itself stays open; close it with `sub.close()`)."""
        if self._hooked and self.sub.on_change == self._changed:
            self.sub.on_change = self._previous
        self._hooked = False
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _changed(self, sub: Subscription) -> None:
        if self._previous is not None:
            self._previous(sub)
        if not sub.rows.complete or self._pending is not None:
            return  # the enters of a reset are still coming / a redraw is already due
        wait_s = self._drawn_at + self.min_gap_s - time.monotonic()
        if wait_s <= 0:
            self.redraw()
        else:
            loop = asyncio.get_running_loop()
            self._pending = loop.call_later(wait_s, self._due)

    def _due(self) -> None:
        self._pending = None
        if self._hooked and self.sub.rows.complete:
            self.redraw()

    def redraw(self) -> None:
        """Update the displayed output with the window now."""
        if self._handle is None:
            return
        from IPython.display import HTML

        self._handle.update(HTML(self.to_html()))
        self._drawn_at = time.monotonic()
        self.redraws += 1


def show(
    sub: Subscription, *, columns: Sequence[str] | None = None, max_rows: int = 50
) -> LiveTable:
    """Display `sub`'s window as an HTML table in the notebook, redrawn in place as it changes.

    At most 10 redraws a second; the last change is always drawn. Returns the
    `LiveTable` (`stop()` ends the redraws).
    """
    return LiveTable(sub, columns=columns, max_rows=max_rows).display()
