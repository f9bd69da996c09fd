"""The gateway runtime: where client subscriptions enter the tier (no Ray, no Redis).

`subscribe` records the `Registration` durably *before* asking the owning
shard to serve it, so an ownership change can never lose it; a request no
shard answers in time is re-routed to the owner recomputed from the live set.
Incoming frames are demultiplexed per subscription and fenced: a frame whose
epoch is older than the newest `reset` seen is dropped, and a gap in `seq`
asks the owner for a resync, so a client never applies a wrong stream.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from raycluster._resources import Service
from raycluster._tasks import TaskSet, logged
from raycluster.client.fence import Fence
from raycluster.client.subscription import Subscription
from raycluster.errors import ClosedError, InvalidQuery, RegistrationConflict, UnavailableError
from raycluster.livequery import Cursor, EntitySpec, LiveQuery, QueryLimits, check_cost
from raycluster.livequery.models import check_against

from .keys import check_key_name
from .options import GatewayOptions
from .ports import ControlBus, DeltaBus, Membership, SubscriptionRegistry
from .protocol import (
    OP_REANCHOR,
    OP_RESYNC,
    OP_SUBSCRIBE,
    OP_UNSUBSCRIBE,
    Control,
    Registration,
    Transport,
    WireFrame,
)
from .routing import owner

__all__ = ("Gateway", "GatewayCounters", "GatewayDeps", "GatewayOptions", "GatewayStatus")

log = logging.getLogger(__name__)


class GatewayCounters(TypedDict):
    """A gateway's event counters (since it started)."""

    frames: int  # frames received
    stale: int  # dropped: an older epoch or seq
    gaps: int  # a seq gap seen (a resync asked)
    reroutes: int  # a request resent to a new owner
    restored: int  # subscriptions the audit registered again
    taken_over: int  # subscriptions another gateway took over (a resume there)
    forgotten: int  # registrations of an earlier incarnation removed at start
    task_errors: int  # background tasks that failed (logged)


class GatewayStatus(GatewayCounters):
    """What `Gateway.status()` reports."""

    gateway: str
    subscriptions: int


@dataclass
class GatewayDeps:
    """What a gateway runs against. `delta` is None when frames are pushed to `receive`."""

    registry: SubscriptionRegistry
    members: Membership
    control: ControlBus
    delta: DeltaBus | None
    transport: Transport
    entities: Iterable[EntitySpec] = ()
    limits: QueryLimits = field(default_factory=QueryLimits)


class _State:
    __slots__ = ("fence", "reg", "rev", "sub")

    def __init__(self, reg: Registration, sub: Subscription) -> None:
        self.reg = reg
        self.sub = sub
        self.rev = -1  # query revision of the last window received
        self.fence = Fence()


class Gateway(Service):
    """Terminates client subscriptions and demultiplexes their frames."""

    def __init__(
        self, gateway_id: str | None, deps: GatewayDeps, options: GatewayOptions | None = None
    ) -> None:
        self.id = gateway_id or f"gw-{uuid.uuid4().hex[:12]}"
        self.deps = deps
        self.opts = options or GatewayOptions()
        self.specs = {e.name: e for e in deps.entities}
        self._subs: dict[str, _State] = {}
        self._tasks = TaskSet(f"gateway {self.id}", on_failure=self._task_failed)
        self._closed = False
        self.forward: Callable[[str, list[WireFrame]], None] | None = None
        self.queue_frames = True  # False when `forward` takes the frames (no per-sub queue)
        self.counters: GatewayCounters = {
            "frames": 0,
            "stale": 0,
            "gaps": 0,
            "reroutes": 0,
            "restored": 0,
            "taken_over": 0,  # subscriptions another gateway took over (a resume there)
            "forgotten": 0,  # registrations of an earlier incarnation removed at start
            "task_errors": 0,  # background tasks that failed (logged)
        }

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Forget what an earlier incarnation left, announce the gateway, read its channel."""
        await self._forget_earlier()
        await self.deps.members.heartbeat_gateway(self.id)
        # Apart: a slow audit (thousands of subscriptions to restore after a sweep)
        # must not delay the heartbeat, or the gateway looks dead again, is swept
        # again, and never recovers.
        self._tasks.every(self.opts.heartbeat_interval_s, self._heartbeat, "gateway-heartbeat")
        self._tasks.every(
            self.opts.audit_interval_s,
            lambda: self.audit(),  # looked up each turn (tests replace it)
            "gateway-audit",
            delay_s=self.opts.audit_interval_s,
        )
        if self.deps.delta is not None:
            self._tasks.spawn(self._pump(self.deps.delta), "gateway-pump")

    async def aclose(self) -> None:
        """Unsubscribe everything, leave the live set, stop the tasks."""
        if self._closed:
            return
        self._closed = True
        for sid in list(self._subs):
            with logged(f"gateway {self.id}: unsubscribing {sid} on close"):
                await asyncio.wait_for(self.unsubscribe(sid), 5)
        with logged(f"gateway {self.id}: leaving the live set"):
            await asyncio.wait_for(self.deps.members.leave_gateway(self.id), 5)
        await self._tasks.aclose()
        if self.deps.delta is not None:  # nothing will read this gateway's channel again
            with logged(f"gateway {self.id}: dropping its delta channel"):
                await asyncio.wait_for(self.deps.delta.drop(self.id), 5)

    def cancel(self) -> None:
        """Stop now, without waiting (teardown that cannot await): its tasks are cancelled
        and nothing more is served. Registrations stay until the shards sweep them (the
        heartbeat has stopped); prefer `aclose`."""
        self._closed = True
        self._tasks.cancel()

    async def _forget_earlier(self) -> int:
        """Remove the registrations an earlier gateway of this id left; how many.

        A gateway that starts holds no subscription, so any registration under
        its id belongs to an earlier incarnation (an actor Ray restarted after
        a crash or the loss of its node). Shards would serve those for ever:
        the id heartbeats again, so no sweep ever removes them. Each leaves the
        registry, then its owner is told to stop serving it.
        """
        regs = await self.deps.registry.by_gateway(self.id)
        if not regs:
            return 0
        live = await self.deps.members.live_shards()
        for reg in regs:
            await self.deps.registry.delete(reg.sub_id, self.id)
            target = owner(reg.partition, live)
            if target:
                await self.deps.control.send_control(target, self._control(reg, OP_UNSUBSCRIBE))
        self.counters["forgotten"] += len(regs)
        log.warning("gateway %s: removed %d subscription(s) of its last run", self.id, len(regs))
        return len(regs)

    def _task_failed(self, error: BaseException) -> None:
        self.counters["task_errors"] += 1

    async def _heartbeat(self) -> None:
        await self.deps.members.heartbeat_gateway(self.id)

    async def audit(self) -> int:
        """Re-register (and re-subscribe) open subscriptions the registry lost.

        Shards remove the subscriptions of a gateway whose heartbeats stopped
        for a while; if this gateway was only slow, its clients would freeze.
        Returns how many subscriptions were restored.
        """
        if not self._subs:
            return 0
        have = await self.deps.registry.ids_by_gateway(self.id)
        restored = 0
        live: list[str] | None = None  # read once, only if something is missing
        for sid, st in list(self._subs.items()):
            if sid in have or self._subs.get(sid) is not st:
                continue
            try:
                await self.deps.registry.put(st.reg)
            except RegistrationConflict:
                self._taken_over(sid)  # resumed through another gateway
                continue
            if live is None:
                live = await self.deps.members.live_shards()
            target = owner(st.reg.partition, live)
            if target:
                await self.deps.control.send_control(target, self._control(st.reg, OP_SUBSCRIBE))
            restored += 1
        self.counters["restored"] += restored
        return restored

    async def _pump(self, bus: DeltaBus) -> None:
        async for batch in bus.deltas(self.id):
            self.receive(batch)

    # -- client API --------------------------------------------------------------

    def check_query(self, query: LiveQuery) -> None:
        """Raise `InvalidQuery` if `query` is not a `LiveQuery`, is over the limits or does
        not fit its entity."""
        if not isinstance(query, LiveQuery):
            raise InvalidQuery("query", query, "must be a LiveQuery")
        check_cost(query, self.deps.limits)
        check_against(self.specs, query)

    async def subscribe(
        self, tenant: str, query: LiveQuery, *, sub_id: str | None = None, resume: bool = False
    ) -> Subscription:
        """Register a live query; returns once its first window has arrived.

        Sub ids are minted on the server: here, or by the in-cluster gateway
        actor that passes its freshly minted `sub_id`. With `resume`, `sub_id`
        is the id of a resume whose possession the caller verified (the edge
        checks the resume token's MAC): the subscription moves here from
        whichever gateway held it. Either way it stays its tenant's: the
        registry refuses, with `RegistrationConflict`, a sub id registered by
        another tenant (or, without `resume`, by another gateway).

        Raises `InvalidQuery` (nothing registered) for bad input and
        `UnavailableError` (registration removed) if no shard answers in time.
        """
        if self._closed:
            raise ClosedError(f"gateway {self.id} is closed")
        check_key_name("tenant", tenant, InvalidQuery)
        if sub_id is not None:
            check_key_name("sub_id", sub_id, InvalidQuery)
        self.check_query(query)
        check_key_name("entity", query.entity, InvalidQuery)
        sid = sub_id or uuid.uuid4().hex
        if sid in self._subs:
            raise InvalidQuery("sub_id", sid, "already subscribed on this gateway")
        reg = Registration(
            sub_id=sid,
            tenant=tenant,
            query=query,
            gateway_id=self.id,
            transport=self.deps.transport,
        )
        sub = Subscription(
            sid, tenant, query, self, buffer=self.opts.buffer, queue_frames=self.queue_frames
        )
        self._subs[sid] = _State(reg, sub)
        try:
            await self.deps.registry.put(reg, takeover=resume)
        except BaseException:
            self._subs.pop(sid, None)
            raise
        try:
            await self._request(sid, OP_SUBSCRIBE, 0)
        except BaseException:
            self._subs.pop(sid, None)
            with logged(f"gateway {self.id}: removing the registration of {sid}"):
                await self.deps.registry.delete(sid, self.id)
            raise
        return sub

    async def reanchor(
        self, sub_id: str, cursor: Cursor | None, limit: int, *, tenant: str | None = None
    ) -> None:
        """Move a window; the new cursor is persisted first, so it survives failover.

        Raises `InvalidQuery` (nothing changed) for a bad cursor or limit, and
        `ClosedError` if the subscription is not open here (for `tenant`, when
        given) or was taken over by another gateway meanwhile.
        """
        st = self._state(sub_id, tenant)
        query = st.reg.query.moved(cursor, limit)
        self.check_query(query)
        rev = st.reg.rev + 1
        reg = st.reg.model_copy(update={"query": query, "rev": rev})
        try:
            await self.deps.registry.put(reg)
        except RegistrationConflict as e:
            self._taken_over(sub_id)
            raise ClosedError(f"subscription {sub_id} moved to another gateway") from e
        st.reg = reg
        st.sub.query = query
        await self._request(sub_id, OP_REANCHOR, rev, cursor=cursor, limit=limit)

    async def unsubscribe(self, sub_id: str, *, tenant: str | None = None) -> None:
        """End a subscription: registry first, then the owner stops serving it.

        Idempotent; a sub id not open here (for `tenant`, when given) is left alone.
        """
        st = self._held(sub_id, tenant)
        if st is None:
            return
        del self._subs[sub_id]
        st.sub.mark_closed("unsubscribed")
        await self.deps.registry.delete(sub_id, self.id)
        target = await self._owner(st.reg)
        if target:
            await self.deps.control.send_control(target, self._control(st.reg, OP_UNSUBSCRIBE))

    async def resync(self, sub_id: str, *, tenant: str | None = None) -> None:
        """Ask the owner for a reset and the current window (after a gap)."""
        st = self._held(sub_id, tenant)
        if st is None:
            return
        target = await self._owner(st.reg)
        if target:
            await self.deps.control.send_control(target, self._control(st.reg, OP_RESYNC))

    def holds(self, sub_id: str, tenant: str) -> bool:
        """Whether `sub_id` is open here for `tenant`."""
        return self._held(sub_id, tenant) is not None

    def subscriptions(self) -> list[Subscription]:
        """Every open subscription of this gateway."""
        return [st.sub for st in self._subs.values()]

    def status(self) -> GatewayStatus:
        """Subscriptions held and frame counters."""
        return {"gateway": self.id, "subscriptions": len(self._subs), **self.counters}

    # -- routing -----------------------------------------------------------------

    def _held(self, sub_id: str, tenant: str | None) -> _State | None:
        """`sub_id`'s state if it is open here (and `tenant`'s, when given)."""
        st = self._subs.get(sub_id)
        if st is None or (tenant is not None and st.reg.tenant != tenant):
            return None
        return st

    def _state(self, sub_id: str, tenant: str | None = None) -> _State:
        st = self._held(sub_id, tenant)
        if st is None:
            raise ClosedError(f"subscription {sub_id} is not open on gateway {self.id}")
        return st

    def _taken_over(self, sub_id: str) -> None:
        """Forget a subscription another gateway took over (a resume there); it ends here."""
        st = self._subs.pop(sub_id, None)
        if st is not None:
            self.counters["taken_over"] += 1
            st.sub.mark_closed("taken over by another gateway (resumed there)")

    async def _owner(self, reg: Registration) -> str:
        return owner(reg.partition, await self.deps.members.live_shards())

    def _control(self, reg: Registration, op: str, **kw: Any) -> Control:
        return Control.model_validate(
            {"op": op, "sub_id": reg.sub_id, "gateway_id": self.id, "tenant": reg.tenant,
             "partition": reg.partition, **kw}
        )  # fmt: skip

    async def _request(self, sub_id: str, op: str, rev: int, **kw: Any) -> None:
        """Send `op` to the owner; wait for a window of query revision `rev` or later.

        Only such a window completes the request: a reset of an older query
        (a resync, or a rebuild that read the registry before our write) does
        not. Controls are durable and a shard that gains the partition later
        rebuilds it from the registry, so a subscribe is resent only to a new
        owner; a reanchor is also resent to the same owner after a silent
        attempt (it may have landed on a shard that did not own the partition).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.opts.request_deadline_s
        sent_to = ""
        st = self._state(sub_id)
        done = st.sub.next_reset()  # before sending: the answer may come at once
        while True:
            target = await self._owner(st.reg)
            if target and (target != sent_to or op == OP_REANCHOR):
                if sent_to:
                    self.counters["reroutes"] += 1
                control = self._control(st.reg, op, rev=rev, **kw)
                await self.deps.control.send_control(target, control)
                sent_to = target
            attempt_end = min(deadline, loop.time() + self.opts.attempt_timeout_s)
            while (remaining := attempt_end - loop.time()) > 0:
                try:
                    await asyncio.wait_for(asyncio.shield(done), remaining)
                except TimeoutError:
                    break
                st = self._state(sub_id)
                if st.rev >= rev:
                    return
                done = st.sub.next_reset()  # a window of an older query: keep waiting
            if loop.time() >= deadline:
                done.cancel()
                raise UnavailableError(
                    f"no shard answered {op} of {sub_id} within "
                    f"{self.opts.request_deadline_s}s (owner now: {target or 'none live'})"
                )
            st = self._state(sub_id)

    # -- frames ------------------------------------------------------------------

    def receive(self, batch: list[WireFrame]) -> None:
        """Demultiplex one batch of wire frames to its subscriptions, fenced.

        Accepted frames go to each subscription (its `rows`), and, as the wire
        entries they came in, to `forward` when set (the in-cluster gateway
        hands them on to its consumers without re-encoding them).
        """
        out: dict[str, list[WireFrame]] = {}
        subs = self._subs
        for entry in batch:
            sid = entry[0]
            st = subs.get(sid)
            if st is None:
                continue
            is_reset = entry[3]["op"] == "reset"
            verdict = st.fence.check(entry[1], entry[2], is_reset)
            if verdict != "ok":
                if verdict == "stale":
                    self.counters["stale"] += 1
                else:
                    self.counters["gaps"] += 1
                if verdict == "gap" and not self._closed:  # a frame is missing (or a
                    self._tasks.spawn(self.resync(sid), "gateway-resync")  # reset was lost)
                continue
            if is_reset:
                st.rev = entry[4] if len(entry) > 4 else 0
            frames = out.get(sid)
            if frames is None:
                frames = out[sid] = []
            frames.append(entry)
        self.counters["frames"] += len(batch)
        forward = self.forward
        for sid, entries in out.items():
            subs[sid].sub.deliver_wire(entries)
            if forward is not None:
                forward(sid, entries)
