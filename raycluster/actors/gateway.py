"""`GatewayActor` (an in-cluster gateway) and `RayDeltaBus` (shard → gateway by actor calls).

Shards hand batches to a gateway actor with one actor call per batch; the
gateway fences and demultiplexes them, and each consumer iterates its
subscription as a stream of object refs (a streaming generator that yields
batches of frames, never one call per frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import ray

from raycluster._wiring import redis_gateway
from raycluster.cluster.protocol import WireFrame
from raycluster.config import TierSettings
from raycluster.errors import ClosedError
from raycluster.livequery import Cursor, LiveQuery

from .names import gateway_name

__all__ = ("GatewayActor", "RayDeltaBus")

log = logging.getLogger(__name__)


class RayDeltaBus:
    """The "ray" delta transport: `send` is an awaited call to the gateway actor.

    Awaiting each call keeps batches in order and bounds what is in flight per
    gateway (the shard accumulates the next batch meanwhile), so a slow
    gateway pushes back on the shard instead of queuing without bound.
    """

    def __init__(self, tier: str, namespace: str) -> None:
        self.tier = tier
        self.namespace = namespace
        self._handles: dict[str, Any] = {}

    async def send(self, gateway_id: str, frames: list[WireFrame]) -> None:
        handle = self._handles.get(gateway_id)
        if handle is None:
            handle = ray.get_actor(gateway_name(self.tier, gateway_id), namespace=self.namespace)
            self._handles[gateway_id] = handle
        try:
            await handle.deliver.remote(frames)
        except Exception:
            self._handles.pop(gateway_id, None)  # look it up again next time
            raise

    def deltas(self, gateway_id: str) -> Any:
        raise NotImplementedError("gateway actors receive batches through deliver()")

    async def drop(self, gateway_id: str) -> None:
        """Forget the cached handle (an actor has no channel to delete)."""
        self._handles.pop(gateway_id, None)


@ray.remote
class GatewayActor:
    """An in-cluster gateway: subscribe here, then iterate `stream(sub_id)`."""

    def __init__(self, gateway_id: str, settings_json: str, redis_url: str) -> None:
        settings = TierSettings.model_validate_json(settings_json)
        self.gw, self._closers = redis_gateway(gateway_id, redis_url, settings, transport="ray")
        self._started = asyncio.get_event_loop().create_task(self.gw.start())

    async def ready(self) -> str:
        """The gateway id, once it heartbeats."""
        await self._started
        return self.gw.id

    async def deliver(self, batch: list[WireFrame]) -> None:
        """Receive one batch of frames from a shard."""
        self.gw.receive(batch)

    async def subscribe(self, tenant: str, query_json: str, sub_id: str | None = None) -> str:
        """Register a live query; returns its id once the first window is here."""
        await self._started
        sub = await self.gw.subscribe(
            tenant, LiveQuery.model_validate_json(query_json), sub_id=sub_id
        )
        return sub.id

    async def stream(self, sub_id: str) -> Any:
        """Batches of frames (JSON-ready dicts) of one subscription, until it closes."""
        subs = {s.id: s for s in self.gw.subscriptions()}
        sub = subs.get(sub_id)
        if sub is None:
            raise ClosedError(f"subscription {sub_id} is not open on gateway {self.gw.id}")
        while True:
            frames = await sub.batch()
            if not frames:
                return
            yield [f.model_dump(mode="json") for f in frames]

    async def reanchor(self, sub_id: str, cursor_json: str | None, limit: int) -> None:
        """Move a window (persisted first, re-routed to the current owner)."""
        cursor = Cursor.model_validate_json(cursor_json) if cursor_json else None
        await self.gw.reanchor(sub_id, cursor, limit)

    async def resync(self, sub_id: str) -> None:
        """Ask the owner for a fresh window."""
        await self.gw.resync(sub_id)

    async def unsubscribe(self, sub_id: str) -> None:
        """End a subscription."""
        await self.gw.unsubscribe(sub_id)

    async def status(self) -> dict[str, Any]:
        """Subscriptions and frame counters."""
        return self.gw.status()

    async def stop(self) -> None:
        """Unsubscribe everything and leave the live set."""
        with contextlib.suppress(Exception):
            await self.gw.aclose()
        await self._closers.aclose()
