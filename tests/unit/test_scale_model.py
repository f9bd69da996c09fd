"""The capacity model of `benchmarks/bench_scale.py`: counts follow the binding resource."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import pytest
from _scale_model import GIB, Assumptions, Inputs, at_rate, plan, predict_check

MB = 1e6

# Flat curves (the same cost at every rate) keep the arithmetic checkable by hand.
INPUTS = Inputs(
    shard_bytes_own=10_000,
    shard_bytes_shared=2_000,
    shard_base_bytes=100 * MB,
    shard_idle_cores=0.0,
    shard_live=[(1_000, 30e-6), (10_000, 30e-6)],
    shard_cpu_per_fanout_frame=5e-6,
    shard_drain_cpu_per_change=25e-6,
    shard_cpu_per_subscribe=1e-3,
    shard_subscribes_per_s=500,
    gateway_bytes_per_sub=5_000,
    gateway_base_bytes=100 * MB,
    gateway_idle_cores=0.0,
    gateway_live=[(1_000, 10e-6)],
    gateway_cpu_per_subscribe=1e-3,
    redis_bytes_per_registration=1_000,
    redis_bytes_per_row=500,
    redis_bytes_per_event=100,
    redis_live=[(1_000, 17e-6)],
    redis_cpu_per_frame=2e-6,
    redis_cpu_per_subscribe=0.2e-3,
)


def test_cost_is_read_off_the_curve_in_log_rate_and_flat_outside() -> None:
    curve = [(100.0, 100e-6), (10_000.0, 20e-6)]
    assert at_rate(curve, 10) == 100e-6
    assert at_rate(curve, 1_000) == pytest.approx(60e-6)  # halfway in log(rate)
    assert at_rate(curve, 1e6) == 20e-6


def test_low_rate_is_sized_by_memory_and_the_minimum() -> None:
    p = plan(INPUTS, Assumptions(subs=1_000_000, changes_per_s=1_000, rows=1_000_000))
    # 1M x 10 KB = 10 GB over (8 GiB x 0.7 - 100 MB) per shard: 2 shards (memory), not CPU.
    assert (p.shards, p.shards_by) == (2, "memory")
    assert p.gateways == 1
    assert p.redis_masters == 1
    assert p.frames_per_s == 1_000


def test_high_rate_is_sized_by_cpu_with_headroom() -> None:
    p = plan(INPUTS, Assumptions(changes_per_s=100_000, fanout=1, cpu_headroom=0.5))
    # 100k x 30 us = 3 cores of shard work at half a core each: 6 shards.
    assert (p.shards, p.shards_by) == (6, "cpu")
    # 100k frames x 10 us = 1 core of gateway work: 2 gateways.
    assert (p.gateways, p.gateways_by) == (2, "cpu")
    # 100k x 17 us = 1.7 Redis cores: 4 masters at half a core.
    assert (p.redis_masters, p.redis_by) == (4, "cpu")
    assert p.resubscribe_s == 1_000_000 / (6 * 500)


def test_fanout_adds_frames_at_the_fanout_cost() -> None:
    p = plan(INPUTS, Assumptions(changes_per_s=10_000, fanout=11))
    # 10k x (30 + 10 x 5) us = 0.8 cores: 2 shards; 110k frames x 10 us = 1.1 cores: 3 gateways.
    assert p.shard_cpu_cores == pytest.approx(0.8)
    assert (p.gateways, p.gateways_by) == (3, "cpu")


def test_shared_views_need_less_shard_memory() -> None:
    own = plan(INPUTS, Assumptions(changes_per_s=1_000))
    shared = plan(INPUTS, Assumptions(changes_per_s=1_000, shared_fraction=0.9))
    assert shared.shard_mem_gib < own.shard_mem_gib
    assert own.shard_mem_gib * GIB == pytest.approx(1_000_000 * 10_000 + own.shards * 100 * MB)


def test_idle_cost_takes_from_the_headroom() -> None:
    busy = replace(INPUTS, shard_idle_cores=0.25)
    p = plan(busy, Assumptions(changes_per_s=100_000, cpu_headroom=0.5))
    assert p.shards == 12  # 3 cores of work, a quarter core left per shard


def test_check_prediction_is_bound_by_the_busiest_shard_or_the_machine() -> None:
    pred = predict_check(
        INPUTS,
        subs_per_shard=[3_000, 1_000],
        subs_per_gateway=[2_000, 2_000],
        rows=8_000,
        changes_per_s=1_000,
        changes_share=[0.75, 0.25],
        cores=2,
    )
    # CPU: 4,000 x (1 + 1 + 0.2) ms = 8.8 s over 2 cores = 4.4 s < 3,000 / 500 = 6 s.
    assert pred["subscribe_s"] == 6.0
    assert pred["shard0_mb"] == 30.0
    assert pred["shard0_cpu"] == pytest.approx(1_000 * 0.75 * 30e-6)
    assert pred["gateway1_cpu"] == pytest.approx(500 * 10e-6)
    assert pred["redis_rows_mb"] == 4.0
