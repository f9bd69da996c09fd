"""What gateways and shards say to each other: controls and registrations.

Controls go gateway → shard on the shard's control stream. Frames go shard →
gateway in batches, in the format of `raycluster.wire` (re-exported here).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from raycluster.errors import RegistrationConflict
from raycluster.livequery import Cursor, LiveQuery
from raycluster.wire import GatewayDelta, WireFrame

from .routing import partition_of

__all__ = (
    "OP_REANCHOR",
    "OP_RESYNC",
    "OP_SUBSCRIBE",
    "OP_UNSUBSCRIBE",
    "Control",
    "GatewayDelta",
    "Registration",
    "Transport",
    "WireFrame",
    "check_replace",
)

OP_SUBSCRIBE = "subscribe"
OP_UNSUBSCRIBE = "unsubscribe"
OP_REANCHOR = "reanchor"
OP_RESYNC = "resync"  # the gateway saw a seq gap: resend reset + window

Transport = Literal["ray", "redis", "memory"]


class Registration(BaseModel):
    """A subscription's durable record: enough for any shard to rebuild it.

    The gateway writes it *before* asking a shard to serve it, and rewrites
    it on every reanchor, so ownership changes never lose a subscription or
    its scroll position. `query` holds the current cursor and limit.
    """

    model_config = ConfigDict(frozen=True)
    sub_id: str = Field(min_length=1)
    tenant: str = Field(min_length=1)
    query: LiveQuery
    gateway_id: str = Field(min_length=1)
    transport: Transport = "redis"
    rev: int = Field(0, ge=0, description="Bumped by every reanchor: which query is current.")

    @property
    def partition(self) -> int:
        """The partition that owns this subscription."""
        return partition_of(self.tenant, self.query.entity)

    @property
    def cursor(self) -> Cursor | None:
        """The current keyset anchor."""
        return self.query.cursor


def check_replace(
    new: Registration, old_tenant: str | None, old_gateway: str | None, *, takeover: bool
) -> None:
    """Raise `RegistrationConflict` unless `new` may replace the record it would overwrite.

    The registry's one rule (every implementation applies it atomically): a
    sub id never changes tenant, and changes gateway only by a takeover.
    `old_*` are None when there is no record.
    """
    if old_tenant is None:
        return
    if old_tenant != new.tenant:
        raise RegistrationConflict(new.sub_id, "registered by another tenant")
    if old_gateway != new.gateway_id and not takeover:
        raise RegistrationConflict(new.sub_id, f"held by another gateway ({old_gateway})")


class Control(BaseModel):
    """A gateway → shard request about one subscription.

    The shard reads the subscription itself from the registry (registry
    first), so a control only names it; `cursor`/`limit` travel for
    reanchor so a log of controls reads on its own.
    """

    model_config = ConfigDict(frozen=True)
    op: Literal["subscribe", "unsubscribe", "reanchor", "resync"]
    sub_id: str
    gateway_id: str
    tenant: str = ""
    partition: int = -1
    cursor: Cursor | None = None
    limit: int | None = None
    rev: int = 0
    hops: int = Field(0, description="How often shards forwarded it (bounded, no loops).")
