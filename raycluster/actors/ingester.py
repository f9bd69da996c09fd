"""`IngesterActor`: the tier's Postgres ingester as a detached, restartable Ray actor.

The controller starts one when the settings have a `postgres:` section, named
after the tier and the slot (`ingester_name`), placed by `ingester_resources`
(default: the controller's). Ray restarts it after a crash (`max_restarts=-1`);
the new incarnation resumes from the slot, so nothing is lost or applied
twice (docs/postgres.md). A second ingester on the same slot, in this tier or
anywhere, waits until the slot is free: Postgres lets one process stream a
slot at a time.

The DSN reaches the actor as its own argument: the tier's settings JSON
carries it masked.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import ray
from pydantic import SecretStr
from ray.util import metrics

from raycluster._tasks import TaskSet
from raycluster.config import TierSettings
from raycluster.postgres import IngesterStatus
from raycluster.postgres.status import lsn_number

if TYPE_CHECKING:
    from raycluster.postgres import Ingester

__all__ = ("IngesterActor", "IngesterActorStatus")

log = logging.getLogger(__name__)


class IngesterActorStatus(IngesterStatus):
    """`IngesterActor.status()`: the ingester's status, and where and whether it runs."""

    running: bool  # False once `run()` ended (failed: see `error`, or stopped)
    node_id: str


class _Metrics:
    """The ingester's gauges, exported through Ray (to Prometheus)."""

    def __init__(self, slot: str) -> None:
        keys = ("slot",)
        self.lag_bytes = metrics.Gauge(
            "raycluster_ingest_lag_bytes", "WAL not yet in Redis (bytes)", keys
        )
        self.lag_s = metrics.Gauge(
            "raycluster_ingest_lag_seconds", "Age of the oldest commit not yet in Redis", keys
        )
        self.rate = metrics.Gauge("raycluster_ingest_rows_per_second", "Rows written/s", keys)
        self.confirmed = metrics.Gauge(
            "raycluster_ingest_confirmed_lsn", "Slot position confirmed to Postgres", keys
        )
        self.streaming = metrics.Gauge(
            "raycluster_ingest_streaming", "1 while the ingester streams its slot", keys
        )
        for m in (self.lag_bytes, self.lag_s, self.rate, self.confirmed, self.streaming):
            m.set_default_tags({"slot": slot})

    def export(self, st: IngesterStatus) -> None:
        self.lag_bytes.set(st["lag_bytes"])
        self.lag_s.set(st["lag_s"])
        self.rate.set(st["rows_per_s"])
        self.confirmed.set(lsn_number(st["confirmed_lsn"]))
        self.streaming.set(1 if st["state"] == "streaming" else 0)


@ray.remote
class IngesterActor:
    """A detached, restartable ingester of one slot; `ready()`, `status()`, `stop()`."""

    def __init__(self, settings_json: str, redis_url: str, dsn: str) -> None:
        settings = TierSettings.model_validate_json(settings_json)
        if settings.postgres is None:
            raise ValueError("postgres: the tier's settings have no postgres section")
        from raycluster.postgres import Ingester  # psycopg2: only where an ingester runs

        pg = settings.postgres.model_copy(update={"dsn": SecretStr(dsn)})
        self.slot = pg.slot
        self.ingester: Ingester = Ingester(
            pg, redis_url, redis_settings=settings.redis, entities=settings.entities
        )
        self._metrics = _Metrics(pg.slot)
        self._tasks = TaskSet(f"ingester {pg.slot}")
        self._task = self._tasks.spawn(self.ingester.run(), f"ingest-{pg.slot}")
        interval_s = settings.metrics_interval_s
        self._tasks.every(interval_s, self._export, "ingest-metrics", delay_s=interval_s)

    async def _export(self) -> None:
        self._metrics.export(self.ingester.status())

    async def ready(self) -> bool:
        """True once the ingester runs (its config checked against the database; it
        copies, streams, waits for its slot or retries a lost connection); raises the
        error that stopped it for good (`SourceConfigError`, `SchemaChanged`, …)."""
        await self.ingester.ready()
        return not self._task.done()

    async def pid(self) -> int:
        """The actor's process id (operators and chaos tests signal it)."""
        return os.getpid()

    async def status(self) -> IngesterActorStatus:
        """The ingester's status, and where and whether it runs."""
        st: dict[str, Any] = dict(self.ingester.status())
        st["running"] = not self._task.done()
        st["node_id"] = ray.get_runtime_context().get_node_id()
        return st  # type: ignore[return-value]

    async def stop(self) -> None:
        """Stop ingesting (the slot's position stays confirmed; a later start resumes)."""
        await self.ingester.aclose()
        await self._tasks.aclose(timeout_s=10)
