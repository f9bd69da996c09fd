"""LIKE/ILIKE cost on the patterns that make a backtracking regex blow up.

    python benchmarks/bench_like.py [--runs 5] [--cap-s 5]

For each pattern: µs per row of the linear matcher against a 1 KB value built
to fail as late as possible (the anchored ends match, every middle segment is
searched over the whole value), and, for
comparison, the regex LIKE compiled to before, against a 40-character value,
stopped after `--cap-s` seconds. Prints a table; writes
benchmarks/results/bench_like.json.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import median_of, report

from raycluster.livequery.filter import like_matcher

# (pattern, value of 1 KB built to fail as late as possible for that pattern)
A_B = "a" * 1023 + "b"  # passes the anchored ends: every middle segment is searched
CASES = [
    ("%a%a%a%a%a%a%a%a%b", "a" * 1024),  # the pattern of the issue
    ("%a%a%a%a%a%a%a%a%c%b", A_B),
    ("%a_a_a%a_a_a%a_a_a%c%b", A_B),
    ("_%" * 40 + "c%b", A_B),
    ("%" + "a" * 200 + "c%b", A_B),  # a long literal segment
    ("%" + "a_" * 100 + "c%b", A_B),  # a long segment with `_`: value x pattern steps
    ("%" + "_" * 252 + "c%b", A_B),  # the longest pattern the default limits allow
]


def regex_like(pattern: str, *, ignore_case: bool) -> Callable[[Any], bool]:
    """The matcher LIKE used before: one anchored regex with `.*` per `%`."""
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            parts.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        parts.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    rx = re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))
    return lambda s: isinstance(s, str) and rx.fullmatch(s) is not None


def per_row_us(match: Callable[[Any], bool], value: str, min_s: float = 0.2) -> float:
    """µs per call, calling for at least `min_s` seconds."""
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < min_s:
        for _ in range(10):
            match(value)
        n += 10
    return elapsed / n * 1e6


class _Cap(Exception):
    pass


def capped_ms(match: Callable[[Any], bool], value: str, cap_s: float) -> float | None:
    """ms of one call, or None when it ran past `cap_s` (the regex engine checks signals)."""

    def stop(signum: int, frame: Any) -> None:
        raise _Cap

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, cap_s)
    t0 = time.perf_counter()
    try:
        match(value)
        return (time.perf_counter() - t0) * 1e3
    except _Cap:
        return None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cap-s", type=float, default=5.0)
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    for pattern, base in CASES:
        for op, ic, value in [
            ("like", False, base),
            ("ilike", True, base.upper()),
            ("ilike", True, "\u00e9" + base.upper()[1:]),  # non-ASCII: no lower() fast path
        ]:
            new = like_matcher(pattern, ignore_case=ic)
            assert new(value) is False
            med, _ = median_of(args.runs, lambda m=new, v=value: per_row_us(m, v))
            small = value[:39] + value[-1]  # 40 characters, the same ending
            old_ms = capped_ms(regex_like(pattern, ignore_case=ic), small, args.cap_s)
            rows.append(
                {
                    "pattern": pattern
                    if len(pattern) <= 24
                    else f"{pattern[:18]}… ({len(pattern)})",
                    "op": op,
                    "value": f"{len(value)} chars" + ("" if value.isascii() else ", non-ASCII"),
                    "new_us_per_row": med,
                    "old_ms_at_40_chars": old_ms
                    if old_ms is not None
                    else f">{args.cap_s * 1e3:.0f}",
                }
            )
    report(
        "bench_like",
        rows,
        ["pattern", "op", "value", "new_us_per_row", "old_ms_at_40_chars"],
    )


if __name__ == "__main__":
    main()
