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

from raycluster._tasks import cancel_and_wait, reap
from raycluster.client import Subscription
from raycluster.config import TierSettings
from raycluster.errors import NotReadyError, RayclusterError, UnavailableError
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


# A driver whose gateway is lost moves its subscriptions to a live gateway.
PROBE_TIMEOUT_S = 5.0  # a gateway that does not answer `ready` this fast is tried later
MOVE_TIMEOUT_S = 30.0  # one resubscribe (registration + first window) at most
MOVE_DEADLINE_S = 300.0  # then the subscription is closed (every gateway stayed unreachable)
MOVE_BACKOFF_S = (0.1, 2.0)  # between rounds of attempts: first, at most


_OnLost = Callable[["_Consumer", list[Subscription]], None]


class _Consumer:
    """This driver's end of one gateway actor: one frame stream for all its subscriptions.

    Subscriptions made through `Tier.subscribe` share it; frames are routed
    to each `Subscription` here. When the stream ends other than by
    cancellation (the gateway actor or its node died), the open
    subscriptions are handed to `on_lost`, which moves them to a live
    gateway; on cancellation they are marked closed.
    """

    def __init__(self, gateway_id: str, gateway: Any, on_lost: _OnLost) -> None:
        self.gateway_id = gateway_id
        self.gateway = gateway
        self.id = f"drv-{uuid.uuid4().hex[:12]}"
        self.subs: dict[str, Subscription] = {}
        # sub id -> what to add to its seqs (subscriptions moved here continue their
        # numbering); None until its first frame here sets it.
        self.renumber: dict[str, int | None] = {}
        self.task: asyncio.Task[None] | None = None
        self._on_lost = on_lost

    def usable(self) -> bool:
        """False once its stream ended, or if it belongs to another (finished) event loop."""
        t = self.task
        return t is None or (not t.done() and t.get_loop() is asyncio.get_running_loop())

    def attach(self, sub: Subscription, *, moved: bool = False) -> None:
        """Route `sub`'s frames to it (before subscribing: the first window may come at once).

        With `moved`, its frames are numbered on from the last `seq` it applied.
        """
        self.subs[sub.id] = sub
        if moved:
            self.renumber[sub.id] = None
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._pump(), name=f"consumer-{self.id}")

    def detach(self, sub_id: str) -> None:
        self.subs.pop(sub_id, None)
        self.renumber.pop(sub_id, None)

    async def _pump(self) -> None:
        stream = self.gateway.consume.options(_generator_backpressure_num_objects=16)
        lost = True
        try:
            async for ref in stream.remote(self.id):
                entries = await ref
                by_sub: dict[str, list[Any]] = {}
                for e in entries:
                    by_sub.setdefault(e[0], []).append(e)
                for sid, mine in by_sub.items():
                    sub = self.subs.get(sid)
                    if sub is not None:
                        sub.deliver_wire(self._numbered(sub, mine))
            log.warning("consumer %s: gateway %s ended its stream", self.id, self.gateway_id)
        except asyncio.CancelledError:
            lost = False
            raise
        except Exception as e:
            log.warning(
                "consumer %s: the stream from gateway %s failed: %s: %s",
                self.id, self.gateway_id, type(e).__name__, e,
            )  # fmt: skip
        finally:
            subs = [s for s in self.subs.values() if not s.closed]
            self.subs.clear()
            self.renumber.clear()
            if lost and subs:
                self._on_lost(self, subs)
            else:
                for sub in subs:
                    sub.mark_closed()

    def _numbered(self, sub: Subscription, entries: list[Any]) -> list[Any]:
        if sub.id not in self.renumber:
            return entries
        offset = self.renumber[sub.id]
        if offset is None:  # the first frame here (a reset) follows the last one applied
            offset = self.renumber[sub.id] = sub.seq + 1 - entries[0][1]
        return [[e[0], e[1] + offset, *e[2:]] for e in entries]

    async def release(self) -> None:
        """Ask the gateway to end this consumer (its subscriptions go with it)."""
        await self.gateway.release.remote(self.id)


class _Router:
    """The `SubscriptionControl` of every subscription a `Tier` makes.

    It acts through whichever consumer holds the subscription now, so a
    subscription keeps working after it moved to another gateway.
    """

    def __init__(self) -> None:
        self.where: dict[str, _Consumer] = {}

    def _holder(self, sub_id: str) -> tuple[_Consumer, str]:
        """The consumer holding `sub_id` now, and the subscription's tenant."""
        c = self.where.get(sub_id)
        sub = c.subs.get(sub_id) if c is not None else None
        if c is None or sub is None or not c.usable():
            raise UnavailableError(f"subscription {sub_id} is moving to another gateway")
        return c, sub.tenant

    async def reanchor(self, sub_id: str, cursor: Cursor | None, limit: int) -> None:
        cursor_json = cursor.model_dump_json() if cursor is not None else None
        c, tenant = self._holder(sub_id)
        await c.gateway.reanchor.remote(sub_id, tenant, cursor_json, limit)

    async def unsubscribe(self, sub_id: str) -> None:
        c = self.where.pop(sub_id, None)
        if c is None:
            return
        sub = c.subs.get(sub_id)
        c.detach(sub_id)
        if sub is None:
            return
        try:
            await c.gateway.unsubscribe.remote(sub_id, sub.tenant)
        except Exception as e:  # the gateway is gone: so is the subscription
            log.info("unsubscribe %s: %s: %s", sub_id, type(e).__name__, e)

    async def resync(self, sub_id: str) -> None:
        c, tenant = self._holder(sub_id)
        await c.gateway.resync.remote(sub_id, tenant)


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
        self._router = _Router()
        self._tasks: set[asyncio.Task[None]] = set()  # subscriptions being moved
        # Subscriptions moved off a lost gateway, and those closed after every attempt failed.
        self.moves: dict[str, int] = {"moved": 0, "failed": 0}

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
            resources=dict(settings.controller_resources),
        ).remote(settings.model_dump_json(), url)
        report = on_progress or _LogProgress()
        try:
            info = _started(controller.start.remote(shards), settings, deadline, report)
            tier = cls(controller, info)
            tier._wait_ready(deadline, report)
        except BaseException:
            _teardown(controller)
            raise
        return tier

    def _wait_ready(self, deadline: float, report: Callable[[StartProgress], None]) -> None:
        """Poll the controller until every actor is ready; `NotReadyError` at `deadline`."""
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
            self._wait_ready(deadline, on_progress or _LogProgress())
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

    def gateway_of(self, sub: Subscription) -> str | None:
        """The id of the gateway holding `sub` now (None while it moves, or once closed)."""
        c = self._router.where.get(sub.id)
        return c.gateway_id if c is not None else None

    async def _consumer(self, gid: str) -> _Consumer:
        """This driver's stream from gateway `gid` (a new one if the last ended)."""
        consumer = self._consumers.get(gid)
        if consumer is None or not consumer.usable():
            handle = await asyncio.to_thread(self.gateway, gid)  # a GCS lookup: off the loop
            consumer = self._consumers[gid] = _Consumer(gid, handle, self._lost)
        return consumer

    async def subscribe(
        self, tenant: str, query: LiveQuery, *, gateway_id: str | None = None
    ) -> Subscription:
        """Subscribe through an in-cluster gateway; returns once the first window is here.

        All subscriptions this `Tier` makes through one gateway share one
        stream of object refs (batches of frames for all of them). If that
        gateway's actor or node is lost, the subscription moves to a live
        gateway on its own: it gets a new id (`sub.id`), then a `reset` and
        the current window of its current query, numbered on from the last
        `seq` it applied, then live frames. Its `rows` stay as they were
        until that window arrives.
        """
        consumer = await self._consumer(self._pick(gateway_id))
        sub = Subscription("", tenant, query, self._router, buffer=self.settings.gateway.buffer)
        await self._attach(consumer, sub, moved=False)
        return sub

    async def _attach(self, consumer: _Consumer, sub: Subscription, *, moved: bool) -> None:
        """Subscribe `sub` (its query, under an id the gateway mints) through `consumer`."""
        # The id first: frames are routed by it, and the first window may come at once.
        sub.rebind(await consumer.gateway.new_sub_id.remote(sub.tenant, consumer.id))
        first = sub.next_reset()
        consumer.attach(sub, moved=moved)
        self._router.where[sub.id] = consumer
        try:
            await consumer.gateway.subscribe.remote(
                sub.tenant, sub.query.model_dump_json(), sub.id, consumer.id
            )
            await first
        except BaseException:
            consumer.detach(sub.id)
            self._router.where.pop(sub.id, None)
            first.cancel()
            # The gateway may hold it already (only the window was late): end it
            # there (fire and forget: the call is submitted, not awaited).
            with contextlib.suppress(Exception):
                consumer.gateway.unsubscribe.remote(sub.id, sub.tenant)
            if not moved:  # the caller never gets it: a lost stream must not move it
                sub.mark_closed()
            raise

    # -- a lost gateway ------------------------------------------------------------

    def _lost(self, dead: _Consumer, subs: list[Subscription]) -> None:
        """`dead`'s stream ended: move its open subscriptions (in a task this Tier owns)."""
        for sub in subs:
            self._router.where.pop(sub.id, None)
        if self._consumers.get(dead.gateway_id) is dead:
            del self._consumers[dead.gateway_id]
        task = asyncio.create_task(self._move_all(dead, subs), name=f"move-{dead.id}")
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        reap(task, f"tier {self.name}")

    async def _move_all(self, dead: _Consumer, subs: list[Subscription]) -> None:
        # If the gateway lives on (only the stream broke), it drops what `dead` held.
        release = asyncio.create_task(self._release(dead))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MOVE_DEADLINE_S
        delay = MOVE_BACKOFF_S[0]
        try:
            while subs:
                order = self._failover_order(dead.gateway_id)
                moved = await asyncio.gather(*(self._move(sub, order) for sub in subs))
                subs = [s for s, ok in zip(subs, moved, strict=True) if not ok and not s.closed]
                if subs and loop.time() + delay > deadline:
                    self.moves["failed"] += len(subs)
                    log.error(
                        "tier %s: %d subscription(s) found no live gateway within %ss; closed",
                        self.name, len(subs), MOVE_DEADLINE_S,
                    )  # fmt: skip
                    for sub in subs:
                        sub.mark_closed()
                    return
                if subs:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MOVE_BACKOFF_S[1])
        finally:
            await cancel_and_wait([release], timeout_s=0)

    async def _release(self, dead: _Consumer) -> None:
        try:
            await asyncio.wait_for(dead.release(), PROBE_TIMEOUT_S)
        except Exception as e:  # most often: the gateway is dead, as expected
            log.debug("release of %s: %s: %s", dead.id, type(e).__name__, e)

    def _failover_order(self, dead: str) -> list[str]:
        """The gateways to try, the lost one last (Ray may be restarting it)."""
        ids = list(self.gateway_ids)
        k = next(self._rr) % max(1, len(ids))
        ids = ids[k:] + ids[:k]  # spread the moved subscriptions over the others
        return [g for g in ids if g != dead] + [g for g in ids if g == dead]

    async def _move(self, sub: Subscription, order: list[str]) -> bool:
        """Resubscribe `sub` through the first gateway of `order` that works; False if none did."""
        for gid in order:
            if sub.closed:
                return True
            try:
                consumer = await self._consumer(gid)
                await asyncio.wait_for(consumer.gateway.ready.remote(), PROBE_TIMEOUT_S)
                old = sub.id
                try:
                    await asyncio.wait_for(self._attach(consumer, sub, moved=True), MOVE_TIMEOUT_S)
                except BaseException:
                    sub.rebind(old)
                    raise
            except Exception as e:
                log.warning(
                    "tier %s: moving %s to gateway %s failed: %s: %s",
                    self.name, sub.id, gid, type(e).__name__, e,
                )  # fmt: skip
                continue
            if sub.closed:  # closed while moving: end it there too
                await self._router.unsubscribe(sub.id)
            self.moves["moved"] += 1
            log.info("tier %s: subscription %s moved to gateway %s", self.name, sub.id, gid)
            return True
        return False


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
