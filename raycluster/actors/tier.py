"""`Tier`: the driver's handle on a running tier: start, connect, status, scale, stop, subscribe."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import ray

from raycluster._resources import on_lasting_thread
from raycluster._tasks import logged
from raycluster.client import Subscription
from raycluster.config import TierSettings, check_shard_count
from raycluster.errors import RayclusterError
from raycluster.livequery import LiveQuery
from raycluster.redis import Writer, local_redis_for_process

from .controller import Controller, TierStatus
from .driver import DriverSubscriptions
from .names import controller_name, gateway_name
from .own_gateway import OwnGateway
from .progress import LogProgress, StartProgress, cluster_resources
from .remote import get

__all__ = ("StartProgress", "Tier")

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 90.0  # the controller stops every actor (15 s each at most, concurrently)
CALL_TIMEOUT_S = 60.0  # any other call to the controller
RETRY_S = 0.2  # between calls to a restarting controller


class Tier:
    """A handle on a tier running on Ray. Create with `start` or `connect`."""

    def __init__(self, controller: Any, info: dict[str, Any]) -> None:
        self.controller = controller
        self.name: str = info["name"]
        self.namespace: str = info["namespace"]
        self.redis_url: str = info["redis_url"]
        self.gateway_ids: list[str] = info["gateways"]
        self.settings = TierSettings.model_validate_json(info["settings"])
        # Subscriptions served by this handle's own gateway (the default), and those
        # made through a named gateway actor.
        self._own = OwnGateway(self.name, self.redis_url, self.settings)
        self._subs = DriverSubscriptions(
            self.name, self.gateway_ids, self._lookup_gateway, self.settings.gateway.buffer
        )

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
        A bad `shards` raises `InvalidArgument` before anything is started.
        While actors are pending, `on_progress` gets a `StartProgress` about
        twice a second (default: logged).

        After `start_timeout_s` (of `config`) without every actor ready, or on
        Ctrl-C / any error meanwhile, what the call started is stopped and the
        error raised (`NotReadyError` names the missing resources): a tier
        that was not running is stopped entirely, controller included; a
        running tier it re-adopted goes back to its previous shard count and
        keeps serving.

        With no Redis URL configured, a private `redis-server` is started that
        lives as long as this driver process (fine on one machine; on a
        multi-node cluster configure `redis.redis_url`).
        """
        if isinstance(config, TierSettings):
            settings = config
        else:
            settings = TierSettings.load(config)
        if shards is not None:
            check_shard_count(shards)
        if redis_url is not None:
            redis = settings.redis.model_copy(update={"redis_url": redis_url})
            settings = TierSettings.model_validate({**settings.model_dump(), "redis": redis})
        url = settings.redis.redis_url or local_redis_for_process(
            binary=settings.redis.redis_server
        )
        if not ray.is_initialized():  # (its processes must outlive a caller's worker thread)
            on_lasting_thread(lambda: ray.init(namespace=settings.namespace))
        timeout_s = settings.start_timeout_s
        deadline = time.monotonic() + timeout_s
        running = _running_controller(settings)
        controller = running or Controller.options(  # type: ignore[attr-defined]
            name=controller_name(settings.name),
            namespace=settings.namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            num_cpus=0,
            resources=dict(settings.controller_resources),
        ).remote(settings.model_dump_json(), url, _dsn(settings))
        report = on_progress or LogProgress()
        before: int | None = None  # the running tier's count, to go back to
        try:
            if running is not None:
                progress = get(running.progress.remote(), max(deadline - time.monotonic(), 1.0))
                before = int(progress["desired"])
            info = _started(controller.start.remote(shards), settings, deadline, report)
            tier = cls(controller, info)
            tier._wait_ready(deadline, timeout_s, report)
        except BaseException:
            if running is None:
                _teardown(controller)
            elif before is not None:
                _scale_back(controller, before, settings.name)
            raise
        return tier

    def _wait_ready(
        self, deadline: float, timeout_s: float, report: Callable[[StartProgress], None]
    ) -> None:
        """Poll the controller until every actor is ready; `NotReadyError` (saying
        `timeout_s`, the caller's bound) at `deadline`."""
        t0 = deadline - timeout_s
        while True:
            remaining = deadline - time.monotonic()
            wait_s = min(0.5, max(remaining, 0.0))
            p = self._call("progress", wait_s)
            if not p["pending"] and not p["failed"]:
                return
            names = {r for d in p["pending"].values() for r in d}
            free, total = cluster_resources(names)
            snap = StartProgress(
                time.monotonic() - t0, p["desired"], p["live"], p["pending"], p["failed"],
                free, total,
            )  # fmt: skip
            if p.get("fatal"):  # waiting cannot help (the ingester refused its config, …)
                raise snap.error(self.name, snap.elapsed_s)
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
            info = cast(dict[str, Any], get(controller.info.remote(), CALL_TIMEOUT_S))
        except ray.exceptions.GetTimeoutError as e:
            raise RayclusterError(
                f"the controller of tier {name!r} did not answer within {CALL_TIMEOUT_S:g} s"
            ) from e
        return cls(controller, info)

    def status(self) -> TierStatus:
        """Live shards, partitions each owns, subscriptions, frames/s, lag; with a
        `postgres:` section, the ingester's status (`ingester`: state, confirmed slot
        position, lag in bytes and seconds, rows/s)."""
        status: TierStatus = self._call("status")
        return status

    def scale(
        self, n: int, *, on_progress: Callable[[StartProgress], None] | None = None
    ) -> TierStatus:
        """Run exactly `n` shards (persisted: a restarted controller keeps it); the status.

        `n` is an int from 0 to `MAX_SHARDS` (256); anything else raises
        `InvalidArgument` before anything changes. Waits for new shards as
        `start` does; after `start_timeout_s` (or on Ctrl-C, or any error) it
        scales back to the previous count and raises (`NotReadyError` names
        the missing resources), and the tier serves on at that count.
        """
        check_shard_count(n)
        timeout_s = self.settings.start_timeout_s
        deadline = time.monotonic() + timeout_s
        before = self._call("progress")["desired"]
        try:
            self._call("scale", n, timeout_s=max(deadline - time.monotonic(), 1.0))
            self._wait_ready(deadline, timeout_s, on_progress or LogProgress())
        except BaseException:
            _scale_back(self.controller, before, self.name)
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
                return get(ref, max(deadline - time.monotonic(), 0.0))
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
        """Stop every actor of the tier, the controller last; nothing runs or heartbeats after.

        The subscriptions this handle made end first: their iteration stops
        and `close_reason` says the tier was stopped; the handle's tasks are
        cancelled, and nothing of it touches Ray afterwards. From async code,
        prefer `await tier.aclose()`, which does the same off the event loop
        and waits for those tasks to end.
        """
        reason = f"the tier {self.name!r} was stopped"
        self._own.close(reason)
        self._subs.close(reason)
        self._stop_actors()

    async def aclose(self) -> None:
        """`stop()` from async code: the blocking calls run in a thread, and every task of
        this handle has ended when it returns."""
        reason = f"the tier {self.name!r} was stopped"
        await self._own.aclose(reason)
        await self._subs.aclose(reason)
        await asyncio.to_thread(self._stop_actors)

    def _stop_actors(self) -> None:
        try:
            self._call("stop", timeout_s=STOP_TIMEOUT_S)
        except ray.exceptions.ActorDiedError:
            # Stopped already (`raycluster stop`, another handle): stop is idempotent.
            log.info("tier %s: its controller is gone: stopped already", self.name)
            return
        finally:
            with logged(f"tier {self.name}: killing its controller"):
                ray.kill(self.controller)

    def writer(self) -> Writer:
        """A `Writer` for this tier's Redis (close it with `await writer.aclose()`)."""
        return Writer.from_url(
            self.redis_url, entities=self.settings.entities, settings=self.settings.redis
        )

    @property
    def moves(self) -> dict[str, int]:
        """Subscriptions made through a gateway actor (`subscribe(..., gateway_id=...)`)
        that moved off a lost gateway (`moved`), and those closed after every attempt failed
        (`failed`)."""
        return self._subs.moves

    def gateway(self, gateway_id: str | None = None) -> Any:
        """The handle of one in-cluster gateway (round-robin when not named)."""
        return self._lookup_gateway(self._subs.pick(gateway_id))

    def _lookup_gateway(self, gid: str) -> Any:
        return ray.get_actor(gateway_name(self.name, gid), namespace=self.namespace)

    @property
    def own_gateway_id(self) -> str | None:
        """The id of this handle's own gateway, which serves `subscribe` without a
        `gateway_id` (None until its first such subscribe)."""
        own = self._own.gateway
        return own.id if own is not None else None

    def own_gateway_status(self) -> dict[str, Any]:
        """The status of this handle's own gateway: subscriptions, frame counters, and
        the batches it read from its delta stream ({} before its first subscribe)."""
        return self._own.status()

    def gateway_of(self, sub: Subscription) -> str | None:
        """The id of the gateway holding `sub` now: this handle's own, or a gateway actor's
        (None while it moves, or once closed)."""
        own = self._own.gateway
        if own is not None and self._own.holds(sub):
            return own.id
        return self._subs.gateway_of(sub)

    async def subscribe(
        self, tenant: str, query: LiveQuery, *, gateway_id: str | None = None
    ) -> Subscription:
        """Subscribe; returns once the first window is here.

        By default the subscription is served by this handle's own gateway,
        in this process (started on the first subscribe): the shards send its
        frames to the gateway's own delta stream in Redis, which it reads with
        one blocking read, so a change travels shard → Redis → here, with no
        gateway actor in between (see `actors/own_gateway.py` for why). A
        subscription survives the loss of any shard (a `reset` with a newer
        epoch and the window follow), and ends with this process.

        With `gateway_id`, it goes through that in-cluster gateway actor
        instead, for frames as object refs: all subscriptions this handle
        makes through one gateway share one stream of object refs. If that
        gateway's actor or node is lost, the subscription moves to a live
        gateway on its own: it gets a new id (`sub.id`), then a `reset` and
        the current window, numbered on from the last `seq` it applied, then
        live frames.

        Once the tier is stopped (or Ray shut down in this process) the
        iteration of either kind ends and `close_reason` says why.
        """
        if gateway_id is None:
            return await self._own.subscribe(tenant, query)
        return await self._subs.subscribe(tenant, query, gateway_id)


def _started(
    ref: Any, settings: TierSettings, deadline: float, report: Callable[[StartProgress], None]
) -> dict[str, Any]:
    """The controller's `start()` reply (its process may take a while to come up)."""
    t0 = deadline - settings.start_timeout_s
    while True:
        remaining = deadline - time.monotonic()
        done, _ = ray.wait([ref], timeout=min(0.5, max(remaining, 0.0)))
        if done:
            return cast(dict[str, Any], get(ref))
        free, total = cluster_resources(set())
        snap = StartProgress(time.monotonic() - t0, 0, [], {"controller": {}}, {}, free, total)
        if remaining <= 0:
            raise snap.error(settings.name, settings.start_timeout_s)
        report(snap)


def _dsn(settings: TierSettings) -> str | None:
    """The Postgres source's DSN: the controller's own argument (the settings JSON
    carries it masked)."""
    return settings.postgres.dsn.get_secret_value() if settings.postgres is not None else None


def _running_controller(settings: TierSettings) -> Any:
    """The controller of the tier `settings` names if it runs already (None if not)."""
    try:
        return ray.get_actor(controller_name(settings.name), namespace=settings.namespace)
    except ValueError:
        return None


def _scale_back(controller: Any, n: int, tier: str) -> None:
    """After a failed start or scale of a running tier: back to its `n` shards (bounded)."""
    with logged(f"tier {tier}: scaling back to {n} shards"):
        get(controller.scale.remote(n), STOP_TIMEOUT_S)


def _teardown(controller: Any) -> None:
    """Stop what a failed start left (bounded), then the controller itself."""
    try:
        ray.get(controller.stop.remote(), timeout=STOP_TIMEOUT_S)
    except Exception as e:
        log.warning("stopping the tier after a failed start: %s", e)
    with logged("killing the controller after a failed start"):
        ray.kill(controller)
