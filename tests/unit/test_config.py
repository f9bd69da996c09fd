"""`TierSettings`: one root; init > env > flat Redis env names > YAML > defaults, per field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from raycluster.config import TierSettings
from raycluster.errors import ConfigError
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
