"""`Tier`: the driver's handle on a running tier: start, connect, status, scale, stop, subscribe."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from pathlib import Path
from typing import Any, cast

import ray

from raycluster.client import Subscription
from raycluster.config import TierSettings
from raycluster.errors import RayclusterError
from raycluster.livequery import Cursor, LiveQuery
from raycluster.redis import Writer, local_redis_for_process

from .controller import Controller
from .names import controller_name, gateway_name

__all__ = ("Tier",)

log = logging.getLogger(__name__)


class _Consumer:
    """This driver's end of one gateway actor: one frame stream for all its subscriptions.

    Subscriptions made through `Tier.subscribe` share it; frames are routed
    to each `Subscription` here. When the stream ends (the gateway died),
    every subscription on it is marked closed.
    """

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.id = f"drv-{uuid.uuid4().hex[:12]}"
        self.subs: dict[str, Subscription] = {}
        self.task: asyncio.Task[None] | None = None

    def usable(self) -> bool:
        """False once its stream ended, or if it belongs to another (finished) event loop."""
        t = self.task
        return t is None or (not t.done() and t.get_loop() is asyncio.get_running_loop())

    def attach(self, sub: Subscription) -> None:
        """Route `sub`'s frames to it (before subscribing: the first window may come at once)."""
        self.subs[sub.id] = sub
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._pump(), name=f"consumer-{self.id}")

    async def _pump(self) -> None:
        stream = self.gateway.consume.options(_generator_backpressure_num_objects=16)
        try:
            async for ref in stream.remote(self.id):
                entries = await ref
                by_sub: dict[str, list[Any]] = {}
                for e in entries:
                    by_sub.setdefault(e[0], []).append(e)
                for sid, mine in by_sub.items():
                    sub = self.subs.get(sid)
                    if sub is not None:
                        sub.deliver_wire(mine)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("consumer %s: the stream from its gateway ended", self.id)
        finally:
            for sub in self.subs.values():
                sub.mark_closed()
            self.subs.clear()

    # SubscriptionControl

    async def reanchor(self, sub_id: str, cursor: Cursor | None, limit: int) -> None:
        cursor_json = cursor.model_dump_json() if cursor is not None else None
        await self.gateway.reanchor.remote(sub_id, cursor_json, limit)

    async def unsubscribe(self, sub_id: str) -> None:
        self.subs.pop(sub_id, None)
        with contextlib.suppress(Exception):
            await self.gateway.unsubscribe.remote(sub_id)

    async def resync(self, sub_id: str) -> None:
        await self.gateway.resync.remote(sub_id)


class Tier:
    """A handle on a tier running on Ray. Create with `start` or `connect`."""

    def __init__(self, controller: Any, info: dict[str, Any]) -> None:
        self.controller = controller
        self.name: str = info["name"]
        self.namespace: str = info["namespace"]
        self.redis_url: str = info["redis_url"]
        self.gateway_ids: list[str] = info["gateways"]
        self.settings = TierSettings.model_validate_json(info["settings"])
        self._rr = itertools.count()
        self._consumers: dict[str, _Consumer] = {}  # gateway id -> this driver's stream

    @classmethod
    def start(
        cls,
        config: TierSettings | str | Path | None = None,
        *,
        redis_url: str | None = None,
        shards: int | None = None,
    ) -> Tier:
        """Start (or re-adopt) the tier described by `config`; returns once shards are up.

        With no Redis URL configured, a private `redis-server` is started that
        lives as long as this driver process (fine on one machine; on a
        multi-node cluster configure `redis.redis_url`).
        """
        if isinstance(config, TierSettings):
            settings = config
        else:
            settings = TierSettings.load(config)
        updates: dict[str, Any] = {}
        if shards is not None:
            updates["shards"] = shards
        if redis_url is not None:
            updates["redis"] = settings.redis.model_copy(update={"redis_url": redis_url})
        if updates:
            settings = TierSettings.model_validate({**settings.model_dump(), **updates})
        url = settings.redis.redis_url or local_redis_for_process(
            binary=settings.redis.redis_server
        )
        if not ray.is_initialized():
            ray.init(namespace=settings.namespace)
        controller = Controller.options(  # type: ignore[attr-defined]
            name=controller_name(settings.name),
            namespace=settings.namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            num_cpus=0,
        ).remote(settings.model_dump_json(), url)
        info = ray.get(controller.start.remote())
        return cls(controller, info)

    @classmethod
    def connect(cls, name: str = "raycluster", namespace: str = "raycluster") -> Tier:
        """Attach to a running tier (from a notebook or another driver)."""
        if not ray.is_initialized():
            ray.init(address="auto", namespace=namespace)
        try:
            controller = ray.get_actor(controller_name(name), namespace=namespace)
        except ValueError as e:
            raise RayclusterError(f"no tier {name!r} runs in namespace {namespace!r}") from e
        info = cast(dict[str, Any], ray.get(controller.info.remote()))
        return cls(controller, info)

    def status(self) -> dict[str, Any]:
        """Live shards, partitions each owns, subscriptions, frames/s, lag."""
        status: dict[str, Any] = ray.get(self.controller.status.remote())
        return status

    def scale(self, n: int) -> dict[str, Any]:
        """Run exactly `n` shards."""
        status: dict[str, Any] = ray.get(self.controller.scale.remote(n))
        return status

    def stop(self) -> None:
        """Stop every actor of the tier, the controller last."""
        ray.get(self.controller.stop.remote())
        ray.kill(self.controller)

    def writer(self) -> Writer:
        """A `Writer` for this tier's Redis (close it with `await writer.aclose()`)."""
        return Writer.from_url(
            self.redis_url, entities=self.settings.entities, settings=self.settings.redis
        )

    def gateway(self, gateway_id: str | None = None) -> Any:
        """The handle of one in-cluster gateway (round-robin when not named)."""
        gid = self._pick(gateway_id)
        return ray.get_actor(gateway_name(self.name, gid), namespace=self.namespace)

    def _pick(self, gateway_id: str | None) -> str:
        if not self.gateway_ids:
            raise RayclusterError(f"tier {self.name!r} runs no in-cluster gateway")
        return gateway_id or self.gateway_ids[next(self._rr) % len(self.gateway_ids)]

    async def subscribe(
        self, tenant: str, query: LiveQuery, *, gateway_id: str | None = None
    ) -> Subscription:
        """Subscribe through an in-cluster gateway; returns once the first window is here.

        All subscriptions this `Tier` makes through one gateway share one
        stream of object refs (batches of frames for all of them).
        """
        gid = self._pick(gateway_id)
        consumer = self._consumers.get(gid)
        if consumer is None or not consumer.usable():
            consumer = self._consumers[gid] = _Consumer(self.gateway(gid))
        sub_id = uuid.uuid4().hex
        sub = Subscription(sub_id, tenant, query, consumer, buffer=self.settings.gateway.buffer)
        first = sub.next_reset()
        consumer.attach(sub)
        try:
            await consumer.gateway.subscribe.remote(
                tenant, query.model_dump_json(), sub_id, consumer.id
            )
            await first
        except BaseException:
            consumer.subs.pop(sub_id, None)
            first.cancel()
            raise
        return sub
