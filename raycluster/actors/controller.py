"""The controller: owns the desired shard count, starts, re-adopts, scales and stops actors.

It is a detached named actor. Shards and gateways are detached named actors
too, created with `get_if_exists`, so a restarted controller re-adopts them
by name; the desired shard count lives in Redis, so a scale survives a
controller restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import ray

from raycluster._tasks import cancel_and_wait
from raycluster.config import TierSettings
from raycluster.redis import RedisMembership
from raycluster.redis._client import make_client

from .gateway import GatewayActor
from .names import gateway_name, shard_name
from .shard import ShardActor

__all__ = ("Controller",)

log = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 5.0  # a shard that does not answer status in time is reported as such
ENSURE_INTERVAL_S = 5.0
GATEWAY_MAX_CONCURRENCY = 100_000  # how often missing actors are re-created


def shard_ids(n: int) -> list[str]:
    """The ids of the first `n` shards (stable, so scaling down removes the last ones)."""
    return [f"shard-{i}" for i in range(n)]


def gateway_ids(n: int) -> list[str]:
    """The ids of the in-cluster gateways."""
    return [f"ray-gw-{i}" for i in range(n)]


@ray.remote
class Controller:
    """Starts/scales/stops the tier's actors and reports `status()`."""

    def __init__(self, settings_json: str, redis_url: str) -> None:
        self.settings_json = settings_json
        self.settings = TierSettings.model_validate_json(settings_json)
        self.url = redis_url
        self.desired = self.settings.shards
        self.shards: dict[str, Any] = {}
        self.gateways: dict[str, Any] = {}
        # One client (with the configured timeouts and retries) for the live set
        # and the desired shard count.
        self._redis = make_client(redis_url, self.settings.redis, name="raycluster-controller")
        self._members = RedisMembership(self._redis, settings=self.settings.redis)
        self._desired_key = f"{self.settings.redis.key_prefix}:tier:{self.settings.name}:shards"
        self._last: tuple[float, int, int] | None = None
        self._lock = asyncio.Lock()
        self._task = asyncio.get_event_loop().create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(ENSURE_INTERVAL_S)
            try:
                async with self._lock:
                    await self._forget_dead()
                    await self._ensure()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("controller: ensure failed")

    async def start(self) -> dict[str, Any]:
        """Bring the tier to its desired size (re-adopting actors that exist); wait until ready."""
        stored = await self._redis.get(self._desired_key)
        if stored is not None:
            self.desired = int(stored)
        async with self._lock:
            await self._ensure()
        await asyncio.gather(*(h.ready.remote() for h in self.gateways.values()))
        await asyncio.gather(*(h.ready.remote() for h in self.shards.values()))
        return await self.info()

    async def info(self) -> dict[str, Any]:
        """How to reach the tier: Redis URL, gateway ids, names."""
        return {
            "name": self.settings.name,
            "namespace": self.settings.namespace,
            "redis_url": self.url,
            "gateways": sorted(self.gateways),
            "settings": self.settings_json,
        }

    def _shard(self, sid: str) -> Any:
        s = self.settings
        return ShardActor.options(  # type: ignore[attr-defined]
            name=shard_name(s.name, sid),
            namespace=s.namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            num_cpus=s.shard_num_cpus,
            resources=dict(s.shard_resources),
            scheduling_strategy="SPREAD" if s.spread_shards else "DEFAULT",
        ).remote(sid, self.settings_json, self.url)

    def _gateway(self, gid: str) -> Any:
        s = self.settings
        return GatewayActor.options(  # type: ignore[attr-defined]
            name=gateway_name(s.name, gid),
            namespace=s.namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            num_cpus=s.gateway_num_cpus,
            resources=dict(s.gateway_resources),
            scheduling_strategy="SPREAD",  # one node's loss takes as few gateways as possible
            # Every open stream() and pending subscribe() holds one slot of the
            # actor's concurrency (1,000 by default); past it, shards' deliver()
            # calls would queue behind them and no window would ever arrive.
            max_concurrency=GATEWAY_MAX_CONCURRENCY,
        ).remote(gid, self.settings_json, self.url)

    async def _forget_dead(self) -> None:
        # A shard killed for good (not restarted by Ray) is re-created under its name.
        # All actors are asked at once: the lock is held for one timeout, not one each.
        async def dead(aid: str, h: Any) -> bool:
            try:
                await asyncio.wait_for(h.ready.remote(), STATUS_TIMEOUT_S)
            except ray.exceptions.ActorDiedError:
                log.warning("controller: %s died; starting it again", aid)
                return True
            except Exception:
                pass  # slow or restarting: leave it to Ray
            return False

        for group in (self.shards, self.gateways):
            actors = list(group.items())
            gone = await asyncio.gather(*(dead(aid, h) for aid, h in actors))
            for (aid, _), is_dead in zip(actors, gone, strict=True):
                if is_dead:
                    del group[aid]

    async def _ensure(self) -> None:
        for gid in gateway_ids(self.settings.gateways):
            if gid not in self.gateways:
                self.gateways[gid] = self._gateway(gid)
        for sid in shard_ids(self.desired):
            if sid not in self.shards:
                self.shards[sid] = self._shard(sid)

    async def scale(self, n: int) -> dict[str, Any]:
        """Run exactly `n` shards: new ones start, the highest-numbered extra ones stop."""
        if n < 0:
            raise ValueError(f"shards: must be 0 or more (got {n})")
        async with self._lock:
            self.desired = n
            await self._redis.set(self._desired_key, n)
            await self._ensure()
            keep = set(shard_ids(n))
            for sid in sorted(set(self.shards) - keep):
                await self._retire(self.shards.pop(sid))
        await asyncio.gather(*(h.ready.remote() for h in self.shards.values()))
        return await self.status()

    async def _retire(self, handle: Any) -> None:
        try:
            await asyncio.wait_for(handle.stop.remote(), 15)
        except Exception as e:  # dead or stuck: killed below all the same
            log.warning("controller: graceful stop failed (%s: %s); killing", type(e).__name__, e)
        try:
            await asyncio.to_thread(ray.kill, handle)  # a blocking call: off the event loop
        except Exception as e:
            log.warning("controller: kill failed: %s: %s", type(e).__name__, e)

    async def status(self) -> dict[str, Any]:
        """Live shards, partitions each owns, subscriptions, frames/s, lag."""
        live = await self._members.live_shards()

        async def one(sid: str, h: Any) -> tuple[str, dict[str, Any]]:
            try:
                return sid, await asyncio.wait_for(h.status.remote(), STATUS_TIMEOUT_S)
            except Exception as e:
                return sid, {"shard": sid, "error": f"{type(e).__name__}: {e}"}

        per = dict(await asyncio.gather(*(one(sid, h) for sid, h in self.shards.items())))
        frames = sum(s.get("frames", 0) for s in per.values())
        changes = sum(s.get("changes", 0) for s in per.values())
        now = time.monotonic()
        fps = cps = 0.0
        if self._last is not None and now > self._last[0]:
            dt = now - self._last[0]
            fps = max(0.0, (frames - self._last[1]) / dt)
            cps = max(0.0, (changes - self._last[2]) / dt)
        self._last = (now, frames, changes)
        return {
            "name": self.settings.name,
            "desired_shards": self.desired,
            "live_shards": live,
            "shards": per,
            "subscriptions": sum(s.get("subscriptions", 0) for s in per.values()),
            "partitions_owned": sum(len(s.get("partitions", ())) for s in per.values()),
            "frames_per_s": round(fps, 1),
            "changes_per_s": round(cps, 1),
            "lag_ms": max((s.get("lag_ms") or 0 for s in per.values()), default=0),
            "gateways": sorted(self.gateways),
            "controller_node": ray.get_runtime_context().get_node_id(),
        }

    async def stop(self) -> None:
        """Stop every gateway and shard (gracefully, then for good)."""
        await cancel_and_wait([self._task])
        async with self._lock:
            await asyncio.gather(*(self._retire(h) for h in self.gateways.values()))
            await asyncio.gather(*(self._retire(h) for h in self.shards.values()))
            self.gateways.clear()
            self.shards.clear()
            await self._redis.delete(self._desired_key)
        with contextlib.suppress(Exception):
            await self._redis.aclose()
