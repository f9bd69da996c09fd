"""`TierSettings`: one root; init > env > flat Redis env names > YAML > defaults, per field."""

from __future__ import annotations

import math
import os
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from raycluster._section import Section
from raycluster.config import (
    MAX_GATEWAYS,
    MAX_SHARDS,
    TierSettings,
    check_shard_count,
    unknown_env_names,
)
from raycluster.errors import ConfigError, InvalidArgument
from raycluster.redis import RedisSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.upper().startswith("RAYCLUSTER_"):
            monkeypatch.delenv(k)


@pytest.fixture
def yaml_file(tmp_path: Path) -> Path:
    path = tmp_path / "tier.yaml"
    path.write_text(
        "shards: 7\n"
        "shard: {cushion: 16, ownership_interval_s: 0.4}\n"
        "redis: {heartbeat_ttl_s: 4, key_prefix: fromyaml}\n"
        "edge: {port: 9000, tokens: {t: acme}}\n"
    )
    return path


def test_env_overrides_one_nested_field_and_keeps_the_yaml_siblings(
    yaml_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAYCLUSTER_SHARD__OWNERSHIP_INTERVAL_S", "2")
    s = TierSettings.load(yaml_file)
    assert s.shard.ownership_interval_s == 2.0
    assert s.shard.cushion == 16  # the issue: an env override replaced the whole section
    assert s.shards == 7
    assert s.edge.port == 9000 and s.edge.tokens == {"t": "acme"}


def test_a_mapping_setting_is_taken_whole_from_the_first_source_that_sets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tier.yaml"
    path.write_text(
        "gateway_resources: {node:__internal_head__: 0.001}\n"
        "shard_resources: {shard_slot: 1}\n"
        "edge: {port: 9000, tokens: {old: acme}}\n"
    )
    monkeypatch.setenv("RAYCLUSTER_EDGE__TOKENS", '{"new": "rival"}')
    s = TierSettings.load(path, gateway_resources={"rc_gateway": 0.01})
    assert s.gateway_resources == {"rc_gateway": 0.01}  # replaced, not merged with the YAML's
    assert s.edge.tokens == {"new": "rival"}
    assert s.edge.port == 9000  # the section's other fields still come from the YAML
    assert s.shard_resources == {"shard_slot": 1.0}  # set by no other source: the YAML's


def test_precedence_init_over_env_over_yaml_over_defaults(
    yaml_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defaults = TierSettings()
    monkeypatch.setenv("RAYCLUSTER_SHARDS", "5")
    monkeypatch.setenv("RAYCLUSTER_SHARD__CUSHION", "12")
    monkeypatch.setenv("RAYCLUSTER_EDGE__PORT", "9100")
    s = TierSettings.load(yaml_file, shards=2, shard={"cushion": 3})
    assert s.shards == 2  # init > env > yaml
    assert s.shard.cushion == 3  # init > env > yaml, nested
    assert s.shard.ownership_interval_s == 0.4  # yaml, its init/env siblings notwithstanding
    assert s.edge.port == 9100  # env > yaml
    assert s.edge.tokens == {"t": "acme"}  # yaml
    assert s.shard.flush_interval_ms == defaults.shard.flush_interval_ms  # defaults
    assert s.gateways == defaults.gateways
    # Without the file: env over defaults.
    s = TierSettings.load()
    assert (s.shards, s.shard.cushion) == (5, 12)


def test_documented_flat_redis_names(yaml_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYCLUSTER_REDIS_URL", "redis://flat:1/0")
    monkeypatch.setenv("RAYCLUSTER_HEARTBEAT_TTL_S", "6")
    s = TierSettings.load(yaml_file)
    assert s.redis.redis_url == "redis://flat:1/0"
    assert s.redis.heartbeat_ttl_s == 6.0  # env > yaml
    assert s.redis.key_prefix == "fromyaml"  # the section's other fields stay
    # The nested name wins over the flat one; init wins over both.
    monkeypatch.setenv("RAYCLUSTER_REDIS__HEARTBEAT_TTL_S", "7")
    assert TierSettings.load(yaml_file).redis.heartbeat_ttl_s == 7.0
    s = TierSettings.load(yaml_file, redis={"heartbeat_ttl_s": 8})
    assert s.redis.heartbeat_ttl_s == 8.0 and s.redis.redis_url == "redis://flat:1/0"
    # The Redis layer on its own: the same flat names, explicit values over them.
    assert RedisSettings.from_env().redis_url == "redis://flat:1/0"
    assert RedisSettings.from_env(redis_url="redis://x:2/0").redis_url == "redis://x:2/0"
    assert RedisSettings().redis_url is None  # a plain model: no environment


def test_json_env_value_and_roundtrip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYCLUSTER_SHARD_RESOURCES", '{"shard_slot": 1}')
    s = TierSettings.load()
    assert s.shard_resources == {"shard_slot": 1.0}
    monkeypatch.setenv("RAYCLUSTER_SHARDS", "9")
    # What actors receive is exactly the driver's settings: no environment re-read.
    assert TierSettings.model_validate_json(s.model_dump_json()) == s


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("shards: 3\nshard: [1\n")
    with pytest.raises(ConfigError, match=rf"config {bad}: not valid YAML: .* at line 3"):
        TierSettings.load(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=rf"config {listed}: must be a YAML mapping, not a list"):
        TierSettings.load(listed)
    with pytest.raises(FileNotFoundError):
        TierSettings.load(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert TierSettings.load(empty) == TierSettings()


def test_bad_values_name_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("redis: {heartbeat_tl_s: 3}\n")
    with pytest.raises(ValidationError, match=r"redis\.heartbeat_tl_s"):
        TierSettings.load(typo)
    monkeypatch.setenv("RAYCLUSTER_SHARDS", "many")
    with pytest.raises(ValidationError, match="shards"):
        TierSettings.load()


def test_repo_config_loads() -> None:
    s = TierSettings.load(ROOT / "configs" / "tier.yaml")
    assert s.shard.cushion == 8 and s.entities


# -- every section refuses nonsense, naming the field (issue 17, items 4 and 5) ---------------


def _models_under(model: type[BaseModel]) -> set[type[BaseModel]]:
    """Every model class reachable from `model`'s fields (through lists, dicts, unions)."""
    found: set[type[BaseModel]] = set()

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp not in found:
                found.add(tp)
                for f in tp.model_fields.values():
                    visit(f.annotation)
            return
        for arg in typing.get_args(tp):
            visit(arg)

    for f in model.model_fields.values():
        visit(f.annotation)
    return found


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _has_float(model: type[BaseModel]) -> bool:
    def floats(tp: Any) -> bool:
        return tp is float or any(floats(a) for a in typing.get_args(tp))

    return any(floats(f.annotation) for f in model.model_fields.values())


def test_every_section_forbids_unknown_keys_and_non_finite_numbers() -> None:
    """Whatever module defines a section (a new one included), the same rules hold."""
    # A section: a field holding a model (or an optional one); `entities` is a list.
    sections = {
        name: [tp for tp in [f.annotation, *typing.get_args(f.annotation)] if _is_model(tp)]
        for name, f in TierSettings.model_fields.items()
        if typing.get_origin(f.annotation) is not list
    }
    sections = {name: models for name, models in sections.items() if models}
    assert {"redis", "shard", "gateway", "edge", "limits"} <= set(sections)
    for name, models in sections.items():
        for tp in models:
            assert issubclass(tp, Section), f"{name}: {tp.__name__} must derive from Section"
    assert TierSettings.model_config.get("extra") == "forbid"
    assert TierSettings.model_config.get("allow_inf_nan") is False
    for m in _models_under(TierSettings):
        assert m.model_config.get("extra") == "forbid", f"{m.__name__} accepts unknown keys"
        if _has_float(m):
            assert m.model_config.get("allow_inf_nan") is False, f"{m.__name__} takes .inf"


@pytest.mark.parametrize(
    ("yaml_text", "where"),
    [
        ("shard: {cushon: 16}\n", "shard.cushon"),
        ("gateway: {bufer: 3}\n", "gateway.bufer"),
        ("edge: {tokns: {a: b}}\n", "edge.tokns"),
        ("redis: {heartbeat_tl_s: 3}\n", "redis.heartbeat_tl_s"),
        ("limits: {max_term: 3}\n", "limits.max_term"),
        ("shardz: 3\n", "shardz"),
    ],
)
def test_an_unknown_key_in_any_section_is_an_error_naming_it(
    tmp_path: Path, yaml_text: str, where: str
) -> None:
    path = tmp_path / "tier.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValidationError) as info:
        TierSettings.load(path)
    err = info.value.errors()[0]
    assert ".".join(map(str, err["loc"])) == where and err["type"] == "extra_forbidden"


def test_unknown_environment_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYCLUSTER_SHARD__CUSHON", "16")  # a key of a section: the section says
    with pytest.raises(ValidationError, match=r"shard\.cushon"):
        TierSettings.load()
    monkeypatch.delenv("RAYCLUSTER_SHARD__CUSHON")
    for name in ("RAYCLUSTER_CUSHION", "raycluster_shardz", "RAYCLUSTER_SHARDZ__X"):
        monkeypatch.setenv(name, "16")
        with pytest.raises(ConfigError, match=rf"^environment: {name}: not a setting"):
            TierSettings.load()
        monkeypatch.delenv(name)
    assert unknown_env_names({"RAYCLUSTER_CUSHION": "1", "PATH": "/bin"}) == ["RAYCLUSTER_CUSHION"]
    # Known: fields, nested fields, the flat Redis names, and the CLI's config path.
    monkeypatch.setenv("RAYCLUSTER_CONFIG", "/nowhere.yaml")
    monkeypatch.setenv("RAYCLUSTER_SHARDS", "4")
    monkeypatch.setenv("RAYCLUSTER_EDGE__TOKENS", '{"t": "acme"}')
    monkeypatch.setenv("RAYCLUSTER_HEARTBEAT_TTL_S", "6")
    s = TierSettings.load()
    assert (s.shards, s.edge.tokens, s.redis.heartbeat_ttl_s) == (4, {"t": "acme"}, 6.0)


def test_bad_json_in_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYCLUSTER_SHARD_RESOURCES", "{shard_slot: 1")
    with pytest.raises(
        ConfigError, match=r"^environment: RAYCLUSTER_SHARD_RESOURCES: not valid JSON"
    ):
        TierSettings.load()


def test_a_config_that_is_not_utf8_names_the_file_and_line(tmp_path: Path) -> None:
    binary = tmp_path / "tier.yaml"
    binary.write_bytes(b"shards: 3\nname: \xff\xfe\n")
    with pytest.raises(ConfigError, match=rf"config {binary}: not UTF-8 text \(.* at line 2\)"):
        TierSettings.load(binary)
    control = tmp_path / "nul.yaml"
    control.write_bytes(b"shards: 3\x00\n")
    with pytest.raises(ConfigError, match=rf"config {control}: not valid YAML: "):
        TierSettings.load(control)


@pytest.mark.parametrize(
    ("overrides", "where", "says"),
    [
        (
            {"gateway": {"heartbeat_interval_s": 6}},
            "",
            "gateway.heartbeat_interval_s: must be below",
        ),
        ({"shard": {"heartbeat_interval_s": 5}}, "", "shard.heartbeat_interval_s: must be below"),
        ({"redis": {"heartbeat_ttl_s": math.inf}}, "redis.heartbeat_ttl_s", "finite"),
        ({"start_timeout_s": math.inf}, "start_timeout_s", "finite"),
        ({"start_timeout_s": math.nan}, "start_timeout_s", "finite"),
        ({"shard": {"flush_interval_ms": math.inf}}, "shard.flush_interval_ms", "finite"),
        ({"shards": 100000000000000000000000}, "shards", "less than or equal to 256"),
        ({"shards": -1}, "shards", "greater than or equal to 0"),
        ({"shards": True}, "shards", "must be a whole number"),
        ({"shards": 2.5}, "shards", "fractional part"),
        ({"gateways": 10_000}, "gateways", f"less than or equal to {MAX_GATEWAYS}"),
        ({"shard_resources": {"CPU": -3}}, "shard_resources", "CPU: not a custom resource"),
        ({"shard_resources": {"slot": -3}}, "shard_resources", "slot: must be 0 or more"),
        ({"gateway_resources": {"slot": 1e-9}}, "gateway_resources", "units of 0.0001"),
        ({"controller_resources": {"slot": math.inf}}, "controller_resources.slot", "finite"),
        (
            {"entities": [{"name": "a", "columns": {"x": "int"}}] * 2},
            "",
            "entities.1.name: 'a' is declared twice",
        ),
        (
            {"redis": {"reconnect_min_s": 3, "reconnect_max_s": 2}},
            "redis",
            "reconnect_min_s (3.0) must not exceed reconnect_max_s (2.0)",
        ),
    ],
)
def test_values_that_cannot_work_are_refused_naming_the_field(
    overrides: dict[str, Any], where: str, says: str
) -> None:
    with pytest.raises(ValidationError) as info:
        TierSettings.load(**overrides)
    err = info.value.errors()[0]
    assert ".".join(map(str, err["loc"])) == where
    assert says in err["msg"], err["msg"]


def test_the_password_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "redis://:S3cretPW_xyz@127.0.0.1:6390/0"
    s = TierSettings.load(redis={"redis_url": url})
    assert s.redis.redis_url == url
    assert "S3cretPW_xyz" not in repr(s) and "S3cretPW_xyz" not in str(s)
    with pytest.raises(ValidationError) as info:
        TierSettings.load(redis={"redis_url": url, "reconnect_min_s": 9})
    assert "S3cretPW_xyz" not in str(info.value)
    monkeypatch.setenv("RAYCLUSTER_REDIS_URL", url)
    with pytest.raises(ValidationError) as info:
        TierSettings.load(shards="many")
    assert "S3cretPW_xyz" not in str(info.value)


def test_check_shard_count() -> None:
    assert check_shard_count(0) == 0 and check_shard_count(MAX_SHARDS) == MAX_SHARDS
    for bad, says in [
        (2.5, "must be a whole number (an int), not float"),
        (2.0, "not float"),
        ("3", "not str"),
        (True, "not bool"),
        (-1, f"must be from 0 to {MAX_SHARDS}"),
        (MAX_SHARDS + 1, f"must be from 0 to {MAX_SHARDS}"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            check_shard_count(bad)
        assert info.value.field == "shards" and says in str(info.value)
