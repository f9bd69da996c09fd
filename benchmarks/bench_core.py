"""Core engine benchmarks, shaped like the reference Go engine's.

    python benchmarks/bench_core.py [--runs 5] [--quick]

Prints a table of medians and writes benchmarks/results/bench_core.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import median_of, report

from raycluster.livequery import (
    Engine,
    EngineSubscription,
    Frame,
    LiveDelta,
    LiveQuery,
    MemoryStore,
    SortKey,
    Window,
    compile_predicate,
    eq,
    gt,
    ilike,
    tune_gc,
)
from raycluster.livequery.order import key_fn
from raycluster.livequery.window import Entry


def bench_predicate(n: int = 200_000) -> float:
    """ns per evaluation of eq + gt + ilike on a matching row."""
    pred = compile_predicate([eq("kind", "pump"), gt("temp", 50), ilike("name", "%PUMP%")])
    rows = [{"kind": "pump", "temp": 51 + i % 40, "name": f"main pump {i}"} for i in range(100)]
    t0 = time.perf_counter()
    for i in range(n):
        pred(rows[i % 100])
    return (time.perf_counter() - t0) / n * 1e9


def _window(n: int, cushion: int, rows: int) -> Window:
    sort = [SortKey(column="score")]
    w = Window(limit=n, cushion=cushion, pred=lambda r: True, keyfn=key_fn(sort), sort=sort)
    kf = key_fn(sort)
    ents = sorted(
        (Entry(kf({"score": s}, f"r{i}"), f"r{i}", 1, {"score": s}) for i, s in
         enumerate(random.Random(1).sample(range(10 * rows), rows))),
        key=lambda e: e.key,
    )  # fmt: skip
    w.merge(ents, True, [])
    return w


def bench_window_update(n: int, ops: int = 50_000) -> float:
    """µs per change moving a random visible row to a random new position."""
    w = _window(n, 8, n + 8)
    rnd = random.Random(2)
    ids = [k[-1] for k in w.keys[:n]]
    versions = dict.fromkeys(ids, 1)
    out: list[LiveDelta] = []
    plan = [(rnd.choice(ids), rnd.randrange(10 * (n + 8))) for _ in range(ops)]
    t0 = time.perf_counter()
    for agg_id, score in plan:
        v = versions[agg_id] = versions[agg_id] + 1
        w.apply(agg_id, v, {"score": score}, "0-1", 0, out)
        out.clear()
    return (time.perf_counter() - t0) / ops * 1e6


def bench_churn(ops: int = 50_000) -> float:
    """µs per change of one row toggling in and out of a 100-row window."""
    sort = [SortKey(column="score")]
    w = Window(
        limit=100,
        cushion=8,
        pred=compile_predicate([gt("score", 0)]),
        keyfn=key_fn(sort),
        sort=sort,
    )
    kf = key_fn(sort)
    w.merge([Entry(kf({"score": i + 10}, f"r{i:03}"), f"r{i:03}", 1, {"score": i + 10})
             for i in range(200)], True, [])  # fmt: skip
    out: list[LiveDelta] = []
    t0 = time.perf_counter()
    for v in range(2, ops + 2):
        w.apply("hot", v, {"score": 5 if v % 2 else -1}, "0-1", 0, out)
        out.clear()
    return (time.perf_counter() - t0) / ops * 1e6


async def _fanout(views: int, changes: int = 200) -> float:
    store = MemoryStore()
    engine = Engine(store, store, store, cushion=4, buffer=1_000_000)
    for i in range(20):
        store.upsert("t", "e", f"r{i:02}", {"score": i * 10})
    subs = [
        await engine.subscribe(
            "t", LiveQuery(entity="e", where=[gt("score", -1 - i)],
                           sort=[SortKey(column="score")], limit=10)
        )
        for i in range(views)
    ]  # fmt: skip
    await engine.settle()
    gc.collect()
    t0 = time.perf_counter()
    for c in range(changes):
        store.upsert("t", "e", "r05", {"score": 50 + (c % 2) * 3})
    await engine.settle()
    for s in subs:
        s.drain()
    dt = (time.perf_counter() - t0) / changes * 1e6
    await engine.aclose()
    return dt


def bench_fanout(views: int) -> float:
    """µs to apply one change to `views` distinct windows that all hold the row."""
    return asyncio.run(_fanout(views))


async def _e2e(subs_n: int, rows_n: int, changes: int, mode: str) -> dict[str, float]:
    """Rename `changes` random rows; time until every frame reached its subscriber.

    mode "sink": each subscription hands frames to a callback as they are made
    (how a shard forwards them); mode "iter": each subscription is read by its
    own task with `async for` (the Python API).
    """
    rnd = random.Random(3)
    store = MemoryStore()
    for i in range(rows_n):
        store.upsert("t", "asset", f"a{i:06}", {"owner": f"u{i % subs_n}", "name": f"n{i:06}"})
    engine = Engine(store, store, store, cushion=8, buffer=10_000)
    received = 0
    done = asyncio.Event()

    def sink(sub: object, frames: list[Frame]) -> None:
        nonlocal received
        received += len(frames)
        if received >= changes:
            done.set()

    t0 = time.perf_counter()
    subs = [
        await engine.subscribe(
            "t",
            LiveQuery(entity="asset", where=[eq("owner", f"u{i}")],
                      sort=[SortKey(column="name")], limit=10),
            sink=sink if mode == "sink" else None,
        )
        for i in range(subs_n)
    ]  # fmt: skip
    setup_s = time.perf_counter() - t0
    await engine.settle()

    async def read(sub: EngineSubscription) -> None:
        nonlocal received
        async for _ in sub:
            received += 1
            if received >= changes:
                done.set()

    readers = [asyncio.create_task(read(s)) for s in subs] if mode == "iter" else []
    await asyncio.sleep(0)
    # Each rename keeps the owner and moves the row inside its window: exactly
    # one move/update frame per change. Writes are made up before the clock.
    plan = [rnd.randrange(rows_n) for _ in range(changes)]
    writes = [(f"a{i:06}", {"owner": f"u{i % subs_n}", "name": f"m{k:07}"}) for k, i in
              enumerate(plan)]  # fmt: skip
    tune_gc()
    upsert = store.upsert
    t0 = time.perf_counter()
    for k, (agg_id, row) in enumerate(writes):
        upsert("t", "asset", agg_id, row)
        if k % 1000 == 999:
            await asyncio.sleep(0)
    await done.wait()
    elapsed = time.perf_counter() - t0
    await engine.aclose()
    for t in readers:
        await t
    return {"changes_per_s": changes / elapsed, "setup_s": setup_s, "frames": received}


def bench_e2e(subs_n: int, rows_n: int, changes: int, mode: str) -> dict[str, float]:
    """The engine end to end: see `_e2e`."""
    return asyncio.run(_e2e(subs_n, rows_n, changes, mode))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = ap.parse_args()
    runs = args.runs
    rows: list[dict[str, object]] = []

    def add(name: str, unit: str, target: str, fn: object) -> None:
        med, vals = median_of(runs, fn)
        rows.append({"benchmark": name, "median": med, "unit": unit, "target": target,
                     "runs": [round(v, 3) for v in vals]})  # fmt: skip

    add("predicate eval (eq+gt+ilike)", "ns/op", "<= 1000", bench_predicate)
    for n in (10, 100, 1000):
        add(
            f"window update N={n}",
            "us/op",
            "<= 10" if n == 1000 else "",
            lambda n=n: bench_window_update(n),
        )
    add("churn (toggle in/out of 100-row window)", "us/op", "", bench_churn)
    for v in (100, 1000, 10_000):
        if args.quick and v > 1000:
            continue
        add(f"one change -> {v} windows", "us/change", "", lambda v=v: bench_fanout(v))
    subs_n, rows_n, changes = (1000, 10_000, 10_000) if args.quick else (10_000, 100_000, 100_000)
    for mode in ("sink", "iter"):
        e2e = [bench_e2e(subs_n, rows_n, changes, mode) for _ in range(max(1, min(runs, 3)))]
        rates = [r["changes_per_s"] for r in e2e]
        setups = [r["setup_s"] for r in e2e]
        rows.append({"benchmark": f"engine e2e ({mode}): {subs_n} subs, {rows_n} rows, "
                                  f"{changes} renames",
                     "median": statistics.median(rates), "unit": "changes/s",
                     "target": ">= 30000", "runs": [round(r) for r in rates]})  # fmt: skip
        rows.append({"benchmark": f"  setup: subscribe {subs_n} ({mode})",
                     "median": statistics.median(setups), "unit": "s", "target": "",
                     "runs": [round(r, 2) for r in setups]})  # fmt: skip
    report("bench_core", rows, ["benchmark", "median", "unit", "target", "runs"])


if __name__ == "__main__":
    main()
