"""Plain-text tables for the terminal: `format_table`, and the `status` table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from raycluster.postgres.status import describe_ingester

__all__ = ("cell", "format_status", "format_table")

MAX_CELL = 40  # characters of one cell before it is cut with "…"


def cell(value: Any) -> str:
    """How one value reads in a table: blank for null, lower-case booleans, cut at 40."""
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:g}" if abs(value) < 1e15 else repr(value)
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _numeric(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of an aligned table: numbers right-aligned, everything else left-aligned.

    A column is numeric when every non-blank cell of it parses as a number.
    """
    widths = [len(h) for h in headers]
    for r in rows:
        for k, text in enumerate(r):
            widths[k] = max(widths[k], len(text))
    right = [
        bool([r[k] for r in rows if r[k] not in ("", "-")])
        and all(_numeric(r[k]) for r in rows if r[k] not in ("", "-"))
        for k in range(len(headers))
    ]

    def line(cells: Sequence[str]) -> str:
        out = [t.rjust(widths[k]) if right[k] else t.ljust(widths[k]) for k, t in enumerate(cells)]
        return "  ".join(out).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _rate(frames: int, before: Mapping[str, Any] | None, dt_s: float | None) -> str:
    if before is None or not dt_s or "error" in before:
        return "-"
    return f"{max(0.0, (frames - before.get('frames', 0)) / dt_s):.1f}"


def format_status(
    status: Mapping[str, Any],
    previous: Mapping[str, Any] | None = None,
    interval_s: float | None = None,
) -> str:
    """The `raycluster status` report of one `Tier.status()` dict.

    One row per shard (id, alive, partitions owned, subscriptions, frames/s,
    lag) and a totals row; with a Postgres source, a line of its ingester (state,
    confirmed slot position, lag in bytes and seconds, rows/s). Per-shard
    frames/s needs an earlier sample (`previous`, taken `interval_s` before);
    without one it reads `-`. A shard the controller could not reach is
    listed as not alive with its error under the table.
    """
    live = set(status.get("live_shards", ()))
    shards: Mapping[str, Mapping[str, Any]] = status.get("shards", {})
    before: Mapping[str, Mapping[str, Any]] = (previous or {}).get("shards", {})
    ids = sorted(set(shards) | live, key=lambda s: (len(s), s))
    rows: list[list[str]] = []
    errors: list[str] = []
    for sid in ids:
        s = shards.get(sid)
        if s is None or "error" in s:
            why = "not started by this tier's controller" if s is None else s["error"]
            errors.append(f"  {sid}: {why}")
            rows.append([sid, "yes" if sid in live else "no", "-", "-", "-", "-"])
            continue
        lag = s.get("lag_ms")
        rows.append([
            sid,
            "yes" if sid in live else "no",
            str(len(s.get("partitions", ()))),
            str(s.get("subscriptions", 0)),
            _rate(s.get("frames", 0), before.get(sid), interval_s),
            "-" if lag is None else f"{lag:.1f}",
        ])  # fmt: skip
    alive = sum(1 for sid in ids if sid in live and "error" not in shards.get(sid, {"error": 1}))
    rows.append([
        "total",
        f"{alive}/{len(ids)}",
        str(status.get("partitions_owned", 0)),
        str(status.get("subscriptions", 0)),
        f"{status.get('frames_per_s', 0.0):.1f}" if previous is not None else "-",
        f"{status.get('lag_ms') or 0:.1f}",
    ])  # fmt: skip
    gateways = ", ".join(status.get("gateways", ())) or "none"
    head = (
        f"tier {status.get('name', '?')}: {len(live)} live shard(s), "
        f"{status.get('desired_shards', '?')} desired; in-cluster gateways: {gateways}"
    )
    table = format_table(
        ["shard", "alive", "partitions", "subscriptions", "frames/s", "lag ms"], rows
    )
    lines = [head, *table]
    if previous is not None:
        lines.append(f"changes/s {status.get('changes_per_s', 0.0):.1f}")
    slot = status.get("postgres_slot")
    if slot:
        lines.append(describe_ingester(status.get("ingester"), slot))
    if errors:
        lines += ["errors:", *errors]
    return "\n".join(lines)
