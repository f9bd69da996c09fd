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

import json
import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from raycluster._section import SECTION_CONFIG, Section
from raycluster.cluster.options import GatewayOptions, ShardOptions
from raycluster.cluster.routing import PARTITIONS
from raycluster.errors import ConfigError, InvalidArgument
from raycluster.livequery import EntitySpec, QueryLimits
from raycluster.postgres.settings import PostgresSettings
from raycluster.redis.settings import ENV_PREFIX, RedisSettings, redis_env

__all__ = (
    "HEAD_NODE",
    "MAX_GATEWAYS",
    "MAX_SHARDS",
    "EdgeSettings",
    "TierSettings",
    "check_shard_count",
    "unknown_env_names",
)

# Ray gives the head node one unit of this resource: asking for a sliver of it
# places an actor on the head (as the Ray docs recommend for driver-side actors).
HEAD_NODE = {"node:__internal_head__": 0.001}

# A shard beyond the 256th could own no partition; the bound also keeps a typo
# (`shards: 100000`) from asking the controller for that many actors.
MAX_SHARDS = PARTITIONS
MAX_GATEWAYS = 64  # in-cluster gateway actors; one per node is plenty
# Ray counts resources in units of 1/10000 (a smaller non-zero amount is refused).
RESOURCE_PRECISION = 0.0001
# Environment names with the prefix that are not settings (read by the command line).
OTHER_ENV_NAMES = frozenset({"RAYCLUSTER_CONFIG"})


def check_shard_count(n: object, field: str = "shards") -> int:
    """`n` if it is a shard count a tier can run: an int (not a bool) from 0 to
    `MAX_SHARDS`; `InvalidArgument` naming `field` otherwise (`tier.scale(2.5)`)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise InvalidArgument(field, n, f"must be a whole number (an int), not {type(n).__name__}")
    if not 0 <= n <= MAX_SHARDS:
        raise InvalidArgument(field, n, f"must be from 0 to {MAX_SHARDS}")
    return n


_YAML_PATH: ContextVar[Path | None] = ContextVar("raycluster_yaml_path", default=None)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in the YAML file `path`; `ConfigError` naming the file (and line) if it is not.

    `OSError` when the file cannot be read.
    """
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(str(path), f"not UTF-8 text ({e.reason} at line {line})") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        if isinstance(e, yaml.reader.ReaderError):  # a character YAML refuses (a NUL, …)
            where = f" at line {text.count(chr(10), 0, e.position) + 1}"
        problem = getattr(e, "problem", None) or getattr(e, "reason", None) or type(e).__name__
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


# Settings whose value is a mapping taken whole from the first source that sets it:
# pydantic-settings merges dicts key by key across sources, so a resource map or a
# token table given in code or the environment would otherwise keep the YAML's keys.
WHOLE_MAPPINGS: tuple[tuple[str, ...], ...] = (
    ("shard_resources",),
    ("controller_resources",),
    ("gateway_resources",),
    ("ingester_resources",),
    ("edge", "tokens"),
)


def _paths(data: dict[str, Any]) -> set[tuple[str, ...]]:
    """Which of `WHOLE_MAPPINGS` `data` sets."""
    found = set()
    for path in WHOLE_MAPPINGS:
        node: Any = data
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            found.add(path)
    return found


def _without(data: dict[str, Any], paths: set[tuple[str, ...]]) -> dict[str, Any]:
    """`data` without the settings at `paths` (copied where changed)."""
    out = dict(data)
    for *parents, last in paths:
        node = out
        for part in parents:
            if not isinstance(node.get(part), dict):
                break
            node[part] = node = dict(node[part])
        else:
            node.pop(last, None)
    return out


class _Whole(_MappingSource):
    """`inner`, less the `WHOLE_MAPPINGS` a source of higher priority (`above`) sets."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        inner: PydanticBaseSettingsSource,
        above: tuple[PydanticBaseSettingsSource, ...],
    ) -> None:
        super().__init__(settings_cls)
        self.inner = inner
        self.above = above

    def __call__(self) -> dict[str, Any]:
        data = self.inner()
        taken = set().union(*(_paths(a()) for a in self.above))
        return _without(data, taken) if taken & _paths(data) else data


class _EnvNames(_MappingSource):
    """Contributes nothing; refuses a `RAYCLUSTER_*` variable that names no setting."""

    def __call__(self) -> dict[str, Any]:
        unknown = unknown_env_names()
        if unknown:
            raise ConfigError(
                None,
                f"{', '.join(unknown)}: not a setting (a typo?): the names are "
                "RAYCLUSTER_<FIELD>, RAYCLUSTER_<SECTION>__<FIELD> and the flat Redis names "
                "(docs/configuration.md)",
            )
        return {}


def unknown_env_names(environ: dict[str, str] | None = None) -> list[str]:
    """The `RAYCLUSTER_*` variables (any case) that name no setting, sorted.

    Known: `RAYCLUSTER_<FIELD>` for a field of `TierSettings` or of the Redis
    section, `RAYCLUSTER_<FIELD>__…` for a field of `TierSettings` (the
    section then refuses an unknown key itself), and `OTHER_ENV_NAMES`.
    """
    env = os.environ if environ is None else environ
    prefix = ENV_PREFIX.lower()
    fields = {f.lower() for f in TierSettings.model_fields}
    flat = {f.lower() for f in RedisSettings.model_fields}
    other = {n.lower() for n in OTHER_ENV_NAMES}
    unknown = []
    for name in env:
        low = name.lower()
        if not low.startswith(prefix) or low in other:
            continue
        rest = low[len(prefix) :]
        head, nested, _ = rest.partition("__")
        if not (head in fields if nested else rest in fields | flat):
            unknown.append(name)
    return sorted(unknown)


def _env_error(e: SettingsError) -> ConfigError:
    """`SettingsError` (an environment value that is not JSON) as a `ConfigError` naming it."""
    m = re.search(r'field "([^"]+)"', str(e))
    field = m.group(1).lower() if m else ""
    names = sorted(
        n for n in os.environ if n.lower().startswith((ENV_PREFIX + field).lower()) and field
    )
    bad = [n for n in names if not _is_json(os.environ[n])] or names
    cause = e.__cause__
    why = f"not valid JSON ({cause})" if isinstance(cause, json.JSONDecodeError) else str(e)
    return ConfigError(None, f"{', '.join(bad) or 'a variable'}: {why}")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _check_resources(resources: dict[str, float]) -> dict[str, float]:
    """Ray resources an actor asks for: named, not CPU/GPU (their own fields), not below
    Ray's precision; `ValueError` naming the entry otherwise."""
    for name, amount in resources.items():
        if not name.strip():
            raise ValueError("a resource name must not be empty")
        if name in ("CPU", "GPU"):
            raise ValueError(f"{name}: not a custom resource (CPUs are the *_num_cpus fields)")
        if amount < 0:
            raise ValueError(f"{name}: must be 0 or more (got {amount:g})")
        if 0 < amount < RESOURCE_PRECISION:
            raise ValueError(
                f"{name}: Ray counts resources in units of {RESOURCE_PRECISION:g} (got {amount:g})"
            )
    return resources


class EdgeSettings(Section):
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
        **SECTION_CONFIG, env_prefix=ENV_PREFIX, env_nested_delimiter="__"
    )

    name: str = Field("raycluster", min_length=1, description="Actor-name prefix of the tier.")
    namespace: str = Field("raycluster", min_length=1, description="Ray namespace.")
    shards: int = Field(
        3,
        ge=0,
        le=MAX_SHARDS,
        description=f"Desired number of shard actors (at most {MAX_SHARDS}, the partitions: a "
        "shard beyond them would own none).",
    )
    gateways: int = Field(
        2,
        ge=0,
        le=MAX_GATEWAYS,
        description="In-cluster gateway actors (0 CPUs each). With two or more, a driver "
        f"whose gateway dies moves its subscriptions to another at once. At most {MAX_GATEWAYS}.",
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

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except SettingsError as e:
            raise _env_error(e) from e

    @field_validator("shards", "gateways", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"must be a whole number, not {value}")
        return value

    @field_validator(
        "shard_resources", "controller_resources", "gateway_resources", "ingester_resources"
    )
    @classmethod
    def _resources(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        return _check_resources(value) if value is not None else None

    @model_validator(mode="after")
    def _check(self) -> TierSettings:
        ttl = self.redis.heartbeat_ttl_s
        for section in ("shard", "gateway"):
            interval = getattr(self, section).heartbeat_interval_s
            if interval >= ttl:
                raise ValueError(
                    f"{section}.heartbeat_interval_s: must be below redis.heartbeat_ttl_s "
                    f"({ttl:g}), or a live {section} expires between two heartbeats "
                    f"(got {interval:g})"
                )
        seen: set[str] = set()
        for i, entity in enumerate(self.entities):
            if entity.name in seen:
                raise ValueError(f"entities.{i}.name: {entity.name!r} is declared twice")
            seen.add(entity.name)
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
        """init > env (`__` nesting) > flat Redis env names > YAML > defaults, per field
        (a `WHOLE_MAPPINGS` field from the first source that sets it, never merged); first,
        a `RAYCLUSTER_*` variable that names no setting is refused."""
        ordered = (init_settings, env_settings, _RedisFlatEnv(settings_cls),
                   _YamlSource(settings_cls))  # fmt: skip
        whole = tuple(
            _Whole(settings_cls, src, ordered[:k]) if k else src for k, src in enumerate(ordered)
        )
        return (_EnvNames(settings_cls), *whole)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> TierSettings:
        """Settings from `overrides`, the environment and the YAML file `path` (optional).

        Precedence is per field, nested fields included (module docstring).
        Raises `OSError` if the file cannot be read, `ConfigError` if it is
        not a UTF-8 YAML mapping (naming the file) or if a `RAYCLUSTER_*`
        variable names no setting or holds bad JSON (naming the variable),
        pydantic's `ValidationError` for a bad value or an unknown key.
        """
        token = _YAML_PATH.set(Path(path) if path is not None else None)
        try:
            return cls(**overrides)
        finally:
            _YAML_PATH.reset(token)
