"""`ShardActor`: one matcher node as a Ray actor (wraps the `Shard` runtime over Redis).

Ownership is decided by the shard's Redis heartbeat, not by Ray's view of the
actor: a restarted actor rejoins the live set and rendezvous hashing gives it
its partitions back, each re-claimed with a newer fencing epoch.
"""

from __future__ import annotations

import logging
import os
from typing import TypedDict

import ray
from ray.util import metrics

from raycluster._tasks import TaskSet
from raycluster._wiring import redis_shard
from raycluster.cluster.shard import ShardStatus
from raycluster.config import TierSettings
from raycluster.livequery import tune_gc

from .gateway import RayDeltaBus

__all__ = ("ShardActor", "ShardActorStatus", "ShardUnreachable")

log = logging.getLogger(__name__)


class ShardActorStatus(ShardStatus):
    """`ShardActor.status()`: the runtime's status, and where and whether it runs."""

    running: bool  # False once the runtime stopped (it failed: see the actor's log)
    shared_puts: int  # deltas several gateways needed, put once
    ray_calls: int  # batches sent to gateway actors (one actor call each)
    node_id: str


class ShardUnreachable(TypedDict):
    """What the controller reports for a shard whose status it could not read."""

    shard: str
    error: str


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

    def export(self, st: ShardStatus) -> None:
        self.subs.set(st["subscriptions"])
        self.views.set(st["views"])
        self.parts.set(len(st["partitions"]))
        self.pending.set(st["pending_frames"])
        self.lag.set(st["lag_ms"] or 0)
        for key, n, counter in (
            ("frames", st["frames"], self.frames),
            ("changes", st["changes"], self.changes),
        ):
            delta = n - self._last.get(key, 0)
            if delta > 0:
                counter.inc(delta)
            self._last[key] = n
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
        # The runtime (its failure is logged: `ready()` then says False) and the export.
        self._tasks = TaskSet(f"shard {shard_id}")
        self._task = self._tasks.spawn(self.shard.run(), f"shard-{shard_id}")
        interval_s = self.settings.metrics_interval_s
        self._tasks.every(interval_s, self._export, "shard-metrics", delay_s=interval_s)
        tune_gc()

    async def _export(self) -> None:
        self._metrics.export(self.shard.status())

    async def ready(self) -> bool:
        """True once the shard heartbeats (it may not own partitions yet)."""
        return not self._task.done()

    async def pid(self) -> int:
        """The actor's process id (operators and chaos tests signal it)."""
        return os.getpid()

    async def status(self) -> ShardActorStatus:
        """The shard runtime's status, and where and whether it runs."""
        return {
            **self.shard.status(),
            "running": not self._task.done(),
            "shared_puts": self._ray_bus.shared_puts,
            "ray_calls": self._ray_bus.calls,
            "node_id": ray.get_runtime_context().get_node_id(),
        }

    async def stop(self) -> None:
        """Leave the live set and stop serving (others take over at once)."""
        await self.shard.stop()
        await self._tasks.aclose(timeout_s=10)
        await self._ray_bus.aclose()
        await self._closers.aclose()
