"""The control plane: a stateless controller, bounded start, stop that leaves nothing.

The controller's only state (desired count, shard ids) is in Redis; a start
that cannot place its shards fails within `start_timeout_s` naming the
missing resources and leaves nothing behind; `stop` (the method, the CLI and
SIGTERM of `serve`) leaves no actor running or heartbeating.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import ray
import redis.asyncio as aioredis
import yaml
from ray_helpers import actor_exists, running_tier, tier_settings, wait_converged
from support import free_port, unique, wait_for

from raycluster.actors import StartProgress, Tier, controller_name, gateway_name, shard_name
from raycluster.actors.controller import gateway_ids
from raycluster.cli import main
from raycluster.cluster.keys import Keys
from raycluster.config import TierSettings
from raycluster.errors import NotReadyError

SESSION_CPUS = 4.0  # tests/ray/conftest.py


async def _leftovers(settings: TierSettings, url: str, max_shards: int = 4) -> list[str]:
    """Every actor of the tier still registered by name, and every heartbeat or state key."""
    ns, name = settings.namespace, settings.name
    names = [controller_name(name)]
    names += [shard_name(name, f"shard-{i}") for i in range(max_shards)]
    names += [gateway_name(name, g) for g in gateway_ids(max(settings.gateways, 2))]
    left = [n for n in names if await asyncio.to_thread(actor_exists, n, ns)]
    keys = Keys(settings.redis.key_prefix)
    r = aioredis.from_url(url)
    try:
        for pattern in (
            keys.heartbeat_key("*"),
            keys.gateway_heartbeat("*"),
            f"{keys.prefix}:tier:*",
        ):
            left += [k.decode() async for k in r.scan_iter(match=pattern)]
        for zset in (keys.members(), keys.gateways()):
            left += [f"{zset} {m.decode()}" for m in await r.zrange(zset, 0, -1)]
    finally:
        await r.aclose()
    return left


async def test_restarted_controller_keeps_the_scale_and_stops_shards_above_it(
    ray_namespace: str, redis_server: Any
) -> None:
    settings = tier_settings(unique("ctl"), ray_namespace, shards=3, gateways=1)
    url = redis_server.url
    keys = Keys(settings.redis.key_prefix)
    tier = await asyncio.to_thread(Tier.start, settings, redis_url=url)
    try:
        await wait_converged(tier, 3)
        await asyncio.to_thread(tier.scale, 2)
        await wait_converged(tier, 2)
        assert not await asyncio.to_thread(
            actor_exists, shard_name(settings.name, "shard-2"), ray_namespace
        )

        # A crash: Ray restarts the controller, which reads the count from Redis
        # before its first reconcile (it used to re-create shard-2 from its settings).
        first_pid = await tier.controller.pid.remote()
        await asyncio.to_thread(ray.kill, tier.controller, no_restart=False)

        async def adopted() -> bool:
            try:
                if await tier.controller.pid.remote() == first_pid:
                    return False  # the kill has not landed yet
                p = await tier.controller.progress.remote()
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                return False  # restarting
            return bool(
                p["desired"] == 2 and sorted(p["live"]) == ["ray-gw-0", "shard-0", "shard-1"]
            )

        await wait_for(adopted, 60, what="the restarted controller to adopt two shards")
        assert not await asyncio.to_thread(
            actor_exists, shard_name(settings.name, "shard-2"), ray_namespace
        )
        await wait_converged(tier, 2)

        # Killed for good while Redis says 1 (e.g. mid-scale): the next start (what a
        # restarted `serve` does) takes the count from Redis and stops shard-1.
        await asyncio.to_thread(ray.kill, tier.controller)
        r = aioredis.from_url(url)
        try:
            await r.set(keys.tier_shard_count(settings.name), 1)
            tier = await asyncio.to_thread(Tier.start, settings, redis_url=url)
            assert not await asyncio.to_thread(
                actor_exists, shard_name(settings.name, "shard-1"), ray_namespace
            )
            assert await r.exists(keys.heartbeat_key("shard-1")) == 0
            assert await r.smembers(keys.tier_shard_ids(settings.name)) == {b"shard-0"}
        finally:
            await r.aclose()
        st = await wait_converged(tier, 1)
        assert st["desired_shards"] == 1
    finally:
        await asyncio.to_thread(tier.stop)
    assert await _leftovers(settings, url) == []


async def test_too_small_cluster_fails_within_its_bound_naming_the_missing_resources(
    ray_namespace: str, redis_server: Any
) -> None:
    settings = tier_settings(
        unique("small"), ray_namespace, shards=2, shard_num_cpus=64,
        shard_resources={"shard_slot": 1}, start_timeout_s=15, gateways=1,
    )  # fmt: skip
    seen: list[StartProgress] = []
    with pytest.raises(NotReadyError) as info:
        await asyncio.to_thread(
            Tier.start, settings, redis_url=redis_server.url, on_progress=seen.append
        )
    e = info.value
    assert e.pending == {
        "shard-0": {"CPU": 64.0, "shard_slot": 1.0},
        "shard-1": {"CPU": 64.0, "shard_slot": 1.0},
    }
    assert e.missing["shard_slot"] == 2.0  # none in the cluster
    assert e.missing["CPU"] >= 128.0 - SESSION_CPUS
    assert e.total == {"CPU": SESSION_CPUS, "shard_slot": 0.0}
    text = str(e)
    assert text.startswith(f"tier {settings.name!r}: shard-0, shard-1 not ready after 15 s")
    assert "missing resources: CPU " in text and "shard_slot 2" in text
    # Progress was reported while it waited: the gateway live, the shards pending.
    assert seen and seen[-1].live == ["ray-gw-0"] and set(seen[-1].pending) == set(e.pending)
    assert await _leftovers(settings, redis_server.url) == []


async def test_scale_that_cannot_place_its_shards_scales_back(
    ray_namespace: str, redis_server: Any
) -> None:
    # Two shards of 1.5 CPUs fit the session's 4; a third does not.
    settings = tier_settings(
        unique("scaleback"), ray_namespace, shards=2, shard_num_cpus=1.5, start_timeout_s=15
    )
    keys = Keys(settings.redis.key_prefix)
    async with running_tier(settings, redis_server.url) as tier:
        scaling = asyncio.ensure_future(asyncio.to_thread(tier.scale, 3))
        # Meanwhile `status` says why shard-2 has no status (it used to say `TimeoutError:`).
        waiting = "not ready yet: being placed or starting (needs {'CPU': 1.5})"

        async def explained() -> bool:
            st = await asyncio.to_thread(tier.status)
            return bool(st["shards"].get("shard-2", {}).get("error") == waiting)

        await wait_for(explained, 30, what="status to explain the pending shard")
        with pytest.raises(NotReadyError) as info:
            await scaling
        assert info.value.pending == {"shard-2": {"CPU": 1.5}}
        assert info.value.missing == {"CPU": 0.5}
        assert not await asyncio.to_thread(
            actor_exists, shard_name(settings.name, "shard-2"), ray_namespace
        )
        r = aioredis.from_url(redis_server.url)
        try:
            assert await r.get(keys.tier_shard_count(settings.name)) == b"2"
            assert await r.smembers(keys.tier_shard_ids(settings.name)) == {b"shard-0", b"shard-1"}
        finally:
            await r.aclose()
        st = await wait_converged(tier, 2)
        assert st["desired_shards"] == 2


async def test_stop_command_stops_a_tier_by_name(
    ray_namespace: str, redis_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tier_settings(unique("clistop"), ray_namespace, shards=2)
    async with running_tier(settings, redis_server.url):
        code = await asyncio.to_thread(
            main, ["stop", "--name", settings.name, "--namespace", ray_namespace]
        )
        assert code == 0
        assert capsys.readouterr().out == f"stopped tier {settings.name!r}\n"
        assert await _leftovers(settings, redis_server.url) == []
        # Leaving the block stops the handle again: a tier stopped already is fine.
    code = await asyncio.to_thread(
        main, ["stop", "--name", settings.name, "--namespace", ray_namespace]
    )
    assert code == 1
    assert capsys.readouterr().err == (
        f"raycluster: error: no tier {settings.name!r} runs in namespace {ray_namespace!r}\n"
    )


def test_status_with_nothing_at_the_address_is_one_line() -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "raycluster.cli", "status", "--address", address],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr == f"raycluster: error: no Ray cluster at {address}: Connection refused\n"


def _serve(config: Path) -> subprocess.Popen[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAYCLUSTER_")},
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "raycluster.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def _write_config(path: Path, settings: TierSettings, url: str) -> Path:
    data = settings.model_dump(mode="json", exclude={"edge"})
    data["redis"]["redis_url"] = url
    path.write_text(yaml.safe_dump(data))
    return path


async def test_serve_on_a_too_small_cluster_and_sigterm_while_pending(
    ray_namespace: str, redis_server: Any, tmp_path: Path
) -> None:
    # Bounded: exits 1 with the missing resources, leaving nothing.
    small = tier_settings(
        unique("srvsmall"), ray_namespace, shards=1, shard_num_cpus=64, start_timeout_s=15
    )
    proc = _serve(_write_config(tmp_path / "small.yaml", small, redis_server.url))
    out, err = await asyncio.to_thread(proc.communicate, timeout=120)
    assert proc.returncode == 1, out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        f"raycluster: error: tier {small.name!r}: shard-0 not ready after 15 s"
    ), err
    assert "missing resources: CPU " in last
    assert "Traceback" not in err
    assert await _leftovers(small, redis_server.url) == []

    # SIGTERM while a shard is pending: the tier is stopped, no stack dump.
    pending = tier_settings(unique("srvterm"), ray_namespace, shards=2, shard_num_cpus=64)
    proc = _serve(_write_config(tmp_path / "pending.yaml", pending, redis_server.url))
    lines: list[str] = []
    assert proc.stdout is not None

    def read_until_pending() -> None:
        assert proc.stdout is not None
        for ln in proc.stdout:
            lines.append(ln)
            if "pending: shard-0 {'CPU': 64.0}" in ln:
                return

    await asyncio.wait_for(asyncio.to_thread(read_until_pending), 120)
    assert any("free {'CPU'" in ln for ln in lines), lines
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.to_thread(proc.communicate, timeout=120)
    assert proc.returncode == 0, out + err
    assert "SIGTERM: the start was cancelled" in out
    assert "Traceback" not in err, err
    assert await _leftovers(pending, redis_server.url) == []
