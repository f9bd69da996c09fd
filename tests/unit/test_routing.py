"""Routing vectors and HRW properties (docs/architecture.md#routing)."""

from __future__ import annotations

from raycluster.cluster import (
    PARTITIONS,
    ctrl_stream,
    delta_channel,
    event_stream,
    heartbeat_key,
    owned_by,
    owner,
    owns,
    partition_of,
)


def test_partition_vectors() -> None:
    assert partition_of("acme", "asset") == 3
    assert partition_of("acme", "site") == 54
    assert partition_of("rival", "asset") == 15


def test_owner_vectors() -> None:
    live = ["shard-a", "shard-b", "shard-c"]
    assert owner(0, live) == owner(1, live) == "shard-a"
    assert owner(7, live) == "shard-c"
    assert owns("shard-c", 7, live)
    assert owner(0, []) == ""


def test_removing_a_shard_moves_only_its_partitions() -> None:
    live = [f"s{i}" for i in range(5)]
    before = {p: owner(p, live) for p in range(PARTITIONS)}
    after = {p: owner(p, live[:-1]) for p in range(PARTITIONS)}
    moved = {p for p in before if before[p] != after[p]}
    assert moved == set(owned_by("s4", live))


def test_adding_a_shard_moves_partitions_only_to_it() -> None:
    live = [f"s{i}" for i in range(4)]
    before = {p: owner(p, live) for p in range(PARTITIONS)}
    after = {p: owner(p, [*live, "new"]) for p in range(PARTITIONS)}
    assert all(after[p] == "new" for p in before if before[p] != after[p])
    assert any(after[p] == "new" for p in after)


def test_key_names() -> None:
    assert event_stream(3) == "lq:events:3"
    assert ctrl_stream("shard-a") == "lq:ctrl:shard-a"
    assert delta_channel("gw-1") == "lq:delta:gw-1"
    assert heartbeat_key("shard-a") == "lq:shard:shard-a"
