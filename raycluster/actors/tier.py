"""`Tier`: the driver's handle on a running tier: start, connect, status, scale, stop, subscribe."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import ray

from raycluster.client import Subscription
from raycluster.config import TierSettings
from raycluster.errors import NotReadyError, RayclusterError
from raycluster.livequery import Cursor, LiveQuery
from raycluster.redis import Writer, local_redis_for_process

from .controller import Controller
from .names import controller_name, gateway_name

__all__ = ("StartProgress", "Tier")

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 90.0  # the controller stops every actor (15 s each at most, concurrently)
CALL_TIMEOUT_S = 60.0  # any other call to the controller
PROGRESS_EVERY_S = 5.0  # the default reporter logs this often while actors are pending
WARN_AFTER_S = 10.0  # ... and warns once when a start takes this long
RETRY_S = 0.2  # between calls to a restarting controller


@dataclass(frozen=True)
class StartProgress:
    """One look at a `Tier.start` / `tier.scale` under way.

    `live`: actors ready; `pending`: actor id -> resources it waits for;
    `failed`: actor id -> its last readiness error; `available` / `total`:
    what the cluster has free / in all, of the resources the actors ask for.
    """

    elapsed_s: float
    desired: int
    live: list[str]
    pending: dict[str, dict[str, float]]
    failed: dict[str, str]
    available: dict[str, float]
    total: dict[str, float]

    def missing(self) -> dict[str, float]:
        """Resources the pending actors need together beyond what is free."""
        need: dict[str, float] = {}
        for demand in self.pending.values():
            for r, v in demand.items():
                need[r] = need.get(r, 0.0) + v
        gap = {r: v - self.available.get(r, 0.0) for r, v in need.items()}
        return {r: round(v, 3) for r, v in gap.items() if v > 1e-9}

    def describe(self) -> str:
        """One line: live, pending and on what, failed, free of total."""
        pending = ", ".join(f"{a} {d}" for a, d in sorted(self.pending.items())) or "none"
        line = (
            f"{len(self.live)} ready ({', '.join(self.live) or 'none'}); pending: {pending}; "
            f"free {self.available} of {self.total}"
        )
        if self.failed:
            line += "; failing: " + "; ".join(f"{a}: {e}" for a, e in sorted(self.failed.items()))
        return f"{line} ({self.elapsed_s:.0f} s)"

    def error(self, tier: str, timeout_s: float) -> NotReadyError:
        """The error a start that timed out in this state raises."""
        return NotReadyError(
            tier, timeout_s, self.pending, self.failed, self.missing(), self.available, self.total
        )


def _resources(names: set[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Free and total amounts of `names` (and CPU) in the cluster, right now."""
    names = names | {"CPU"}
    free, total = ray.available_resources(), ray.cluster_resources()
    return (
        {r: round(free.get(r, 0.0), 3) for r in sorted(names)},
        {r: round(total.get(r, 0.0), 3) for r in sorted(names)},
    )


class _LogProgress:
    """The default reporter: INFO every few seconds while actors are pending, one WARNING
    once it takes long (visible without any logging configured)."""

    def __init__(self) -> None:
        self._last = 0.0
        self._warned = False

    def __call__(self, p: StartProgress) -> None:
        if not self._warned and p.elapsed_s >= WARN_AFTER_S:
            self._warned = True
            log.warning("tier not ready yet: %s", p.describe())
        elif p.elapsed_s - self._last >= PROGRESS_EVERY_S:
            log.info("waiting for the tier: %s", p.describe())
        else:
            return
        self._last = p.elapsed_s


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
        on_progress: Callable[[StartProgress], None] | None = None,
    ) -> Tier:
        """Start (or re-adopt) the tier described by `config`; returns once every actor is ready.

        The shard count is `shards` if given, else the one a running (or
        re-adopted) tier persisted in Redis (`tier.scale`), else the config's.
        While actors are pending, `on_progress` gets a `StartProgress` about
        twice a second (default: logged). After `start_timeout_s` without every
        actor ready, or on Ctrl-C / any error meanwhile, everything of the
        tier is stopped (controller included) and the error raised:
        `NotReadyError` names the missing resources.

        With no Redis URL configured, a private `redis-server` is started that
        lives as long as this driver process (fine on one machine; on a
        multi-node cluster configure `redis.redis_url`).
        """
        if isinstance(config, TierSettings):
            settings = config
        else:
            settings = TierSettings.load(config)
        if redis_url is not None:
            redis = settings.redis.model_copy(update={"redis_url": redis_url})
            settings = TierSettings.model_validate({**settings.model_dump(), "redis": redis})
        url = settings.redis.redis_url or local_redis_for_process(
            binary=settings.redis.redis_server
        )
        if not ray.is_initialized():
            ray.init(namespace=settings.namespace)
        deadline = time.monotonic() + settings.start_timeout_s
        controller = Controller.options(  # type: ignore[attr-defined]
            name=controller_name(settings.name),
            namespace=settings.namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            num_cpus=0,
        ).remote(settings.model_dump_json(), url)
        report = on_progress if on_progress is not None else _LogProgress()
        try:
            info = _started(controller.start.remote(shards), settings, deadline, report)
            tier = cls(controller, info)
            tier._wait_ready(deadline, report)
        except BaseException:
            _teardown(controller)
            raise
        return tier

    def _wait_ready(
        self, deadline: float, on_progress: Callable[[StartProgress], None] | None
    ) -> None:
        """Poll the controller until every actor is ready; `NotReadyError` at `deadline`."""
        report = on_progress if on_progress is not None else _LogProgress()
        timeout_s = self.settings.start_timeout_s
        t0 = deadline - timeout_s
        while True:
            remaining = deadline - time.monotonic()
            wait_s = min(0.5, max(remaining, 0.0))
            p = self._call("progress", wait_s)
            if not p["pending"] and not p["failed"]:
                return
            names = {r for d in p["pending"].values() for r in d}
            free, total = _resources(names)
            snap = StartProgress(
                time.monotonic() - t0, p["desired"], p["live"], p["pending"], p["failed"],
                free, total,
            )  # fmt: skip
            if remaining <= 0:
                raise snap.error(self.name, timeout_s)
            report(snap)

    @classmethod
    def connect(cls, name: str = "raycluster", namespace: str = "raycluster") -> Tier:
        """Attach to a running tier (from a notebook or another driver)."""
        if not ray.is_initialized():
            ray.init(address="auto", namespace=namespace)
        try:
            controller = ray.get_actor(controller_name(name), namespace=namespace)
        except ValueError as e:
            raise RayclusterError(f"no tier {name!r} runs in namespace {namespace!r}") from e
        try:
            info = cast(dict[str, Any], ray.get(controller.info.remote(), timeout=CALL_TIMEOUT_S))
        except ray.exceptions.GetTimeoutError as e:
            raise RayclusterError(
                f"the controller of tier {name!r} did not answer within {CALL_TIMEOUT_S:g} s"
            ) from e
        return cls(controller, info)

    def status(self) -> dict[str, Any]:
        """Live shards, partitions each owns, subscriptions, frames/s, lag."""
        status: dict[str, Any] = self._call("status")
        return status

    def scale(
        self, n: int, *, on_progress: Callable[[StartProgress], None] | None = None
    ) -> dict[str, Any]:
        """Run exactly `n` shards (persisted: a restarted controller keeps it); the status.

        Waits for new shards as `start` does; after `start_timeout_s` (or on
        Ctrl-C) it scales back to the previous count and raises (`NotReadyError`
        names the missing resources).
        """
        deadline = time.monotonic() + self.settings.start_timeout_s
        before = self._call("progress")["desired"]
        self._call("scale", n)
        try:
            self._wait_ready(deadline, on_progress)
        except BaseException:
            with contextlib.suppress(Exception):
                ray.get(self.controller.scale.remote(before), timeout=STOP_TIMEOUT_S)
            raise
        return self.status()

    def _call(self, method: str, *args: Any, timeout_s: float = CALL_TIMEOUT_S) -> Any:
        """`controller.method(*args)`, bounded by `timeout_s`.

        Every controller method is idempotent, so a call lost to a controller
        restart (`ActorUnavailableError`) is sent again until the deadline; a
        controller that does not answer in time is a `RayclusterError`.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            ref = getattr(self.controller, method).remote(*args)
            try:
                return ray.get(ref, timeout=max(deadline - time.monotonic(), 0.0))
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(RETRY_S)
            except ray.exceptions.GetTimeoutError as e:
                raise RayclusterError(
                    f"the controller of tier {self.name!r} did not answer {method}() within "
                    f"{timeout_s:g} s"
                ) from e

    def stop(self) -> None:
        """Stop every actor of the tier, the controller last; nothing runs or heartbeats after."""
        try:
            self._call("stop", timeout_s=STOP_TIMEOUT_S)
        finally:
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


def _started(
    ref: Any, settings: TierSettings, deadline: float, report: Callable[[StartProgress], None]
) -> dict[str, Any]:
    """The controller's `start()` reply (its process may take a while to come up)."""
    t0 = deadline - settings.start_timeout_s
    while True:
        remaining = deadline - time.monotonic()
        done, _ = ray.wait([ref], timeout=min(0.5, max(remaining, 0.0)))
        if done:
            return cast(dict[str, Any], ray.get(ref))
        free, total = _resources(set())
        snap = StartProgress(time.monotonic() - t0, 0, [], {"controller": {}}, {}, free, total)
        if remaining <= 0:
            raise snap.error(settings.name, settings.start_timeout_s)
        report(snap)


def _teardown(controller: Any) -> None:
    """Stop what a failed start left (bounded), then the controller itself."""
    try:
        ray.get(controller.stop.remote(), timeout=STOP_TIMEOUT_S)
    except Exception as e:
        log.warning("stopping the tier after a failed start: %s", e)
    with contextlib.suppress(Exception):
        ray.kill(controller)
