"""`EdgeService`: what SSE and WebSocket share (auth, validation, subscribe, reanchor).

Guarantees:

* the tenant comes from the bearer token only;
* a query is validated in full (model, entity, the edge's `max_window`, the
  gateway's own checks) before anything is registered;
* a client-chosen sub id reaches the gateway only through a resume token
  that verifies for the authenticated tenant; any refusal of that id (held
  elsewhere, another tenant's registration) starts a fresh subscription;
* a reanchor is validated in full before the gateway's state is touched.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel
from starlette.requests import HTTPConnection

from raycluster._connect import RemoteGateway
from raycluster.client import Subscription
from raycluster.config import EdgeSettings, TierSettings
from raycluster.errors import InvalidQuery, RegistrationConflict
from raycluster.livequery import Cursor, LiveQuery, query_cost

from ._hub import Conn, EdgeSub, Hub
from .auth import AuthError, authenticate
from .errors import UNAVAILABLE, LimitExceeded, NotFound
from .tokens import ResumeTokens, load_secret

__all__ = ("EdgeService",)


class _Reanchor(BaseModel):
    cursor: Cursor | None = None
    limit: int


class EdgeService:
    """The edge's operations over one gateway and one `Hub`."""

    def __init__(self, gateway: RemoteGateway, settings: TierSettings) -> None:
        self.gateway = gateway
        self.tier_settings = settings
        self.settings: EdgeSettings = settings.edge
        self.hub = Hub(self.settings)
        self._tokens: ResumeTokens | None = None
        self._tokens_lock = asyncio.Lock()

    async def tokens(self) -> ResumeTokens:
        """The resume-token codec (its secret loaded from Redis on first use)."""
        if self._tokens is None:
            async with self._tokens_lock:
                if self._tokens is None:
                    secret = await load_secret(self.tier_settings, self.gateway.redis_url)
                    self._tokens = ResumeTokens(secret)
        return self._tokens

    def tenant(self, conn: HTTPConnection) -> str:
        """The token's tenant; raises `AuthError` (401/403), counted."""
        auth = conn.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        token = token or conn.query_params.get("access_token")
        try:
            return authenticate(token, self.settings.tokens, self.settings.hmac_secret)
        except AuthError as e:
            self.hub.counters[f"auth_failures_{e.status}"] += 1
            raise

    def query(self, raw: Any) -> LiveQuery:
        """A validated query that fits the entity and the edge's `max_window`."""
        q = LiveQuery.model_validate(raw)
        self.gateway.gateway.check_query(q)
        self._check_window(q.limit)
        return q

    def _check_window(self, limit: int) -> None:
        if limit > self.settings.max_window:
            raise InvalidQuery(
                "limit", limit, f"above the edge's max_window {self.settings.max_window}"
            )

    async def subscribe(
        self, conn: Conn, query: LiveQuery, resume: str | None
    ) -> tuple[EdgeSub, bool]:
        """Subscribe for `conn` (limits, resume); the sub is queued with its first window.

        Returns the subscription and whether it resumed the token's sub id.
        """
        hub = self.hub
        tenant = conn.tenant
        tokens = await self.tokens()
        cost = query_cost(query)
        refused = hub.reserve(tenant, cost)
        if refused is not None:
            raise LimitExceeded(refused)
        try:
            proof = tokens.verify(tenant, resume)
            if resume and proof is None:
                hub.counters["resume_refused"] += 1
            sub_id: str | None = None
            seq = 0
            if proof is not None and await hub.take_over(tenant, proof.sub_id):
                sub_id, seq = proof.sub_id, proof.seq + 1
            try:
                sub = await self._subscribe(tenant, query, sub_id)
            except UNAVAILABLE:
                raise
            except (RegistrationConflict, InvalidQuery):
                if sub_id is None:
                    raise
                # The id is refused (still held, or registered to someone else): start afresh.
                hub.counters["resume_conflicts"] += 1
                sub_id, seq = None, 0
                sub = await self._subscribe(tenant, query, None)
        except BaseException:
            hub.release(tenant, cost)
            raise
        esub = EdgeSub(hub, conn, sub, seq, tokens)
        esub.cost = cost
        hub.adopt(esub)
        if conn.ending is not None:  # the connection went away meanwhile
            await esub.close()
            raise NotFound("connection closed")
        return esub, sub_id is not None

    async def _subscribe(self, tenant: str, query: LiveQuery, sub_id: str | None) -> Subscription:
        async with asyncio.timeout(self.settings.request_timeout_s):
            return await self.gateway.subscribe(tenant, query, sub_id=sub_id)

    def check_reanchor(self, esub: EdgeSub, raw: Any) -> _Reanchor:
        """The reanchor `raw` asks for, validated in full against `esub`'s query."""
        body = _Reanchor.model_validate(raw)
        self._check_window(body.limit)
        self.gateway.gateway.check_query(esub.sub.query.moved(body.cursor, body.limit))
        return body

    async def reanchor(self, esub: EdgeSub, raw: Any) -> tuple[int, int]:
        """Move `esub`'s window; returns (rows, the edge seq of its last frame queued).

        Nothing changes anywhere unless the request is valid.
        """
        body = self.check_reanchor(esub, raw)
        async with asyncio.timeout(self.settings.request_timeout_s):
            await esub.sub.reanchor(body.cursor, body.limit)
        esub.take(esub.sub.drain())  # the new window is queued on the stream now
        return len(esub.sub.rows), esub.seq - 1

    def side(self, conn: HTTPConnection) -> EdgeSub:
        """The subscription a side request names, if it is the token's tenant's (else 404)."""
        esub = self.hub.find(self.tenant(conn), conn.path_params["sub"])
        if esub is None:
            raise NotFound("no such subscription")
        return esub
