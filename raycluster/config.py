"""Tier settings: one pydantic-settings root, loadable from YAML, env overrides on top.

`TierSettings.load("configs/tier.yaml")` reads the file, then lets the
environment (`RAYCLUSTER_*`; nested fields with `__`, e.g.
`RAYCLUSTER_SHARD__OWNERSHIP_INTERVAL_S`) override it. The Redis section is
`RedisSettings` (`RAYCLUSTER_REDIS_URL`, `RAYCLUSTER_HEARTBEAT_TTL_S`, …).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from raycluster.cluster.gateway import GatewayOptions
from raycluster.cluster.shard import ShardOptions
from raycluster.edge.settings import EdgeSettings
from raycluster.errors import InvalidQuery
from raycluster.livequery import EntitySpec, QueryLimits
from raycluster.redis.settings import RedisSettings

__all__ = ("HEAD_NODE", "TierSettings")

# Ray gives the head node one unit of this resource: asking for a sliver of it
# places an actor on the head (as the Ray docs recommend for driver-side actors).
HEAD_NODE = {"node:__internal_head__": 0.001}


class TierSettings(BaseSettings):
    """Everything a tier needs: Ray placement, Redis, loop cadences, entities."""

    model_config = SettingsConfigDict(
        env_prefix="RAYCLUSTER_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    name: str = Field("raycluster", min_length=1, description="Actor-name prefix of the tier.")
    namespace: str = Field("raycluster", min_length=1, description="Ray namespace.")
    shards: int = Field(3, ge=0, description="Desired number of shard actors.")
    gateways: int = Field(
        2,
        ge=0,
        description="In-cluster gateway actors (0 CPUs each). With two or more, a driver "
        "whose gateway dies moves its subscriptions to another at once.",
    )
    shard_num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per shard actor.")
    shard_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom resources per shard (e.g. {shard_slot: 1}) so the autoscaler "
        "adds nodes for pending shards.",
    )
    gateway_num_cpus: float = Field(0.0, ge=0, description="CPUs reserved per gateway actor.")
    controller_resources: dict[str, float] = Field(
        default_factory=lambda: dict(HEAD_NODE),
        description="Ray resources the controller asks for: where it runs. The default pins "
        "it to the head node (Ray gives the head `node:__internal_head__`), whose loss ends "
        "the cluster anyway; {} lets Ray place it anywhere; a custom resource (e.g. "
        "{control: 0.01}) places it on the nodes started with that resource, and Ray "
        "restarts it on another of them when its node is lost.",
    )
    gateway_resources: dict[str, float] = Field(
        default_factory=lambda: dict(HEAD_NODE),
        description="Ray resources each in-cluster gateway asks for (as "
        "`controller_resources`). Gateways are spread over the nodes that have them.",
    )
    spread_shards: bool = Field(
        True,
        description="Place shards with Ray's SPREAD strategy (over as many nodes as have "
        "room), so one node's loss takes as few shards as possible.",
    )
    gateway_transport: Literal["ray", "redis"] = Field(
        "ray",
        description="How shards reach in-cluster gateway actors: 'ray' (batches by actor "
        "calls; a delta several gateways need is put once) or 'redis' (the gateway's "
        "`lq:delta:{id}` stream, as external gateways; fewer Ray calls, lower latency on "
        "small machines).",
    )
    redis: RedisSettings = Field(default_factory=RedisSettings)
    shard: ShardOptions = Field(default_factory=ShardOptions)
    gateway: GatewayOptions = Field(default_factory=GatewayOptions)
    edge: EdgeSettings = Field(default_factory=EdgeSettings)
    limits: QueryLimits = Field(
        default_factory=QueryLimits, description="What one query may cost (see QueryLimits)."
    )
    entities: list[EntitySpec] = Field(
        default_factory=list, description="Declared entities (empty: any entity, unchecked)."
    )
    metrics_interval_s: float = Field(2.0, gt=0, description="Metrics export period.")

    @model_validator(mode="after")
    def _check(self) -> TierSettings:
        if self.shard.heartbeat_interval_s >= self.redis.heartbeat_ttl_s:
            raise InvalidQuery(
                "shard.heartbeat_interval_s",
                self.shard.heartbeat_interval_s,
                f"must be below redis.heartbeat_ttl_s ({self.redis.heartbeat_ttl_s})",
            )
        return self

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> TierSettings:
        """Settings from a YAML file (optional), the environment on top, then `overrides`."""
        data: dict[str, Any] = {}
        if path is not None:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
            if not isinstance(loaded, dict):
                raise InvalidQuery("config", str(path), "must be a YAML mapping")
            data = loaded
        env = cls()
        env_set = env.model_dump(include=env.model_fields_set)
        redis_env = RedisSettings()
        redis_set = redis_env.model_dump(include=redis_env.model_fields_set)
        merged = {**data, **env_set, **overrides}
        redis = {**(data.get("redis") or {}), **redis_set, **(overrides.get("redis") or {})}
        merged["redis"] = redis
        return cls.model_validate(merged)
