"""The controller: owns the desired shard count, starts, re-adopts, scales and stops actors.

It is a detached named actor and keeps no state of its own: the desired
shard count (`Keys.tier_shard_count`) and every shard id the tier may run
(`Keys.tier_shard_ids`, added before the shard is created) live in Redis.
A restarted controller reads both before its first reconcile, re-adopts the
named actors (`get_if_exists`) and stops shards above the count; `stop()`
stops every recorded shard, whether or not this incarnation created it.

Blocking Ray calls (`ray.get_actor`, actor creation by name, `ray.kill`)
run in threads, never on the actor's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, TypedDict

import ray

from raycluster._tasks import TaskSet, every, logged
from raycluster.config import MAX_SHARDS, TierSettings, check_shard_count
from raycluster.postgres import IngesterStatus, PostgresSourceError
from raycluster.redis import RedisMembership, SourceStatus, make_client

from .gateway import GatewayActor
from .ingester import IngesterActor
from .names import gateway_name, ingester_name, shard_name
from .shard import ShardActor, ShardActorStatus, ShardUnreachable

__all__ = ("Controller", "TierStatus")

log = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 5.0  # a shard that does not answer status in time is reported as such
ENSURE_INTERVAL_S = 5.0  # how often missing actors are re-created
GATEWAY_MAX_CONCURRENCY = 100_000
RETIRE_TIMEOUT_S = 15.0  # a graceful stop of one actor; then it is killed
INGESTER = "ingester"  # the Postgres ingester's id among the tier's actors


def shard_ids(n: int) -> list[str]:
    """The ids of the first `n` shards (stable, so scaling down removes the last ones)."""
    return [f"shard-{i}" for i in range(n)]


def gateway_ids(n: int) -> list[str]:
    """The ids of the in-cluster gateways."""
    return [f"ray-gw-{i}" for i in range(n)]


class TierStatus(TypedDict):
    """`Controller.status()` / `Tier.status()`: the tier at a glance, and each shard's status."""

    name: str
    desired_shards: int
    live_shards: list[str]  # shards with an unexpired heartbeat, sorted
    shards: dict[str, ShardActorStatus | ShardUnreachable]
    subscriptions: int
    partitions_owned: int
    frames_per_s: float  # since the previous status() call
    changes_per_s: float
    lag_ms: int  # the largest shard lag
    gateways: list[str]
    controller_node: str
    postgres_slot: str | None  # the slot of the tier's Postgres source (None: no source)
    # The status the slot's streaming ingester published (this tier's actor, or a
    # `raycluster ingest`), else this tier's actor's own; None: none reports.
    ingester: IngesterStatus | None


@ray.remote
class Controller:
    """Starts/scales/stops the tier's actors and reports `status()`."""

    def __init__(self, settings_json: str, redis_url: str, postgres_dsn: str | None = None) -> None:
        self.settings_json = settings_json  # (the Postgres DSN in it is masked)
        self.settings = TierSettings.model_validate_json(settings_json)
        self.url = redis_url
        self._dsn = postgres_dsn
        self.desired = self.settings.shards
        self.shards: dict[str, Any] = {}
        self.gateways: dict[str, Any] = {}
        self.ingesters: dict[str, Any] = {}  # INGESTER -> its handle (with a postgres section)
        # One client (with the configured timeouts and retries) for the live set
        # and the tier's state.
        self._redis = make_client(redis_url, self.settings.redis, name="raycluster-controller")
        self._members = RedisMembership(self._redis, settings=self.settings.redis)
        self._sources = SourceStatus(self._redis, settings=self.settings.redis)
        keys = self.settings.redis.keys
        self._desired_key = keys.tier_shard_count(self.settings.name)
        self._ids_key = keys.tier_shard_ids(self.settings.name)
        self._last: tuple[float, int, int] | None = None
        self._loaded = False  # the count stored in Redis was read (once, before acting)
        self._scale_calls = 0  # scale() calls so far (the newest one applies its count)
        self._incoming: int | None = None  # the count of a scale() waiting for the lock
        self._stopping = False  # stop() began: no actor is created any more
        self._lock = asyncio.Lock()
        self._started = asyncio.Event()
        self._ready: dict[str, asyncio.Task[Any]] = {}  # actor id -> its readiness call
        self._tasks = TaskSet("controller")  # the keep-alive loop, the readiness calls
        self._keeper = self._tasks.spawn(self._keep_alive(), "controller-keep-alive")

    async def _keep_alive(self) -> None:
        # A restarted controller (the count is in Redis) reconciles at once; a new
        # one waits for start(), which may bring its own count.
        while not self._started.is_set():
            try:
                if await self._redis.get(self._desired_key) is not None:
                    self._started.set()
                else:
                    await self._started.wait()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("controller: reading the desired shard count failed")
                await asyncio.sleep(ENSURE_INTERVAL_S)
        await every(ENSURE_INTERVAL_S, self._ensure, "controller: reconcile")

    async def _ensure(self) -> None:
        async with self._lock:
            await self._load()
            await self._forget_dead()
            await self._reconcile()

    async def _load(self) -> None:
        """Once, before this incarnation first acts: the count stored in Redis, if any.

        Afterwards the count in memory is the newest (`scale` and `start`
        persist it); reading Redis again could undo a `scale` under way.
        """
        if self._loaded:
            return
        stored = await self._redis.get(self._desired_key)
        self._loaded = True
        if stored is None:
            return
        try:
            self.desired = check_shard_count(int(stored))
        except ValueError:  # not an int, or out of range (InvalidArgument)
            log.error(
                "controller: ignoring the stored shard count %r (not a count from 0 to %d); "
                "keeping %d", stored, MAX_SHARDS, self.desired,
            )  # fmt: skip
            await self._redis.set(self._desired_key, self.desired)

    async def start(self, shards: int | None = None) -> dict[str, Any]:
        """Bring the tier to its desired size, re-adopting actors that exist; returns at once.

        The count is `shards` if given (persisted), else the one in Redis (a
        tier scaled and re-adopted keeps its scale), else the settings'. Poll
        `progress()` to see the actors become ready. A bad `shards` raises
        `InvalidArgument` before anything changes.
        """
        if shards is not None:
            check_shard_count(shards)
        async with self._lock:
            await self._load()
            if shards is not None:
                self.desired = shards
            await self._redis.set(self._desired_key, self.desired)
            await self._reconcile()
        self._started.set()
        return await self.info()

    def _demand(self, aid: str) -> dict[str, float]:
        """The resources one actor asks Ray for (what a pending one waits on)."""
        s = self.settings
        if aid in self.gateways:
            cpu = {"CPU": s.gateway_num_cpus} if s.gateway_num_cpus else {}
            return {**cpu, **s.gateway_resources}
        if aid == INGESTER:
            cpu = {"CPU": s.ingester_num_cpus} if s.ingester_num_cpus else {}
            return {**cpu, **self._ingester_resources()}
        cpu = {"CPU": s.shard_num_cpus} if s.shard_num_cpus else {}
        return {**cpu, **s.shard_resources}

    def _watch(self, aid: str, handle: Any) -> None:
        """Track `handle.ready()` (again, if the last call failed: the actor may have restarted)."""
        t = self._ready.get(aid)
        if self._tasks.closed or (t is not None and (not t.done() or _succeeded(t))):
            return

        async def ready() -> Any:
            return await handle.ready.remote()

        self._ready[aid] = self._tasks.spawn(ready(), f"ready-{aid}")

    async def progress(self, wait_s: float = 0.0) -> dict[str, Any]:
        """Which actors are ready (`live`), which not (`pending`: id -> resource demand),
        which failed their readiness call (`failed`: id -> error); `desired` shards;
        `fatal`: those of `failed` that cannot succeed without a person acting (the
        Postgres ingester stopped on its config, a schema change or a bad row).

        Waits up to `wait_s` for a pending actor to become ready first (a long
        poll: a driver calls it in a loop without sleeping).
        """
        waiting = [t for aid, t in self._ready.items() if not t.done()]
        if waiting and wait_s > 0:
            await asyncio.wait(waiting, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        live: list[str] = []
        pending: dict[str, dict[str, float]] = {}
        failed: dict[str, str] = {}
        fatal: dict[str, str] = {}
        for aid, handle in [*self.gateways.items(), *self.shards.items(), *self.ingesters.items()]:
            t = self._ready.get(aid)
            if t is None or not t.done():
                pending[aid] = self._demand(aid)
            elif not _succeeded(t):
                err = None if t.cancelled() else t.exception()
                failed[aid] = _describe(err) if err is not None else "its runtime stopped"
                if isinstance(_cause(err), PostgresSourceError):
                    fatal[aid] = failed[aid]
                self._watch(aid, handle)
            else:
                live.append(aid)
        return {
            "desired": self.desired, "live": live, "pending": pending, "failed": failed,
            "fatal": fatal,
        }  # fmt: skip

    async def pid(self) -> int:
        """The controller's process id (which incarnation answers; operators signal it)."""
        return os.getpid()

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
        strategy = "SPREAD" if s.spread_shards else "DEFAULT"
        return self._actor(ShardActor, shard_name(s.name, sid), sid, s.shard_num_cpus,
                           s.shard_resources, scheduling_strategy=strategy)  # fmt: skip

    def _gateway(self, gid: str) -> Any:
        s = self.settings
        # SPREAD: one node's loss takes as few gateways as possible. Every open
        # stream() and pending subscribe() holds one slot of the actor's
        # concurrency (1,000 by default); past it, shards' deliver() calls would
        # queue behind them and no window would ever arrive.
        return self._actor(GatewayActor, gateway_name(s.name, gid), gid, s.gateway_num_cpus,
                           s.gateway_resources, scheduling_strategy="SPREAD",
                           max_concurrency=GATEWAY_MAX_CONCURRENCY)  # fmt: skip

    def _actor(
        self, cls: Any, name: str, aid: str, cpus: float, resources: dict[str, float], **kw: Any
    ) -> Any:
        """A detached, restartable actor of the tier (re-adopted if it runs already)."""
        return cls.options(
            name=name, namespace=self.settings.namespace, lifetime="detached",
            get_if_exists=True, max_restarts=-1, num_cpus=cpus, resources=dict(resources), **kw,
        ).remote(aid, self.settings_json, self.url)  # fmt: skip

    def _ingester_resources(self) -> dict[str, float]:
        s = self.settings
        placed = s.controller_resources if s.ingester_resources is None else s.ingester_resources
        return dict(placed)

    def _ingester(self) -> Any:
        """The tier's detached, restartable ingester actor (re-adopted if it runs already)."""
        s = self.settings
        assert s.postgres is not None
        return IngesterActor.options(  # type: ignore[attr-defined]
            name=ingester_name(s.name, s.postgres.slot), namespace=s.namespace,
            lifetime="detached", get_if_exists=True, max_restarts=-1,
            num_cpus=s.ingester_num_cpus, resources=self._ingester_resources(),
        ).remote(self.settings_json, self.url, self._dsn)  # fmt: skip

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

        for group in (self.shards, self.gateways, self.ingesters):
            # Not yet ready (pending placement): its readiness call is still queued.
            actors = [
                (a, h) for a, h in group.items() if a not in self._ready or self._ready[a].done()
            ]
            gone = await asyncio.gather(*(dead(aid, h) for aid, h in actors))
            for (aid, _), is_dead in zip(actors, gone, strict=True):
                if is_dead:
                    del group[aid]

    async def _reconcile(self) -> None:
        """Make the actors match `desired` (the caller holds the lock).

        A new shard id goes into the Redis set before its actor is created, so
        whoever reads the set later finds every shard that may run. Actors are
        created one at a time, and creation stops as soon as a `scale` to
        fewer shards arrives or `stop()` begins: neither waits for creations
        it made pointless.
        """
        want = shard_ids(self.desired)
        recorded = await self._recorded()
        new = [sid for sid in want if sid not in recorded]
        if new:
            await self._redis.sadd(self._ids_key, *new)
        for gid in gateway_ids(self.settings.gateways):
            if self._stopping:
                return
            if gid not in self.gateways:
                self.gateways[gid] = await asyncio.to_thread(self._gateway, gid)
            self._watch(gid, self.gateways[gid])
        for i, sid in enumerate(want):
            if self._stopping or (self._incoming is not None and i >= self._incoming):
                return  # stop(), or a scale() to fewer shards, takes over
            if sid not in self.shards:
                self.shards[sid] = await asyncio.to_thread(self._shard, sid)
            self._watch(sid, self.shards[sid])
        if self.settings.postgres is not None:
            if self._dsn is None:
                log.error("controller: a postgres section but no DSN was given: no ingester")
            else:
                if INGESTER not in self.ingesters:
                    self.ingesters[INGESTER] = await asyncio.to_thread(self._ingester)
                self._watch(INGESTER, self.ingesters[INGESTER])
        extra = sorted((recorded | set(self.shards)) - set(want))
        await asyncio.gather(*(self._retire_shard(sid) for sid in extra))

    async def _recorded(self) -> set[str]:
        raw = await self._redis.smembers(self._ids_key)
        return {m.decode() if isinstance(m, bytes) else m for m in raw}

    async def scale(self, n: int) -> dict[str, Any]:
        """Run exactly `n` shards: persist `n`, start new ones, stop the highest-numbered
        extra ones; returns `progress()` at once (new shards may still be starting).

        A bad `n` raises `InvalidArgument` before anything changes. The newest
        call wins: a reconcile under way stops creating shards at once, and
        calls that queued behind it apply only the newest count.
        """
        check_shard_count(n)
        self._scale_calls += 1
        mine = self._scale_calls
        self._incoming = n
        async with self._lock:
            if mine == self._scale_calls:  # else a newer call applies its own count
                self._incoming = None
                self._loaded = True  # an explicit count: the stored one no longer matters
                self.desired = n
                await self._redis.set(self._desired_key, n)
                await self._reconcile()
        self._started.set()
        return await self.progress()

    async def _lookup(self, name: str) -> Any:
        try:
            return await asyncio.to_thread(ray.get_actor, name, namespace=self.settings.namespace)
        except ValueError:  # no such actor
            return None

    async def _retire_shard(self, sid: str) -> None:
        await self._retire_actor(self.shards, sid, shard_name(self.settings.name, sid))
        # Killed without a graceful stop, it would look live until its TTL ran out.
        await self._members.leave(sid)
        await self._redis.srem(self._ids_key, sid)

    async def _retire_ingester(self) -> None:
        pg = self.settings.postgres
        name = ingester_name(self.settings.name, pg.slot) if pg is not None else None
        await self._retire_actor(self.ingesters, INGESTER, name)

    async def _retire_gateway(self, gid: str) -> None:
        await self._retire_actor(self.gateways, gid, gateway_name(self.settings.name, gid))
        await self._members.leave_gateway(gid)

    async def _retire_actor(self, table: dict[str, Any], aid: str, name: str | None) -> None:
        """Retire actor `aid` of `table` (or, not in it, the one named `name` in Ray)."""
        handle = table.pop(aid, None)
        if handle is None and name is not None:
            handle = await self._lookup(name)
        if handle is not None:
            await self._retire(handle, graceful=self._is_ready(aid))
        self._forget_ready(aid)

    def _is_ready(self, aid: str) -> bool:
        """False for an actor known not to run yet (pending placement): no stop() to wait for."""
        t = self._ready.get(aid)
        return t is None or t.done()

    def _forget_ready(self, aid: str) -> None:
        t = self._ready.pop(aid, None)
        if t is not None:
            t.cancel()

    async def _retire(self, handle: Any, *, graceful: bool = True) -> None:
        """Stop one actor gracefully (bounded; skipped when `graceful` is False), then kill it."""
        try:
            if graceful:
                await asyncio.wait_for(handle.stop.remote(), RETIRE_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # dead or stuck: the kill below ends it
            log.info("controller: graceful stop failed (%s); killing", _describe(e))
        try:
            await asyncio.to_thread(ray.kill, handle, no_restart=True)
        except ValueError:  # not an actor handle Ray knows (already gone)
            pass

    async def status(self) -> TierStatus:
        """Live shards, partitions each owns, subscriptions, frames/s, lag, and the Postgres
        ingester's status (with a `postgres:` section)."""
        live = await self._members.live_shards()

        async def one(sid: str, h: Any) -> tuple[str, ShardActorStatus | ShardUnreachable]:
            ready = self._ready.get(sid)
            if ready is None or not ready.done():
                err = f"not ready yet: being placed or starting (needs {self._demand(sid)})"
                return sid, {"shard": sid, "error": err}
            try:
                return sid, await asyncio.wait_for(h.status.remote(), STATUS_TIMEOUT_S)
            except TimeoutError:
                err = f"no status reply within {STATUS_TIMEOUT_S:g} s (busy or restarting)"
                return sid, {"shard": sid, "error": err}
            except Exception as e:
                return sid, {"shard": sid, "error": _describe(e)}

        per = dict(await asyncio.gather(*(one(sid, h) for sid, h in self.shards.items())))
        ok = [s for s in per.values() if "error" not in s]
        frames = sum(s["frames"] for s in ok)
        changes = sum(s["changes"] for s in ok)
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
            "subscriptions": sum(s["subscriptions"] for s in ok),
            "partitions_owned": sum(len(s["partitions"]) for s in ok),
            "frames_per_s": round(fps, 1),
            "changes_per_s": round(cps, 1),
            "lag_ms": max((s["lag_ms"] or 0 for s in ok), default=0),
            "gateways": sorted(self.gateways),
            "controller_node": ray.get_runtime_context().get_node_id(),
            "postgres_slot": self.settings.postgres.slot if self.settings.postgres else None,
            "ingester": await self._ingester_status(),
        }

    async def _ingester_status(self) -> IngesterStatus | None:
        """The status the slot's ingester published, else this tier's actor's own (a
        failed one stops publishing; its error stays readable here)."""
        pg = self.settings.postgres
        if pg is None:
            return None
        try:
            published = await asyncio.wait_for(self._sources.read(pg.slot), STATUS_TIMEOUT_S)
        except Exception as e:
            log.warning("controller: reading the ingester's status failed: %s", _describe(e))
            published = None
        if published is not None:
            return published  # type: ignore[return-value]
        handle = self.ingesters.get(INGESTER)
        ready = self._ready.get(INGESTER)
        if handle is None or ready is None or not ready.done():
            return None
        try:
            st: IngesterStatus = await asyncio.wait_for(handle.status.remote(), STATUS_TIMEOUT_S)
        except Exception as e:
            log.info("controller: the ingester's status: %s", _describe(e))
            return None
        return st

    async def stop(self) -> None:
        """Stop every gateway and every recorded shard (gracefully, then for good).

        Afterwards no actor of the tier runs or heartbeats, and its state in
        Redis is gone (a later `start` begins from the settings).
        """
        self._stopping = True
        await self._tasks.aclose()
        async with self._lock:
            await self._retire_ingester()  # first: it writes to what the others serve
            recorded = await self._recorded()
            gids = set(self.gateways) | set(gateway_ids(self.settings.gateways))
            await asyncio.gather(*(self._retire_gateway(gid) for gid in sorted(gids)))
            sids = recorded | set(self.shards)
            await asyncio.gather(*(self._retire_shard(sid) for sid in sorted(sids)))
            await self._redis.delete(self._desired_key, self._ids_key)
        with logged("controller: closing its Redis client"):
            await self._redis.aclose()


def _cause(e: BaseException | None) -> BaseException | None:
    """The exception an actor raised, out of the Ray error that carries it."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


def _describe(e: BaseException) -> str:
    """`Type: first line of the message` (just the type when the message is empty); for
    an error an actor raised, the actor's own error."""
    e = _cause(e) or e
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _succeeded(t: asyncio.Task[Any]) -> bool:
    """A finished readiness call that said ready (a shard says False once its runtime stopped)."""
    return not t.cancelled() and t.exception() is None and t.result() is not False
