"""A driver that dies leaves nothing behind: its consumer stream closes, its
subscriptions are unsubscribed on the gateway and leave the registry."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import ray
from ray_helpers import running_tier, status, tier_settings
from support import unique, wait_for

from raycluster.redis import RedisRegistry

DRIVER = textwrap.dedent(
    """
    import asyncio, os, sys
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    from raycluster import LiveQuery, SortKey, Tier
    address, name, namespace, tenant = sys.argv[1:5]
    ray.init(address=address, namespace=namespace, log_to_driver=False)

    async def main():
        tier = Tier.connect(name, namespace)
        q = LiveQuery(entity="asset", sort=[SortKey(column="name")], limit=3)
        subs = [await tier.subscribe(tenant, q) for _ in range(3)]
        print("subscribed", *[s.id for s in subs], flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_a_killed_driver_leaves_no_subscriptions(
    ray_namespace: str, redis_server: Any
) -> None:
    settings = tier_settings(unique("deaddrv"), ray_namespace, shards=1)
    async with running_tier(settings, redis_server.url) as tier:
        registry = RedisRegistry.from_url(tier.redis_url, settings=tier.settings.redis)
        address = ray.get_runtime_context().gcs_address
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", DRIVER, address, tier.name, tier.namespace, unique("t"),
            stdout=subprocess.PIPE,
            env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            sub_ids = line.split()[1:]
            assert len(sub_ids) == 3, line
            for sid in sub_ids:
                assert await registry.get(sid) is not None
            assert (await status(tier))["subscriptions"] == 3
        finally:
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 30)

        async def gone() -> bool:
            return all([await registry.get(sid) is None for sid in sub_ids])

        await wait_for(gone, 60, what="the dead driver's registrations to be removed")
        await wait_for(lambda: _subscriptions(tier), 30, what="the shard to stop serving them")
        await registry.aclose()


async def _subscriptions(tier: Any) -> bool:
    return bool((await status(tier))["subscriptions"] == 0)
