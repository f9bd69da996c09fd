"""Shared output for benchmark scripts: a printed table and a JSON file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def median_of(runs: int, fn: Any) -> tuple[float, list[float]]:
    """Run `fn()` (returning one number) `runs` times; the median and every value."""
    vals = [fn() for _ in range(runs)]
    return statistics.median(vals), vals


def report(name: str, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """Print `rows` as a table and write them, with machine facts, to results/NAME.json."""
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    meta = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "load_average_1m_5m_15m": [round(x, 2) for x in os.getloadavg()],
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {out}")
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)
