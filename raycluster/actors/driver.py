"""The driver's end of a tier's in-cluster gateways: its subscriptions and their failover.

`DriverSubscriptions` holds every subscription a `Tier` handle makes. The
subscriptions made through one gateway actor share one `GatewayStream` (one
streaming generator of object refs, whatever their number). When a stream is
lost (the gateway actor or its node died) its open subscriptions move to a
live gateway. `close(reason)` ends every subscription (iteration stops, and
`close_reason` says why) and every task; nothing touches Ray after it, nor
after `ray.shutdown()`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Callable
from typing import Any

import ray

from raycluster._tasks import Backoff, TaskSet, logged
from raycluster.client import Subscription
from raycluster.errors import ClosedError, UnavailableError
from raycluster.livequery import Cursor, LiveQuery

from .remote import call

__all__ = ("DriverSubscriptions", "GatewayStream")

log = logging.getLogger("raycluster.actors.tier")

PROBE_TIMEOUT_S = 5.0  # a gateway that does not answer `ready` this fast is tried later
MOVE_TIMEOUT_S = 30.0  # one resubscribe (registration + first window) at most
MOVE_DEADLINE_S = 300.0  # then the subscription is closed (every gateway stayed unreachable)
MOVE_BACKOFF_S = (0.1, 2.0)  # between rounds of attempts: first, at most
RAY_DOWN = "Ray was shut down in this process"
RAY_CHECK_S = 1.0  # how often an open handle checks that Ray still runs here

_OnLost = Callable[["GatewayStream", list[Subscription]], None]


class GatewayStream:
    """This driver's stream from one gateway actor: the frames of all its subscriptions.

    Frames are routed to each `Subscription` here. When the stream ends
    other than by cancellation (the gateway actor or its node died), the open
    subscriptions are handed to `on_lost`, which moves them to a live
    gateway; on cancellation they are left to whoever cancelled it.
    """

    def __init__(self, gateway_id: str, gateway: Any, on_lost: _OnLost, tasks: TaskSet) -> None:
        self.gateway_id = gateway_id
        self.gateway = gateway
        self.id = f"drv-{uuid.uuid4().hex[:12]}"
        self.subs: dict[str, Subscription] = {}
        # sub id -> what to add to its seqs (subscriptions moved here continue their
        # numbering); None until its first frame here sets it.
        self.renumber: dict[str, int | None] = {}
        self.task: asyncio.Task[None] | None = None
        self._on_lost = on_lost
        self._tasks = tasks

    def usable(self) -> bool:
        """False once its stream ended, or if it belongs to another (finished) event loop."""
        t = self.task
        return t is None or (not t.done() and t.get_loop() is asyncio.get_running_loop())

    def attach(self, sub: Subscription, *, moved: bool = False) -> None:
        """Route `sub`'s frames here (before subscribing: the first window may come at once).

        With `moved`, its frames are numbered on from the last `seq` it applied.
        """
        self.subs[sub.id] = sub
        if moved:
            self.renumber[sub.id] = None
        if self.task is None or self.task.done():
            self.task = self._tasks.spawn(self._pump(), f"gateway-stream-{self.id}")

    def detach(self, sub_id: str) -> None:
        """Stop routing `sub_id`'s frames here."""
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
            log.warning("stream %s: gateway %s ended its stream", self.id, self.gateway_id)
        except asyncio.CancelledError:
            lost = False
            raise
        except Exception as e:
            log.warning(
                "stream %s: the stream from gateway %s failed: %s: %s",
                self.id, self.gateway_id, type(e).__name__, e,
            )  # fmt: skip
        finally:
            subs = [s for s in self.subs.values() if not s.closed]
            self.subs.clear()
            self.renumber.clear()
            if lost and subs:
                self._on_lost(self, subs)

    def _numbered(self, sub: Subscription, entries: list[Any]) -> list[Any]:
        if sub.id not in self.renumber:
            return entries
        offset = self.renumber[sub.id]
        if offset is None:  # the first frame here (a reset) follows the last one applied
            offset = self.renumber[sub.id] = sub.seq + 1 - entries[0][1]
        return [[e[0], e[1] + offset, *e[2:]] for e in entries]

    async def release(self) -> None:
        """Ask the gateway to end this stream (its subscriptions go with it)."""
        await self.gateway.release.remote(self.id)


class DriverSubscriptions:
    """Every subscription one `Tier` handle made, the streams they arrive on, their moves.

    It is the `SubscriptionControl` of those subscriptions: it acts through
    whichever stream holds a subscription now, so a subscription keeps
    working after it moved to another gateway. `moves` counts subscriptions
    moved off a lost gateway and those closed after every attempt failed.
    """

    def __init__(
        self, tier: str, gateway_ids: list[str], lookup: Callable[[str], Any], buffer: int
    ) -> None:
        self.tier = tier
        self.gateway_ids = gateway_ids
        self.moves: dict[str, int] = {"moved": 0, "failed": 0}
        self.close_reason: str | None = None  # set once closed
        self._lookup = lookup  # gateway id -> its actor handle (a blocking GCS lookup)
        self._buffer = buffer
        self._rr = itertools.count()
        self._streams: dict[str, GatewayStream] = {}  # gateway id -> this driver's stream
        self._where: dict[str, GatewayStream] = {}  # sub id -> the stream holding it
        self._subs: set[Subscription] = set()  # every subscription not closed yet
        self._tasks = TaskSet(f"tier {tier}")  # the streams' pumps, the moves, the Ray watch
        self._watching = False

    # -- subscribing ---------------------------------------------------------------

    def pick(self, gateway_id: str | None) -> str:
        """`gateway_id`, else the next gateway round-robin."""
        if not self.gateway_ids:
            raise UnavailableError(f"tier {self.tier!r} runs no in-cluster gateway")
        return gateway_id or self.gateway_ids[next(self._rr) % len(self.gateway_ids)]

    async def subscribe(
        self, tenant: str, query: LiveQuery, gateway_id: str | None
    ) -> Subscription:
        """Subscribe through a gateway (`Tier.subscribe`); returns once the first window is here."""
        self._check_open()
        if not self._watching:
            # A stream from a Ray that was shut down never ends on its own: look.
            self._watching = True
            self._tasks.every(RAY_CHECK_S, self._watch_ray, "ray-watch", delay_s=RAY_CHECK_S)
        stream = await self._stream(self.pick(gateway_id))
        sub = Subscription("", tenant, query, self, buffer=self._buffer)
        await self._attach(stream, sub, moved=False)
        self._subs.add(sub)
        return sub

    def gateway_of(self, sub: Subscription) -> str | None:
        """The id of the gateway holding `sub` now (None while it moves, or once closed)."""
        s = self._where.get(sub.id)
        return s.gateway_id if s is not None else None

    def _check_open(self) -> None:
        if self.close_reason is not None:
            raise ClosedError(f"tier {self.tier!r}: {self.close_reason}")
        if not ray.is_initialized():
            raise ClosedError(f"tier {self.tier!r}: {RAY_DOWN}")

    async def _stream(self, gid: str) -> GatewayStream:
        """This driver's stream from gateway `gid` (a new one if the last ended)."""
        stream = self._streams.get(gid)
        if stream is None or not stream.usable():
            handle = await asyncio.to_thread(self._lookup, gid)  # a GCS lookup: off the loop
            self._check_open()  # closed (or Ray shut down) while looking it up
            stream = self._streams[gid] = GatewayStream(gid, handle, self._lost, self._tasks)
        return stream

    async def _attach(self, stream: GatewayStream, sub: Subscription, *, moved: bool) -> None:
        """Subscribe `sub` (its query, under an id the gateway mints) through `stream`."""
        # The id first: frames are routed by it, and the first window may come at once.
        sub.rebind(await call(stream.gateway.new_sub_id.remote(sub.tenant, stream.id)))
        first = sub.next_reset()
        stream.attach(sub, moved=moved)
        self._where[sub.id] = stream
        try:
            await call(
                stream.gateway.subscribe.remote(
                    sub.tenant, sub.query.model_dump_json(), sub.id, stream.id
                )
            )
            await first
        except BaseException:
            stream.detach(sub.id)
            self._where.pop(sub.id, None)
            first.cancel()
            # The gateway may hold it already (only the window was late): end it
            # there (fire and forget: the call is submitted, not awaited).
            if self.close_reason is None and ray.is_initialized():
                with logged(f"tier {self.tier}: ending {sub.id} on gateway {stream.gateway_id}"):
                    stream.gateway.unsubscribe.remote(sub.id, sub.tenant)
            if not moved:  # the caller never gets it: a lost stream must not move it
                sub.mark_closed("its subscribe failed")
            raise

    # -- SubscriptionControl -------------------------------------------------------

    def _holder(self, sub_id: str) -> tuple[GatewayStream, str]:
        """The stream holding `sub_id` now, and the subscription's tenant."""
        self._check_open()
        s = self._where.get(sub_id)
        sub = s.subs.get(sub_id) if s is not None else None
        if s is None or sub is None or not s.usable():
            raise UnavailableError(f"subscription {sub_id} is moving to another gateway")
        return s, sub.tenant

    async def reanchor(self, sub_id: str, cursor: Cursor | None, limit: int) -> None:
        """Move a subscription's window (through the gateway holding it now)."""
        cursor_json = cursor.model_dump_json() if cursor is not None else None
        s, tenant = self._holder(sub_id)
        await call(s.gateway.reanchor.remote(sub_id, tenant, cursor_json, limit))

    async def unsubscribe(self, sub_id: str) -> None:
        """End a subscription on its gateway (a gone gateway took it with it)."""
        s = self._where.pop(sub_id, None)
        if s is None:
            return
        sub = s.subs.get(sub_id)
        s.detach(sub_id)
        if sub is None:
            return
        self._subs.discard(sub)
        if self.close_reason is not None or not ray.is_initialized():
            return
        try:
            await s.gateway.unsubscribe.remote(sub_id, sub.tenant)
        except Exception as e:  # the gateway is gone: so is the subscription
            log.info("unsubscribe %s: %s: %s", sub_id, type(e).__name__, e)

    async def resync(self, sub_id: str) -> None:
        """Ask for a fresh window of a subscription."""
        s, tenant = self._holder(sub_id)
        await call(s.gateway.resync.remote(sub_id, tenant))

    # -- a lost gateway ------------------------------------------------------------

    def _lost(self, dead: GatewayStream, subs: list[Subscription]) -> None:
        """`dead`'s stream ended: move its open subscriptions (in a task of ours)."""
        for sub in subs:
            self._where.pop(sub.id, None)
        if self._streams.get(dead.gateway_id) is dead:
            del self._streams[dead.gateway_id]
        if self.close_reason is not None:
            return
        if not ray.is_initialized():  # no move: it would start Ray again (auto-init)
            self._end(subs, RAY_DOWN)
            return
        self._tasks.spawn(self._move_all(dead, subs), f"move-{dead.id}")

    async def _move_all(self, dead: GatewayStream, subs: list[Subscription]) -> None:
        # If the gateway lives on (only the stream broke), it drops what `dead` held.
        release = self._tasks.spawn(self._release(dead), f"release-{dead.id}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MOVE_DEADLINE_S
        backoff = Backoff(*MOVE_BACKOFF_S)
        try:
            while subs:
                if not ray.is_initialized():
                    self._end(subs, RAY_DOWN)
                    return
                order = self._failover_order(dead.gateway_id)
                moved = await asyncio.gather(*(self._move(sub, order) for sub in subs))
                subs = [s for s, ok in zip(subs, moved, strict=True) if not ok and not s.closed]
                delay_s = backoff.next_delay_s()
                if subs and loop.time() + delay_s > deadline:
                    self.moves["failed"] += len(subs)
                    log.error(
                        "tier %s: %d subscription(s) found no live gateway within %ss; closed",
                        self.tier, len(subs), MOVE_DEADLINE_S,
                    )  # fmt: skip
                    self._end(subs, f"no live gateway within {MOVE_DEADLINE_S:g} s")
                    return
                if subs:
                    await asyncio.sleep(delay_s)
        finally:
            release.cancel()

    async def _release(self, dead: GatewayStream) -> None:
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
            if sub.closed or self.close_reason is not None:
                return True
            try:
                stream = await self._stream(gid)
                await asyncio.wait_for(stream.gateway.ready.remote(), PROBE_TIMEOUT_S)
                old = sub.id
                try:
                    await asyncio.wait_for(self._attach(stream, sub, moved=True), MOVE_TIMEOUT_S)
                except BaseException:
                    sub.rebind(old)
                    raise
            except ClosedError:
                return True  # closed meanwhile: the subscription ended with it
            except Exception as e:
                log.warning(
                    "tier %s: moving %s to gateway %s failed: %s: %s",
                    self.tier, sub.id, gid, type(e).__name__, e,
                )  # fmt: skip
                continue
            if sub.closed:  # closed while moving: end it there too
                await self.unsubscribe(sub.id)
            self.moves["moved"] += 1
            log.info("tier %s: subscription %s moved to gateway %s", self.tier, sub.id, gid)
            return True
        return False

    # -- closing -------------------------------------------------------------------

    async def _watch_ray(self) -> None:
        if not ray.is_initialized():
            self.close(RAY_DOWN)

    def _end(self, subs: list[Subscription], reason: str) -> None:
        for sub in subs:
            self._subs.discard(sub)
            sub.mark_closed(reason)

    def close(self, reason: str) -> None:
        """End every subscription (their iteration stops; `close_reason` says why) and
        cancel every task now. Idempotent; nothing touches Ray afterwards."""
        if self.close_reason is None:
            self.close_reason = reason
        self._tasks.cancel()
        self._end([*self._subs, *(s for st in self._streams.values() for s in st.subs.values())],
                  self.close_reason)  # fmt: skip
        self._streams.clear()
        self._where.clear()

    async def aclose(self, reason: str) -> None:
        """`close(reason)`, then wait (bounded) until every task has ended."""
        self.close(reason)
        await self._tasks.aclose()
