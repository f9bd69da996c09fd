"""`ShardActor`: one matcher node as a Ray actor (wraps the `Shard` runtime over Redis).

Ownership is decided by the shard's Redis heartbeat, not by Ray's view of the
actor: a restarted actor rejoins the live set and rendezvous hashing gives it
its partitions back, each re-claimed with a newer fencing epoch.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import ray
from ray.util import metrics

from raycluster._tasks import cancel_and_wait
from raycluster._wiring import redis_shard
from raycluster.config import TierSettings
from raycluster.livequery import tune_gc

from .gateway import RayDeltaBus

__all__ = ("ShardActor",)

log = logging.getLogger(__name__)


class _Metrics:
    """Shard metrics exported through Ray (to Prometheus)."""

    def __init__(self, shard_id: str) -> None:
        tags = {"shard": shard_id}
        self.subs = metrics.Gauge("raycluster_subscriptions", "Subscriptions served", ("shard",))
        self.views = metrics.Gauge("raycluster_views", "Distinct live views", ("shard",))
        self.parts = metrics.Gauge("raycluster_partitions_owned", "Partitions owned", ("shard",))
        self.pending = metrics.Gauge("raycluster_pending_frames", "Frames queued", ("shard",))
        self.frames = metrics.Counter("raycluster_frames_total", "Frames produced", ("shard",))
        self.changes = metrics.Counter("raycluster_changes_total", "Changes matched", ("shard",))
        self.resets = metrics.Counter(
            "raycluster_resets_total", "Resets sent, by cause", ("shard", "cause")
        )
        self.lag = metrics.Gauge(
            "raycluster_stream_lag_ms", "Age of the newest change matched", ("shard",)
        )
        for m in (self.subs, self.views, self.parts, self.pending, self.frames, self.changes):
            m.set_default_tags(tags)
        self.lag.set_default_tags(tags)
        self.resets.set_default_tags(tags)
        self._last: dict[str, int] = {}

    def export(self, st: dict[str, Any]) -> None:
        self.subs.set(st["subscriptions"])
        self.views.set(st["views"])
        self.parts.set(len(st["partitions"]))
        self.pending.set(st["pending_frames"])
        self.lag.set(st.get("lag_ms") or 0)
        for key, counter in (("frames", self.frames), ("changes", self.changes)):
            delta = st[key] - self._last.get(key, 0)
            if delta > 0:
                counter.inc(delta)
            self._last[key] = st[key]
        for cause, n in st["resets"].items():
            delta = n - self._last.get(f"reset:{cause}", 0)
            if delta > 0:
                self.resets.inc(delta, tags={"cause": cause})
            self._last[f"reset:{cause}"] = n


@ray.remote
class ShardActor:
    """A detached, restartable shard; `status()` and `stop()` for the controller."""

    def __init__(self, shard_id: str, settings_json: str, redis_url: str) -> None:
        self.id = shard_id
        self.settings = TierSettings.model_validate_json(settings_json)
        ray_bus = self._ray_bus = RayDeltaBus(self.settings.name, self.settings.namespace)
        self.shard, self._closers = redis_shard(
            shard_id, redis_url, self.settings, extra_delta={"ray": ray_bus}
        )
        self._metrics = _Metrics(shard_id)
        loop = asyncio.get_event_loop()
        self._task = loop.create_task(self.shard.run(), name=f"shard-{shard_id}")
        self._task.add_done_callback(self._died)
        self._metrics_task = loop.create_task(self._export(), name="shard-metrics")
        tune_gc()

    def _died(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("shard %s stopped", self.id, exc_info=task.exception())

    async def _export(self) -> None:
        while True:
            await asyncio.sleep(self.settings.metrics_interval_s)
            try:
                self._metrics.export(self.shard.status())
            except Exception:
                log.exception("shard %s: metrics export failed", self.id)

    async def ready(self) -> bool:
        """True once the shard heartbeats (it may not own partitions yet)."""
        return not self._task.done()

    async def pid(self) -> int:
        """The actor's process id (operators and chaos tests signal it)."""
        return os.getpid()

    async def status(self) -> dict[str, Any]:
        """The shard runtime's status."""
        st = self.shard.status()
        st["running"] = not self._task.done()
        st["shared_puts"] = self._ray_bus.shared_puts
        st["node_id"] = ray.get_runtime_context().get_node_id()
        return st

    async def stop(self) -> None:
        """Leave the live set and stop serving (others take over at once)."""
        await self.shard.stop()
        await cancel_and_wait([self._metrics_task, self._task], timeout_s=10)
        await self._closers.aclose()
