"""The engine alone: a live window kept exact while rows change under it.

Until the Ray tier lands this runs the single-node engine in-process over the
embedded `MemoryStore`: it registers a few live queries, writes random
changes, prints each window as its frames arrive, and checks every client
list against a brute-force recomputation at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from raycluster.livequery import (
    DeltaOp,
    Engine,
    EntitySpec,
    LiveDelta,
    LiveQuery,
    MemoryStore,
    SortKey,
    compile_predicate,
    eq,
    gt,
    sort_key_of,
)

ASSET = EntitySpec(
    name="asset",
    columns={"name": "str", "kind": "str", "temp": "int", "site": "str"},
    max_window=100,
)


def apply(rows: list[str], d: LiveDelta) -> None:
    """Apply one frame to a client list of ids."""
    if d.op is DeltaOp.RESET:
        rows.clear()
    elif d.op is DeltaOp.ENTER:
        rows.insert(d.new_index or 0, d.agg_id or "")
    elif d.op is DeltaOp.LEAVE:
        del rows[d.old_index or 0]
    elif d.op is DeltaOp.MOVE:
        del rows[d.old_index or 0]
        rows.insert(d.new_index or 0, d.agg_id or "")


async def main(changes: int, seed: int) -> int:
    rnd = random.Random(seed)
    store = MemoryStore([ASSET])
    kinds, sites = ["pump", "valve", "fan"], ["north", "south"]
    for i in range(200):
        store.upsert(
            "acme",
            "asset",
            f"a{i:03}",
            {"name": f"asset-{rnd.randrange(1000):03}", "kind": rnd.choice(kinds),
             "temp": rnd.randrange(100), "site": rnd.choice(sites)},
        )  # fmt: skip
    queries = {
        "hot pumps by temp": LiveQuery(
            entity="asset",
            where=[eq("kind", "pump"), gt("temp", 50)],
            sort=[SortKey(column="temp", desc=True)],
            limit=5,
        ),
        "north by name": LiveQuery(
            entity="asset", where=[eq("site", "north")], sort=[SortKey(column="name")], limit=5
        ),
    }
    async with Engine(store, store, store, cushion=4, entities=[ASSET]) as engine:
        subs = {name: await engine.subscribe("acme", q) for name, q in queries.items()}
        lists = {name: [r.agg_id for r in s.snapshot] for name, s in subs.items()}
        for name, ids in lists.items():
            print(f"{name:>18}: {ids}")
        t0 = time.perf_counter()
        for n in range(changes):
            agg_id = f"a{rnd.randrange(220):03}"
            if rnd.random() < 0.1:
                store.delete("acme", "asset", agg_id)
            else:
                store.upsert("acme", "asset", agg_id,
                             {"name": f"asset-{rnd.randrange(1000):03}", "kind": rnd.choice(kinds),
                              "temp": rnd.randrange(100), "site": rnd.choice(sites)})  # fmt: skip
            if n % 50 == 49:
                await engine.settle()
                for name, s in subs.items():
                    for d in s.drain():
                        apply(lists[name], d)
                        if n < 300 and d.op is not DeltaOp.UPDATE:
                            print(f"{name:>18}: {d.op.value:<6} {d.agg_id} → {lists[name]}")
        await engine.settle()
        for name, s in subs.items():
            for d in s.drain():
                apply(lists[name], d)
        elapsed = time.perf_counter() - t0
        bad = 0
        for name, q in queries.items():
            pred = compile_predicate(q.where)
            rows = store.rows("acme", "asset")
            truth = sorted((sort_key_of(r, q.sort, i), i) for i, (_, r) in rows.items() if pred(r))
            want = [i for _, i in truth[: q.limit]]
            ok = want == lists[name]
            bad += not ok
            print(f"{name:>18}: final {lists[name]} {'== truth' if ok else f'!= truth {want}'}")
        print(
            f"{changes} changes in {elapsed:.2f}s; {engine.stats.frames} frames; exact: {not bad}"
        )
        return 1 if bad else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--changes", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    raise SystemExit(asyncio.run(main(args.changes, args.seed)))
