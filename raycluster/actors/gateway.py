"""`GatewayActor` (an in-cluster gateway) and `RayDeltaBus` (shard → gateway by actor calls).

Shards hand batches to a gateway actor with one actor call per batch; the
gateway fences and demultiplexes them, and each consumer iterates its
subscription as a stream of object refs (a streaming generator that yields
batches of frames, never one call per frame).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import ray

from raycluster._tasks import TaskSet, checkpoint, logged
from raycluster._wiring import redis_gateway
from raycluster.cluster.gateway import GatewayStatus
from raycluster.cluster.protocol import WireFrame
from raycluster.config import TierSettings
from raycluster.errors import ClosedError, InvalidQuery, UnavailableError
from raycluster.livequery import Cursor, LiveQuery, tune_gc

from .names import gateway_name

__all__ = ("GatewayActor", "GatewayActorStatus", "RayDeltaBus")

log = logging.getLogger(__name__)

CONSUMER_KEEPALIVE_S = 2.0  # an idle consumer stream yields an empty batch this often
MINTED_TTL_S = 300.0  # a sub id minted by `new_sub_id` and not used by then may be dropped
MINTED_MAX = 100_000  # unused minted ids kept at most


class GatewayActorStatus(GatewayStatus):
    """`GatewayActor.status()`: the gateway's status, its consumers, and where it runs."""

    consumers: int  # streams of frames open (one per driver, say)
    consumer_resets: int  # backlogs of slow consumers replaced by fresh windows
    node_id: str


class RayDeltaBus:
    """The "ray" delta transport: `send` is an awaited call to the gateway actor.

    Awaiting each call keeps batches in order and bounds what is in flight per
    gateway (the shard accumulates the next batch meanwhile), so a slow
    gateway pushes back on the shard instead of queuing without bound. One
    call in flight, not two: Ray does not keep submission order for calls to
    an async actor, and a reordered batch costs a resync. (Measured: two in
    flight did not lower write → client latency here; calls are CPU-bound.)

    Batches flushed together (in one event-loop turn) are sent together: a
    delta that several gateways need (subscriptions of one shared view on
    different gateways) is `ray.put` once, and each gateway's batch refers to
    it by index into that one shared object.
    """

    def __init__(self, tier: str, namespace: str) -> None:
        self.tier = tier
        self.namespace = namespace
        self._handles: dict[str, Any] = {}
        self._pending: list[tuple[str, list[WireFrame], asyncio.Future[None]]] = []
        self._tasks = TaskSet("ray delta bus")  # the actor calls in flight
        self.shared_puts = 0  # how many shared payloads were put (for status/tests)
        self.calls = 0  # deliver() calls made

    async def send(self, gateway_id: str, frames: list[WireFrame]) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._dispatch)
        self._pending.append((gateway_id, frames, done))
        await done

    def _dispatch(self) -> None:
        pending, self._pending = self._pending, []
        shared, batches = share_deltas([frames for _, frames, _ in pending])
        ref = None
        if shared:
            ref = ray.put(shared)
            self.shared_puts += 1
        for (gid, _, done), batch in zip(pending, batches, strict=True):
            self._tasks.spawn(self._call(gid, batch, ref, done), f"deliver-{gid}")

    async def _call(
        self, gateway_id: str, batch: list[WireFrame], ref: Any, done: asyncio.Future[None]
    ) -> None:
        try:
            handle: Any = self._handles.get(gateway_id)
            if handle is None:
                name = gateway_name(self.tier, gateway_id)
                # A GCS round trip: off the event loop (heartbeats run on it).
                handle = await asyncio.to_thread(ray.get_actor, name, namespace=self.namespace)
                self._handles[gateway_id] = handle
            self.calls += 1
            await handle.deliver.remote(batch, ref)
        except Exception as e:
            self._handles.pop(gateway_id, None)  # look it up again next time
            if not done.done():
                done.set_exception(e)
        else:
            if not done.done():
                done.set_result(None)
        finally:
            if not done.done():  # cancelled: the sender fails (it must not wait for ever)
                done.set_exception(UnavailableError(f"send to gateway {gateway_id} cancelled"))

    def deltas(self, gateway_id: str) -> Any:
        raise NotImplementedError("gateway actors receive batches through deliver()")

    async def drop(self, gateway_id: str) -> None:
        """Forget the cached handle (an actor has no channel to delete)."""
        self._handles.pop(gateway_id, None)

    async def aclose(self) -> None:
        """Cancel the calls in flight (their senders get `UnavailableError`)."""
        await self._tasks.aclose()


def share_deltas(batches: list[list[WireFrame]]) -> tuple[list[Any], list[list[WireFrame]]]:
    """Pull out the deltas that more than one batch carries.

    Returns `(shared, batches)`: in the returned batches an entry whose delta
    is in `shared` carries its index there instead (an int); other entries
    are unchanged. Deltas are the same object when one view's frame goes to
    several subscriptions (`Frame.wire` is cached), so identity finds them.
    """
    if len(batches) < 2:
        return [], batches
    seen: dict[int, int] = {}  # id(delta) -> the batch that first carried it
    multi: dict[int, int] = {}  # id(delta) -> index in shared
    shared: list[Any] = []
    for k, batch in enumerate(batches):
        for e in batch:
            key = id(e[3])
            first = seen.setdefault(key, k)
            if first != k and key not in multi:
                multi[key] = len(shared)
                shared.append(e[3])
    if not shared:
        return [], batches
    out = [
        [[e[0], e[1], e[2], multi[id(e[3])], *e[4:]] if id(e[3]) in multi else e for e in batch]
        for batch in batches
    ]
    return shared, out


class _ConsumerQueue:
    """A driver (or any Ray code) reading the frames of its subscriptions as one stream."""

    __slots__ = ("closed", "frames", "ready", "resync", "subs")

    def __init__(self) -> None:
        self.frames: list[WireFrame] = []
        self.ready = asyncio.Event()
        self.subs: set[str] = set()
        self.resync: set[str] = set()  # send these a fresh window (the backlog was dropped)
        self.closed = False


@ray.remote
class GatewayActor:
    """An in-cluster gateway: subscribe here, then iterate `consume(consumer)` (or `stream(sub)`).

    A consumer (one per driver, say) reads the frames of all its
    subscriptions as one streaming generator of batches, so the number of
    Ray streams does not grow with subscriptions. Batches are wire entries
    `[sub_id, seq, epoch, delta-dict, rev]`, already fenced here. A consumer
    that falls more than `buffer` frames behind gets, in place of its backlog,
    a `reset` plus the current window of each of its subscriptions.
    """

    def __init__(self, gateway_id: str, settings_json: str, redis_url: str) -> None:
        settings = TierSettings.model_validate_json(settings_json)
        self.gw, self._closers = redis_gateway(
            gateway_id, redis_url, settings, transport=settings.gateway_transport
        )
        self.gw.forward = self._forward
        self.gw.queue_frames = False  # frames go to consumers; the gateway keeps rows only
        self._cap = settings.gateway.consumer_buffer
        self.consumer_resets = 0
        self._consumers: dict[str, _ConsumerQueue] = {}
        self._consumer_of: dict[str, str] = {}  # sub_id -> consumer id
        self._minted: dict[str, tuple[str, str | None, float]] = {}  # id -> tenant, consumer, t
        self._tasks = TaskSet(f"gateway actor {gateway_id}")
        self._started = self._tasks.spawn(self.gw.start(), "gateway-start")
        tune_gc()

    async def ready(self) -> str:
        """The gateway id, once it heartbeats."""
        await self._started
        return self.gw.id

    async def deliver(self, batch: list[WireFrame], shared: list[Any] | None = None) -> None:
        """Receive one batch of frames from a shard.

        With `shared` (resolved by Ray from the one object the shard put), an
        entry whose delta is an int refers to `shared[i]` (see `RayDeltaBus`).
        """
        if shared is not None:
            batch = [
                [e[0], e[1], e[2], shared[e[3]], *e[4:]] if type(e[3]) is int else e for e in batch
            ]
        self.gw.receive(batch)

    def _consumer(self, consumer_id: str) -> _ConsumerQueue:
        c = self._consumers.get(consumer_id)
        if c is None:
            c = self._consumers[consumer_id] = _ConsumerQueue()
        return c

    def _forward(self, sub_id: str, entries: list[WireFrame]) -> None:
        cid = self._consumer_of.get(sub_id)
        c = self._consumers.get(cid) if cid is not None else None
        if c is None:
            return
        c.frames += entries
        if len(c.frames) > self._cap:
            # The consumer is behind: its subscriptions with frames in the
            # backlog get their current window instead of it.
            c.resync |= {e[0] for e in c.frames}
            c.frames.clear()
            self.consumer_resets += 1
        c.ready.set()

    async def new_sub_id(self, tenant: str, consumer: str | None = None) -> str:
        """A sub id for one `subscribe` of `tenant` (by `consumer`): ids are minted here.

        A caller that must route frames before `subscribe` returns (a driver's
        consumer stream) asks for the id first; an id is good for one
        subscribe, by the tenant and consumer it was minted for, for
        `MINTED_TTL_S`.
        """
        now = asyncio.get_running_loop().time()
        minted = self._minted
        if len(minted) >= MINTED_MAX:  # ids asked for and never used: drop the stale ones
            for sid in [k for k, (_, _, t) in minted.items() if now - t > MINTED_TTL_S]:
                del minted[sid]
            if len(minted) >= MINTED_MAX:
                raise UnavailableError(f"gateway {self.gw.id}: too many unused sub ids")
        sid = uuid.uuid4().hex
        minted[sid] = (tenant, consumer, now)
        return sid

    async def subscribe(
        self,
        tenant: str,
        query_json: str,
        sub_id: str | None = None,
        consumer: str | None = None,
    ) -> str:
        """Register a live query; returns its id once the first window is here.

        `sub_id` is None (an id is minted) or one `new_sub_id` minted for this
        tenant and consumer (`InvalidQuery` otherwise): a caller never picks
        another's id. With `consumer`, its frames (the first window included)
        go to that consumer's `consume` stream.
        """
        await self._started
        if sub_id is None:
            sid = uuid.uuid4().hex
        else:
            minted = self._minted.pop(sub_id, None)
            if minted is None or minted[:2] != (tenant, consumer):
                raise InvalidQuery("sub_id", sub_id, "not an id new_sub_id minted for this caller")
            sid = sub_id
        if consumer is not None:
            self._consumer_of[sid] = consumer
            self._consumer(consumer).subs.add(sid)
        try:
            await self.gw.subscribe(tenant, LiveQuery.model_validate_json(query_json), sub_id=sid)
        except BaseException:
            self._detach(sid)
            raise
        return sid

    async def consume(self, consumer_id: str) -> Any:
        """Batches of wire entries of every subscription of `consumer_id`, until `release`."""
        c = self._consumer(consumer_id)
        try:
            while not c.closed:
                checkpoint()
                try:
                    await asyncio.wait_for(c.ready.wait(), CONSUMER_KEEPALIVE_S)
                except TimeoutError:
                    # An empty batch now and then: Ray closes the generator
                    # when it cannot report one to a dead consumer, which ends
                    # the consumer's subscriptions (`finally` below).
                    yield []
                    continue
                c.ready.clear()
                batch = self._take(c)
                if batch:
                    yield batch
        finally:
            if self._consumers.get(consumer_id) is c:
                await self._drop_consumer(consumer_id)

    async def stream(self, sub_id: str, tenant: str) -> Any:
        """Batches of frames (JSON-ready dicts) of one subscription of `tenant`, until it closes.

        The subscription gets a consumer of its own, starting with its current
        window; prefer `consume` for many subscriptions.
        """
        if not self.gw.holds(sub_id, tenant):
            raise ClosedError(f"subscription {sub_id} is not open on gateway {self.gw.id}")
        cid = f"sub:{sub_id}"
        self._detach(sub_id)
        self._consumer_of[sub_id] = cid
        c = self._consumer(cid)
        c.subs.add(sub_id)
        c.resync.add(sub_id)  # start with its current window
        c.ready.set()
        async for batch in self.consume(cid):
            yield [{"sub_id": e[0], "seq": e[1], "epoch": e[2], "delta": e[3]} for e in batch]

    def _take(self, c: _ConsumerQueue) -> list[WireFrame]:
        batch, c.frames = c.frames, []
        if c.resync:
            subs = {s.id: s for s in self.gw.subscriptions()}
            for sid in sorted(c.resync & c.subs):
                sub = subs.get(sid)
                if sub is not None:
                    batch = [e for e in batch if e[0] != sid] + sub.window_wire()
            c.resync.clear()
        return batch

    def _detach(self, sub_id: str) -> None:
        cid = self._consumer_of.pop(sub_id, None)
        c = self._consumers.get(cid) if cid is not None else None
        if c is not None:
            c.subs.discard(sub_id)
            if cid == f"sub:{sub_id}":  # a stream of this subscription alone ends with it
                c.closed = True
                c.ready.set()

    async def _drop_consumer(self, consumer_id: str) -> None:
        """The consumer is gone: end its subscriptions, so nothing leaks."""
        c = self._consumers.pop(consumer_id, None)
        if c is None:
            return
        c.closed = True
        c.ready.set()
        for sid in list(c.subs):
            self._consumer_of.pop(sid, None)
            with logged(f"gateway {self.gw.id}: unsubscribing {sid} of a gone consumer"):
                await self.gw.unsubscribe(sid)

    async def release(self, consumer_id: str) -> None:
        """End a consumer's stream and every subscription it holds."""
        await self._drop_consumer(consumer_id)

    async def reanchor(self, sub_id: str, tenant: str, cursor_json: str | None, limit: int) -> None:
        """Move a window of `tenant`'s (persisted first, re-routed to the current owner)."""
        cursor = Cursor.model_validate_json(cursor_json) if cursor_json else None
        await self.gw.reanchor(sub_id, cursor, limit, tenant=tenant)

    async def resync(self, sub_id: str, tenant: str) -> None:
        """Ask the owner for a fresh window of `tenant`'s subscription."""
        await self.gw.resync(sub_id, tenant=tenant)

    async def unsubscribe(self, sub_id: str, tenant: str) -> None:
        """End a subscription of `tenant`'s (another tenant's is left alone)."""
        if self.gw.holds(sub_id, tenant):
            self._detach(sub_id)
        await self.gw.unsubscribe(sub_id, tenant=tenant)

    async def status(self) -> GatewayActorStatus:
        """Subscriptions, consumers and frame counters."""
        return {
            **self.gw.status(),
            "consumers": len(self._consumers),
            "consumer_resets": self.consumer_resets,
            "node_id": ray.get_runtime_context().get_node_id(),
        }

    async def stop(self) -> None:
        """Unsubscribe everything and leave the live set."""
        for c in self._consumers.values():
            c.closed = True
            c.ready.set()
        with logged(f"gateway {self.gw.id}: closing"):
            await self.gw.aclose()
        await self._tasks.aclose()
        await self._closers.aclose()
