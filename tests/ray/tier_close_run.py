"""Run by test_tier_close.py in a process of its own (it shuts its Ray down).

Starts a local Ray and a tier on a private Redis (from a thread that ends
right after), opens three subscriptions
with readers iterating them, then ends the tier as `MODE` says (`aclose`,
`stop`, or `ray.shutdown()` with the tier still running), waits for the
readers, shuts Ray down, keeps the event loop running 10 s more and prints
what it saw as JSON: why each subscription ended, whether Ray stayed down,
and which tasks were still alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ["RAY_AUTH_MODE"] = "disabled"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `support` (pytest's path)

import psutil
import ray
from support import private_redis, unique

from raycluster import LiveQuery, SortKey, Tier, TierSettings

QUIET_S = 10.0  # after ray.shutdown(): nothing may start Ray again within this


def start_on_a_thread_that_ends(settings: TierSettings) -> Tier:
    """`Tier.start` on a pool thread that ends at once: the local Ray it starts (and
    its processes, which Linux ties to the starting thread) must outlive it."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(Tier.start, settings).result()


def ray_processes_alive() -> dict[str, bool]:
    """Whether the GCS and the raylet this process started still run."""
    running = set()
    for kid in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if kid.status() != psutil.STATUS_ZOMBIE:
                running.add(kid.name())
    return {n: n in running for n in ("gcs_server", "raylet")}


async def run(mode: str) -> dict[str, object]:
    me = asyncio.current_task()
    with private_redis() as srv:
        name = unique("close")
        settings = TierSettings.load(
            None, name=name, namespace=name, shards=1, gateways=2, start_timeout_s=60,
            redis={"redis_url": srv.url, "key_prefix": name},
        )  # fmt: skip
        tier = await asyncio.to_thread(start_on_a_thread_that_ends, settings)
        writer = tier.writer()
        await writer.upsert("acme", "asset", "a1", {"name": "one"})
        query = LiveQuery(entity="asset", sort=[SortKey(column="name")], limit=5)
        subs = [await tier.subscribe("acme", query) for _ in range(3)]

        async def read(sub: object) -> int:
            n = 0
            async for _ in sub:  # type: ignore[attr-defined]
                n += 1
            return n

        readers = [asyncio.create_task(read(s)) for s in subs]
        await asyncio.sleep(0.5)
        ray_alive = ray_processes_alive()
        if mode == "aclose":
            await tier.aclose()
        elif mode == "stop":
            tier.stop()  # the sync call, from the event loop's thread
        else:
            ray.shutdown()  # the tier is not stopped: its streams fail
        _, pending = await asyncio.wait(readers, timeout=60)
        await writer.aclose()
        if mode != "shutdown":
            ray.shutdown()
        t0 = time.monotonic()
        await asyncio.sleep(QUIET_S)
        return {
            "ray_alive": ray_alive,
            "readers_ended": not pending,
            "reasons": [s.close_reason for s in subs],
            "ray_down_s": None if ray.is_initialized() else round(time.monotonic() - t0, 1),
            "tasks": sorted(t.get_name() for t in asyncio.all_tasks() if t is not me),
        }


if __name__ == "__main__":
    print("RESULT " + json.dumps(asyncio.run(run(sys.argv[1]))), flush=True)
