"""Tier settings: one pydantic-settings root over init kwargs, the environment and YAML.

`TierSettings.load("configs/tier.yaml", shards=5)` takes each field, nested
fields one by one, from the first source that sets it:

1. keyword arguments (`load(**overrides)`, `TierSettings(...)`);
2. the environment, `RAYCLUSTER_<FIELD>`, nested with `__`
   (`RAYCLUSTER_SHARD__OWNERSHIP_INTERVAL_S=2`, `RAYCLUSTER_REDIS__REDIS_URL`);
3. the flat names of the Redis section, `RAYCLUSTER_<REDIS FIELD>`
   (`RAYCLUSTER_REDIS_URL`, `RAYCLUSTER_HEARTBEAT_TTL_S`, …; the documented
   names, below the nested ones when both are set);
4. the YAML file;
5. the defaults.

So `shard: {cushion: 16}` in the file and `RAYCLUSTER_SHARD__OWNERSHIP_INTERVAL_S=2`
in the environment give cushion 16 and ownership_interval_s 2.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from raycluster.cluster.options import GatewayOptions, ShardOptions
from raycluster.errors import ConfigError, InvalidQuery
from raycluster.livequery import EntitySpec, QueryLimits
from raycluster.postgres.settings import PostgresSettings
from raycluster.redis.settings import ENV_PREFIX, RedisSettings, redis_env

__all__ = ("HEAD_NODE", "EdgeSettings", "TierSettings")

# Ray gives the head node one unit of this resource: asking for a sliver of it
# places an actor on the head (as the Ray docs recommend for driver-side actors).
HEAD_NODE = {"node:__internal_head__": 0.001}


_YAML_PATH: ContextVar[Path | None] = ContextVar("raycluster_yaml_path", default=None)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in the YAML file `path`; `ConfigError` naming the file (and line) if it is not.

    `OSError` when the file cannot be read.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(str(path), f"not valid YAML: {problem}{where}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), f"must be a YAML mapping, not a {type(data).__name__}")
    return data


class _MappingSource(PydanticBaseSettingsSource):
    """A source whose `__call__` returns its whole mapping at once (no per-field lookup)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False


class _YamlSource(_MappingSource):
    """The YAML file `TierSettings.load` was given (none: contributes nothing)."""

    def __call__(self) -> dict[str, Any]:
        path = _YAML_PATH.get()
        return read_yaml(path) if path is not None else {}


class _RedisFlatEnv(_MappingSource):
    """The Redis section's flat environment names (`RAYCLUSTER_REDIS_URL`, …)."""

    def __call__(self) -> dict[str, Any]:
        found = redis_env()
        return {"redis": found} if found else {}


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


class TierSettings(BaseSettings):
    """Everything a tier needs: Ray placement, Redis, loop cadences, entities."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
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
    ingester_num_cpus: float = Field(
        0.0,
        ge=0,
        description="CPUs the Postgres ingester actor reserves (with a `postgres:` section).",
    )
    ingester_resources: dict[str, float] | None = Field(
        None,
        description="Ray resources the Postgres ingester actor asks for (as "
        "`controller_resources`); None: the controller's, so it runs beside the controller.",
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
    postgres: PostgresSettings | None = Field(
        None,
        description="A Postgres source: the tables of a publication whose rows the tier "
        "carries (docs/postgres.md). None: no source.",
    )
    metrics_interval_s: float = Field(2.0, gt=0, description="Metrics export period.")
    start_timeout_s: float = Field(
        120.0,
        gt=0,
        description="How long `Tier.start`, `tier.scale` and `raycluster serve` wait for every "
        "shard and gateway to be placed and ready; past it they stop what they started and "
        "raise an error naming the resources missing.",
    )

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
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """init > env (`__` nesting) > flat Redis env names > YAML > defaults, per field."""
        return (
            init_settings,
            env_settings,
            _RedisFlatEnv(settings_cls),
            _YamlSource(settings_cls),
        )

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> TierSettings:
        """Settings from `overrides`, the environment and the YAML file `path` (optional).

        Precedence is per field, nested fields included (module docstring).
        Raises `OSError` if the file cannot be read, `ConfigError` (naming the
        file) if it is not a YAML mapping, pydantic's `ValidationError` for a
        bad value.
        """
        token = _YAML_PATH.set(Path(path) if path is not None else None)
        try:
            return cls(**overrides)
        finally:
            _YAML_PATH.reset(token)
