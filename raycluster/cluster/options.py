"""The `shard:` and `gateway:` sections of the tier settings (pydantic only: light to import)."""

from __future__ import annotations

from pydantic import Field

from raycluster._section import Section

__all__ = ("GatewayOptions", "ShardOptions")


class ShardOptions(Section):
    """Loop cadences and bounds of a shard."""

    heartbeat_interval_s: float = Field(1.0, gt=0, description="Heartbeat period (< TTL).")
    ownership_interval_s: float = Field(0.5, gt=0, description="Ownership reconcile period.")
    gateway_check_interval_s: float = Field(5.0, gt=0, description="Dead-gateway sweep period.")
    flush_interval_ms: float = Field(2.0, ge=0, description="Frames wait this long to batch.")
    max_batch_frames: int = Field(2000, gt=0, description="Frames per delta message at most.")
    max_pending_frames: int = Field(
        100_000, gt=0, description="Frames queued per gateway before its subs are resynced."
    )
    cushion: int = Field(8, ge=0, description="Rows kept past each window.")


class GatewayOptions(Section):
    """Timeouts and bounds of a gateway."""

    heartbeat_interval_s: float = Field(1.0, gt=0, description="Heartbeat period (< TTL).")
    attempt_timeout_s: float = Field(
        2.0, gt=0, description="Wait this long for a shard's answer before re-routing."
    )
    request_deadline_s: float = Field(
        30.0, gt=0, description="Give up on subscribe/reanchor after this long."
    )
    buffer: int = Field(10_000, gt=0, description="Frames queued per subscription.")
    consumer_buffer: int = Field(
        200_000,
        gt=0,
        description="In-cluster gateways: frames queued per consumer stream (one stream "
        "carries many subscriptions); past it, the backlog is replaced by fresh windows.",
    )
    audit_interval_s: float = Field(
        5.0,
        gt=0,
        description="How often the gateway checks the registry still holds its subscriptions "
        "(shards drop those of a gateway presumed dead; one that comes back restores them).",
    )
