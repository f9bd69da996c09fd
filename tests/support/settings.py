"""Tier settings for tests: fast cadences, so a lost shard shows within seconds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = (
    "ATTEMPT_TIMEOUT_S",
    "HEARTBEAT_INTERVAL_S",
    "HEARTBEAT_TTL_S",
    "OWNERSHIP_INTERVAL_S",
    "fast_tier",
)

# A dead shard is noticed within HEARTBEAT_TTL_S + one ownership interval.
HEARTBEAT_TTL_S = 2.0
HEARTBEAT_INTERVAL_S = 0.4
OWNERSHIP_INTERVAL_S = 0.2
ATTEMPT_TIMEOUT_S = 1.0


def fast_tier(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """`TierSettings` fields (for `TierSettings.load(**...)` or a YAML file): the fast
    cadences, then each layer over them; a section given as a dict (`redis`, `shard`,
    ...) is merged key by key into the same section below it."""
    out: dict[str, Any] = {
        "redis": {"heartbeat_ttl_s": HEARTBEAT_TTL_S},
        "shard": {
            "heartbeat_interval_s": HEARTBEAT_INTERVAL_S,
            "ownership_interval_s": OWNERSHIP_INTERVAL_S,
        },
        "gateway": {"attempt_timeout_s": ATTEMPT_TIMEOUT_S},
    }
    for layer in layers:
        for key, value in layer.items():
            below = out.get(key)
            if isinstance(value, Mapping) and isinstance(below, dict):
                out[key] = {**below, **value}
            else:
                out[key] = value
    return out
