"""A `Tier` handle's own gateway: its subscriptions served in this process.

`OwnGateway` runs the gateway runtime (`raycluster.cluster.Gateway`) in the
process that consumes the subscriptions, as `raycluster.connect()` does:
registrations, controls and fencing over the tier's Redis, and the frames
from the shards on the gateway's own delta stream `lq:delta:{id}`, which it
reads with one blocking XREAD. A change so travels shard → Redis → here:
no gateway actor and no Ray message in between.

Why not Ray messages: a frame that crosses a Ray actor call or a
streaming-generator item costs thread hand-offs between Ray's core-worker
threads and the asyncio loop on each side, under the GIL (an async
generator even resumes only after a thread-pool round trip per item); on a
small machine each such hop measured 2.5 to 4 ms at the median against about
1 ms for the Redis hop, and the gateway actors in between cost 40 % of a core
at 1,000 changes/s (docs/performance.md). Gateway actors remain for
consumers that want batches as object refs (`Tier.subscribe(...,
gateway_id=...)`, `GatewayActor.consume`).

`close(reason)` ends every subscription (iteration stops, `close_reason`
says why) and every task; nothing touches Ray after it, nor after
`ray.shutdown()` in this process.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray

from raycluster._tasks import TaskSet, logged
from raycluster._wiring import Closers, FromStart, redis_gateway
from raycluster.client import Subscription
from raycluster.cluster import Gateway
from raycluster.config import TierSettings
from raycluster.errors import ClosedError
from raycluster.livequery import LiveQuery

__all__ = ("OwnGateway",)

log = logging.getLogger("raycluster.actors.tier")

RAY_DOWN = "Ray was shut down in this process"
RAY_CHECK_S = 1.0  # how often an open handle checks that Ray still runs here
CLOSE_S = 10.0  # closing the gateway (unsubscribing, its connections) at most

# Connections being closed by a sync close() on the gateway's own loop thread.
_CLOSING = TaskSet("closing a tier handle's gateway connections")


class OwnGateway:
    """The subscriptions a `Tier` handle serves through a gateway in its own process.

    The gateway starts on the first `subscribe`, in the event loop that
    calls it.
    """

    def __init__(self, tier: str, redis_url: str, settings: TierSettings) -> None:
        self.tier = tier
        self.close_reason: str | None = None  # set once closed
        self._url = redis_url
        self._settings = settings
        self._gateway: Gateway | None = None
        self._closers: Closers | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the gateway's
        self._starting = asyncio.Lock()
        self._tasks = TaskSet(f"tier {tier}: own gateway")  # the Ray watch

    @property
    def gateway(self) -> Gateway | None:
        """The in-process gateway (None until the first subscribe)."""
        return self._gateway

    async def subscribe(self, tenant: str, query: LiveQuery) -> Subscription:
        """Register a live query here; returns once its first window has arrived."""
        gw = await self._started()
        return await gw.subscribe(tenant, query)

    def holds(self, sub: Subscription) -> bool:
        """Whether `sub` is one of this gateway's (open) subscriptions."""
        gw = self._gateway
        return gw is not None and gw.holds(sub.id, sub.tenant)

    def _check_open(self) -> None:
        if self.close_reason is not None:
            raise ClosedError(f"tier {self.tier!r}: {self.close_reason}")
        if not ray.is_initialized():
            raise ClosedError(f"tier {self.tier!r}: {RAY_DOWN}")

    async def _started(self) -> Gateway:
        self._check_open()
        async with self._starting:
            if self._gateway is None:
                gw, closers = redis_gateway(None, self._url, self._settings, transport="redis")
                try:
                    await gw.start()
                except BaseException:
                    await closers.aclose()
                    raise
                self._gateway, self._closers = gw, closers
                self._loop = asyncio.get_running_loop()
                self._tasks.every(RAY_CHECK_S, self._watch_ray, "ray-watch", delay_s=RAY_CHECK_S)
        self._check_open()
        return self._gateway

    async def _watch_ray(self) -> None:
        # The handle belongs to a Ray session: once Ray is shut down here, it ends.
        if not ray.is_initialized():
            self.close(RAY_DOWN)

    # -- closing -------------------------------------------------------------------

    def close(self, reason: str) -> None:
        """End every subscription (their iteration stops; `close_reason` says why), cancel
        every task and close the gateway's Redis connections. Idempotent; touches no Ray.

        From another thread than the gateway's event loop (a sync `Tier.stop()` run in
        a thread) it waits (bounded) for the connections to close; from that loop's own
        thread it only starts closing them. Its registrations stay until the shards
        sweep them (its heartbeat stopped); `aclose` removes them at once.
        """
        gw, closers = self._closing(reason)
        loop = self._loop
        if gw is not None:
            gw.cancel()
        if closers is None or loop is None or loop.is_closed() or not loop.is_running():
            return
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:
            _CLOSING.spawn(closers.aclose(), "close-connections")
        else:
            with logged(f"tier {self.tier}: closing its gateway's connections"):
                asyncio.run_coroutine_threadsafe(closers.aclose(), loop).result(CLOSE_S)

    async def aclose(self, reason: str) -> None:
        """As `close(reason)`, but first unsubscribe everything and leave the live set
        (bounded), and wait (bounded) until every task has ended."""
        gw, closers = self._closing(reason)
        if gw is not None and closers is not None:
            with logged(f"tier {self.tier}: closing its own gateway"):
                await asyncio.wait_for(gw.aclose(), CLOSE_S)
            await closers.aclose()
        await self._tasks.aclose()

    def _closing(self, reason: str) -> tuple[Gateway | None, Closers | None]:
        """Begin closing: the reason (the first given), the watch cancelled, every
        subscription marked closed; the gateway and the connections still to close
        (None if closed already or never started)."""
        if self.close_reason is None:
            self.close_reason = reason
        self._tasks.cancel()
        gw, closers = self._gateway, self._closers
        self._closers = None
        if gw is not None and closers is not None:
            for sub in gw.subscriptions():
                sub.mark_closed(self.close_reason)
        return gw, closers

    def status(self) -> dict[str, Any]:
        """The in-process gateway's status and the batches it read from its delta stream
        ({} before its first subscribe)."""
        gw = self._gateway
        if gw is None:
            return {}
        bus: Any = gw.deps.delta
        received = bus.bus.stats.received if isinstance(bus, FromStart) else 0
        return {**gw.status(), "batches_received": received}
