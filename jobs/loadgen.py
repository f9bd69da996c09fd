"""Write rows to a running tier at a fixed rate, optionally holding live windows.

    python jobs/loadgen.py --redis-url redis://HOST:6379/0 --rate 1000 --seconds 60 --windows 100
    ray job submit --working-dir . -- python jobs/loadgen.py --tier raycluster --rate 1000

With `--tier`, the Redis URL and entities come from the running tier. Prints a
line per second: writes/s done, windows held, and frames received.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import raycluster  # noqa: E402
from raycluster import LiveQuery, SortKey, TierSettings, eq  # noqa: E402
from raycluster.redis import Writer  # noqa: E402


async def main(args: argparse.Namespace) -> int:
    if args.tier:
        tier = raycluster.Tier.connect(args.tier, args.namespace)
        url, settings = tier.redis_url, tier.settings
    else:
        if not args.redis_url:
            raise SystemExit("loadgen: give --redis-url or --tier")
        url, settings = args.redis_url, TierSettings.load(args.config)
    if not any(e.name == "asset" for e in settings.entities):
        raise SystemExit("loadgen: the tier declares no 'asset' entity (see configs/tier.yaml)")
    rnd = random.Random(args.seed)
    writer = Writer.from_url(url, entities=settings.entities, settings=settings.redis)
    gw = await raycluster.connect(url, settings) if args.windows else None
    subs = []
    for i in range(args.windows):
        q = LiveQuery(entity="asset", where=[eq("owner", f"u{i % 100}")],
                      sort=[SortKey(column="name")], limit=10)  # fmt: skip
        assert gw is not None
        subs.append(await gw.subscribe(args.tenant, q))
    interval_s = 1 / args.rate
    t_end = time.monotonic() + args.seconds
    next_at = time.monotonic()
    done = last_done = 0
    last_print = time.monotonic()
    while time.monotonic() < t_end:
        i = rnd.randrange(args.rows)
        row = {"name": f"n{rnd.randrange(10**6):06}", "kind": rnd.choice(["pump", "fan"]),
               "site": "north", "temp": rnd.randrange(100), "owner": f"u{i % 100}"}  # fmt: skip
        await writer.upsert(args.tenant, "asset", f"a{i:06}", row)
        done += 1
        next_at += interval_s
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if time.monotonic() - last_print >= 1:
            now = time.monotonic()
            rate = (done - last_done) / (now - last_print)
            frames = sum(s.rows.resets for s in subs)
            print(f"writes/s {rate:8.0f}  windows {len(subs)}  resets {frames}", flush=True)
            last_done, last_print = done, now
    for s in subs:
        await s.close()
    if gw is not None:
        await gw.aclose()
    await writer.aclose()
    print(f"wrote {done} rows in {args.seconds}s")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--redis-url")
    ap.add_argument("--tier", help="name of a running tier to attach to")
    ap.add_argument("--namespace", default="raycluster")
    ap.add_argument("--config", default=str(ROOT / "configs" / "tier.yaml"))
    ap.add_argument("--tenant", default="acme")
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--windows", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    raise SystemExit(asyncio.run(main(ap.parse_args())))
