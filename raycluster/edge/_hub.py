"""The edge's state: connections, their subscriptions, bounded outgoing buffers, counters.

A `_EdgeSub` wraps one gateway `Subscription`. A pump task moves the frames
the gateway accepted (already fenced) into the subscription's outgoing deque,
numbering them with the edge's own contiguous `seq` (the epoch is the
shard's). When the deque holds more than `edge.buffer` frames beyond a window's
worth, the backlog is replaced by a `reset` and the subscription's current rows — exact, because
the gateway's `rows` never skipped a frame — so memory stays bounded and the
client never sees a gap.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from raycluster._tasks import TaskSet, cancel_and_wait
from raycluster.config import EdgeSettings
from raycluster.livequery import DeltaOp, LiveDelta

from .tokens import ResumeTokens

if TYPE_CHECKING:
    from raycluster.client import Subscription
    from raycluster.cluster import GatewayDelta

__all__ = ("Conn", "EdgeSub", "Hub", "delta_json")

log = logging.getLogger(__name__)


# An outgoing item: a frame (seq, epoch, delta) or a ready-made WS control message.
Frame = tuple[int, int, LiveDelta]
Item = Frame | dict[str, Any]


def delta_json(d: LiveDelta) -> dict[str, Any]:
    """A delta as the JSON object clients receive (no null fields)."""
    return d.model_dump(mode="json", exclude_none=True)


class EdgeSub:
    """One subscription served on one connection: its pump and bounded outgoing buffer."""

    def __init__(
        self, hub: Hub, conn: Conn, sub: Subscription, seq: int, tokens: ResumeTokens
    ) -> None:
        self.hub = hub
        self.conn = conn
        self.sub = sub
        self.seq = seq  # next edge seq
        self.epoch = 0
        self._tokens = tokens
        self._mac: tuple[int, str] = (-1, "")  # (epoch, mac): one HMAC per epoch, not per frame
        self.out: deque[Item] = deque()
        self.ended = False  # no frame will be added any more
        self.pump: asyncio.Task[None] | None = None
        self.cost = 0  # its query_cost, counted against the tenant's budget

    @property
    def id(self) -> str:
        """The subscription id (the tier's)."""
        return self.sub.id

    def token(self, epoch: int, seq: int) -> str:
        """The resume token of frame (`epoch`, `seq`) (docs/edge-protocol.md, Resume)."""
        if self._mac[0] != epoch:
            self._mac = (epoch, self._tokens.mac(self.conn.tenant, self.id, epoch))
        return f"{self.id}.{epoch}.{seq}.{self._mac[1]}"

    def start(self) -> None:
        """Queue what already arrived (the first window), then pump the rest."""
        self.take(self.sub.drain())
        self.pump = self.hub.tasks.spawn(self._pump(), f"edge-pump-{self.id}")

    def mark(self, message: dict[str, Any]) -> None:
        """Queue a control message after the frames already queued (WS replies)."""
        self.out.append(message)
        self.conn.wake.set()

    def take(self, frames: list[GatewayDelta]) -> None:
        """Number and queue frames; replace an overlong backlog by a reset and the window."""
        if not frames:
            return
        out = self.out
        seq = self.seq
        for f in frames:
            out.append((seq, f.epoch, f.delta))
            seq += 1
        self.seq = seq
        self.epoch = frames[-1].epoch
        # A reset costs a window: worth it only once the backlog is longer than the buffer
        # plus the window it replaces.
        rows = self.sub.rows
        if len(out) > self.hub.settings.buffer + len(rows) and rows.complete:
            self._collapse()
        self.conn.wake.set()

    def _collapse(self) -> None:
        marks = [i for i in self.out if isinstance(i, dict)]
        self.hub.counters["slow_consumer_resets"] += 1
        self.hub.counters["frames_replaced"] += len(self.out) - len(marks)
        self.out.clear()
        items = self.sub.rows.items
        mk = LiveDelta.model_construct
        seq, epoch = self.seq, self.epoch
        self.out.append((seq, epoch, mk(op=DeltaOp.RESET, count=len(items))))
        for k, it in enumerate(items):
            d = mk(op=DeltaOp.ENTER, agg_id=it.agg_id, version=it.version, row=it.row, new_index=k)
            self.out.append((seq + 1 + k, epoch, d))
        self.seq = seq + len(items) + 1
        self.out.extend(marks)

    async def _pump(self) -> None:
        try:
            while True:
                frames = await self.sub.batch()
                if not frames:
                    break
                self.take(frames)
        finally:
            self.ended = True
            self.conn.wake.set()

    async def close(self) -> None:
        """Unsubscribe (idempotent) and stop pumping; a failed unsubscribe is logged."""
        self.ended = True
        self.hub.forget(self)
        try:
            async with asyncio.timeout(10):
                await self.sub.close()
        except Exception:
            log.warning("edge: unsubscribing %s failed", self.id, exc_info=True)
        if self.pump is not None:
            await cancel_and_wait([self.pump])
        self.conn.wake.set()


@dataclass(eq=False)
class Conn:
    """One client connection (an SSE stream or a WebSocket) of one tenant."""

    hub: Hub
    tenant: str
    kind: str
    subs: dict[str, EdgeSub] = field(default_factory=dict)  # client id (WS) or sub id (SSE)
    control: deque[dict[str, Any]] = field(default_factory=deque)  # WS messages of no sub
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ending: str | None = None  # reason the server ends this connection

    def reply(self, message: dict[str, Any]) -> None:
        """Queue a WS message that belongs to no subscription."""
        self.control.append(message)
        self.wake.set()

    def end(self, reason: str) -> None:
        """Ask the connection's writer to end it (with `reason`)."""
        if self.ending is None:
            self.ending = reason
        self.wake.set()

    async def close_all(self) -> None:
        """Unsubscribe everything this connection holds."""
        subs = list(self.subs.values())
        self.subs.clear()
        await asyncio.gather(*(s.close() for s in subs))


class Hub:
    """Every connection and subscription of one edge, its limits and counters."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self.subs: dict[str, EdgeSub] = {}
        self.conns: set[Conn] = set()
        self.tenant_subs: Counter[str] = Counter()
        self.tenant_cost: Counter[str] = Counter()  # `query_cost` of their open subscriptions
        self.tenant_conns: Counter[str] = Counter()
        self.closing = False
        self.counters: Counter[str] = Counter()
        self.tasks = TaskSet("edge")  # every subscription's pump

    def open_conn(self, tenant: str, kind: str) -> Conn | None:
        """A new connection, or None if the tenant is at its connection limit."""
        if self.tenant_conns[tenant] >= self.settings.max_connections_per_tenant:
            return None
        conn = Conn(self, tenant, kind)
        self.conns.add(conn)
        self.tenant_conns[tenant] += 1
        self.counters[f"connections_opened_{kind}"] += 1
        if self.closing:
            conn.end("shutdown")
        return conn

    async def close_conn(self, conn: Conn) -> None:
        """Unsubscribe everything the connection held and drop it."""
        try:
            await conn.close_all()
        finally:
            if conn in self.conns:
                self.conns.discard(conn)
                self.tenant_conns[conn.tenant] -= 1
                if self.tenant_conns[conn.tenant] <= 0:
                    del self.tenant_conns[conn.tenant]

    def reserve(self, tenant: str, cost: int) -> str | None:
        """Count one more subscription of `tenant` costing `cost` (`query_cost`).

        Returns why not (nothing counted) at the tenant's subscription limit or
        cost budget, else None.
        """
        s = self.settings
        if self.tenant_subs[tenant] >= s.max_subscriptions_per_tenant:
            return "too many subscriptions for this tenant"
        if self.tenant_cost[tenant] + cost > s.max_cost_per_tenant:
            return (
                f"this tenant's open queries would cost more than {s.max_cost_per_tenant} "
                f"(edge.max_cost_per_tenant; this one costs {cost})"
            )
        self.tenant_subs[tenant] += 1
        self.tenant_cost[tenant] += cost
        return None

    def release(self, tenant: str, cost: int) -> None:
        """Undo `reserve`."""
        self.tenant_subs[tenant] -= 1
        self.tenant_cost[tenant] -= cost
        if self.tenant_subs[tenant] <= 0:
            del self.tenant_subs[tenant]
            del self.tenant_cost[tenant]

    def adopt(self, esub: EdgeSub) -> None:
        """Record a served subscription (its tenant slot is already reserved)."""
        self.subs[esub.id] = esub

    def forget(self, esub: EdgeSub) -> None:
        """Drop a subscription's record and free its tenant slot (idempotent)."""
        if self.subs.get(esub.id) is esub:
            del self.subs[esub.id]
            self.release(esub.conn.tenant, esub.cost)

    def find(self, tenant: str, sub_id: str) -> EdgeSub | None:
        """The tenant's open subscription `sub_id` (None for another tenant's)."""
        esub = self.subs.get(sub_id)
        if esub is None or esub.conn.tenant != tenant or esub.ended:
            return None
        return esub

    async def take_over(self, tenant: str, sub_id: str) -> bool:
        """Before reusing `sub_id` on resume: end its old stream if the tenant still holds it.

        False if another tenant holds it (the resume token is then ignored).
        """
        old = self.subs.get(sub_id)
        if old is None:
            return True  # an id the gateway still holds is refused there (a fresh sub)
        if old.conn.tenant != tenant:
            return False
        old.conn.subs = {k: v for k, v in old.conn.subs.items() if v is not old}
        if old.conn.kind == "sse":
            old.conn.end("replaced")
        await old.close()
        return True

    async def aclose(self) -> None:
        """Stop every subscription's pump (the server has stopped serving)."""
        await self.tasks.aclose()

    def shutdown(self) -> None:
        """Ask every connection to end with reason `shutdown` (safe from a signal handler)."""
        self.closing = True
        for conn in list(self.conns):
            conn.end("shutdown")
