"""`EdgeSettings`: the `edge:` section of the tier settings (server, auth, limits)."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr

__all__ = ("EdgeSettings",)


class EdgeSettings(BaseModel):
    """Where the edge listens, who may use it, and how much one client may hold.

    Limits bound memory: a connection holds at most
    `max_subscriptions_per_connection` subscriptions, each with at most
    `buffer` queued frames (then the client gets a `reset` and the current
    window instead of its backlog), and a client that does not read for
    `send_timeout_s` is disconnected.
    """

    host: str = Field("127.0.0.1", description="Interface the HTTP server binds.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0: any free port).")
    tokens: dict[str, str] = Field(
        default_factory=dict, description="Static bearer tokens: token -> tenant."
    )
    hmac_secret: SecretStr | None = Field(
        None, description="Secret of signed tokens `v1.<payload>.<sig>` (unset: none accepted)."
    )
    resume_secret: SecretStr | None = Field(
        None,
        description="Secret of resume tokens (unset: generated once and shared by every edge "
        "of the tier through its Redis).",
    )
    max_body_bytes: int = Field(
        65536,
        gt=0,
        description="Largest request body or WebSocket message (413 / close 1009 beyond).",
    )
    max_json_depth: int = Field(
        64, gt=0, description="Deepest JSON nesting a request may use (422 beyond)."
    )
    max_subscriptions_per_connection: int = Field(
        16, gt=0, description="Subscriptions one WebSocket connection may hold (429 beyond)."
    )
    max_window: int = Field(
        500,
        gt=0,
        description="Largest `limit` a client may ask for (the entity's own applies too).",
    )
    max_subscriptions_per_tenant: int = Field(
        1000, gt=0, description="Open subscriptions per tenant across the edge (429 beyond)."
    )
    max_cost_per_tenant: int = Field(
        4096,
        gt=0,
        description="Total `query_cost` of one tenant's open subscriptions on this edge (429 "
        "beyond): one unit per condition or group plus each like/ilike pattern's length. It "
        "caps what one change of a tenant costs the shard that serves it, so a tenant cannot "
        "stall the others on that shard (see benchmarks/bench_hostile.py).",
    )
    max_connections_per_tenant: int = Field(
        1000, gt=0, description="Open SSE streams + WebSockets per tenant (429 beyond)."
    )
    buffer: int = Field(
        256,
        gt=0,
        description="Frames queued per subscription; beyond it the backlog is replaced by a "
        "reset and the current window.",
    )
    send_timeout_s: float = Field(
        10.0, gt=0, description="A client that does not read for this long is disconnected."
    )
    keepalive_s: float = Field(15.0, gt=0, description="Idle SSE streams get a comment this often.")
    request_timeout_s: float = Field(
        30.0, gt=0, description="Deadline of a subscribe or reanchor through the gateway."
    )
    shutdown_grace_s: float = Field(
        5.0, ge=0, description="On SIGTERM, streams get this long to send their `shutdown` event."
    )
