"""A running tier survives its operators (issue 17): calls that fail harm nothing, errors
from actors arrive as themselves, and nothing a run prints or logs shows the password.

One tier on a password-protected Redis takes every bad call in turn; after each, an
open subscription still receives frames and the tier runs at its count, with no
actor or state left of the call.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import ray
import redis.asyncio as aioredis
import yaml
from ray.exceptions import RayTaskError
from ray_helpers import ENTITY, actor_exists, running_tier, status, tier_settings
from support import REDIS_PASSWORD, unique, wait_for

from raycluster import LiveQuery, SortKey, Tier
from raycluster.actors import controller_name, shard_name
from raycluster.actors.remote import get
from raycluster.cluster.keys import Keys
from raycluster.config import MAX_SHARDS, TierSettings
from raycluster.errors import InvalidArgument, InvalidQuery, NotReadyError
from raycluster.redis import LocalRedis

BY_NAME = LiveQuery(entity=ENTITY, sort=[SortKey(column="name")], limit=100)


@pytest.mark.timeout(600)
async def test_calls_that_fail_leave_the_running_tier_serving(
    ray_namespace: str, secret_redis: LocalRedis
) -> None:
    # Two shards of 1.5 CPUs fit the session's 4; a third does not.
    settings = tier_settings(
        unique("ops"), ray_namespace, shards=2, shard_num_cpus=1.5, gateways=1,
        start_timeout_s=20,
    )  # fmt: skip
    keys = Keys(settings.redis.key_prefix)
    tenant = unique("acme")
    r = aioredis.from_url(secret_redis.url)
    async with running_tier(settings, secret_redis.url) as tier:
        writer = tier.writer()
        sub = await tier.subscribe(tenant, BY_NAME)
        written = 0

        async def still_serving(after: str) -> None:
            """A new row reaches the open subscription; the tier runs its two shards and
            nothing of the failed call is left (actors, shard ids, the stored count)."""
            nonlocal written
            written += 1
            agg_id = f"a{written:03}"
            row = {"name": f"n{written:03}", "kind": "pump", "site": "north", "temp": written}
            await writer.upsert(tenant, ENTITY, agg_id, row)
            await wait_for(lambda: agg_id in sub.rows.ids, 30, what=f"{agg_id} after {after}")
            assert not sub.closed
            st = await status(tier)
            assert st["desired_shards"] == 2, (after, st)
            assert st["live_shards"] == ["shard-0", "shard-1"], (after, st)
            assert sorted(st["shards"]) == ["shard-0", "shard-1"], (after, st)
            assert await r.get(keys.tier_shard_count(settings.name)) == b"2", after
            ids = await r.smembers(keys.tier_shard_ids(settings.name))
            assert ids == {b"shard-0", b"shard-1"}, after
            for sid in ("shard-2", "shard-11", f"shard-{MAX_SHARDS - 1}"):
                name = shard_name(settings.name, sid)
                assert not await asyncio.to_thread(actor_exists, name, ray_namespace), (after, sid)
            assert await asyncio.to_thread(
                actor_exists, controller_name(settings.name), ray_namespace
            ), after

        await still_serving("the start")

        # 1. A count that is not one is refused before anything is stored, by the
        # driver and by the controller itself (whose error arrives as itself: 11).
        for bad in (2.5, 2.0, "3", True, -1, MAX_SHARDS + 1, 10_000):
            with pytest.raises(InvalidArgument) as refused:
                await asyncio.to_thread(tier.scale, bad)  # type: ignore[arg-type]
            assert refused.value.field == "shards" and isinstance(refused.value, ValueError)
        with pytest.raises(InvalidArgument) as refused:
            await asyncio.to_thread(get, tier.controller.scale.remote(2.5), 60)
        assert str(refused.value) == "shards: must be a whole number (an int), not float (got 2.5)"
        assert isinstance(refused.value.__cause__, RayTaskError)
        await still_serving("scale(2.5), scale('3'), scale(True), scale(257)")

        # A stored count that is not one (an older version's, a hand edit) does not stop a
        # restarted controller: it keeps the configured count and stores that again.
        count_key = keys.tier_shard_count(settings.name)
        await r.set(count_key, "2.5")
        pid = await asyncio.to_thread(get, tier.controller.pid.remote(), 60)
        await asyncio.to_thread(ray.kill, tier.controller, no_restart=False)

        async def repaired() -> bool:
            try:
                now = await asyncio.to_thread(get, tier.controller.pid.remote(), 5)
            except Exception:  # restarting
                return False
            return bool(now != pid and await r.get(count_key) == b"2")

        await wait_for(repaired, 60, what="the restarted controller to store 2 again")
        await still_serving("a restarted controller found '2.5' stored")

        # 2. A start that re-adopts the running tier and fails stops only what it
        # started, and says its own timeout.
        call = tier_settings(
            settings.name, ray_namespace, shards=2, shard_num_cpus=1.5, gateways=1,
            start_timeout_s=5,
        )  # fmt: skip
        with pytest.raises(NotReadyError) as failed:
            await asyncio.to_thread(Tier.start, call, redis_url=secret_redis.url, shards=12)
        assert set(failed.value.pending) == {f"shard-{i}" for i in range(2, 12)}
        assert failed.value.timeout_s == 5
        assert " not ready after 5 s" in str(failed.value)
        await still_serving("a re-adopting Tier.start(shards=12) that failed")

        # 3. A scale that cannot be met fails after the tier's start_timeout_s with
        # NotReadyError, and scales back.
        with pytest.raises(NotReadyError) as failed:
            await asyncio.to_thread(tier.scale, MAX_SHARDS)
        assert len(failed.value.pending) == MAX_SHARDS - 2
        assert f" not ready after {settings.start_timeout_s:g} s" in str(failed.value)
        await still_serving(f"scale({MAX_SHARDS}) that could not be met")

        # 11. An error raised in a gateway actor: its own one line, isinstance intact,
        # the remote traceback kept as the cause. (The handle's own gateway refuses the
        # same query in this process, with the same message.)
        too_big = LiveQuery(entity=ENTITY, limit=201)
        with pytest.raises(InvalidQuery) as bad_query:
            await tier.subscribe(tenant, too_big, gateway_id=tier.gateway_ids[0])
        assert str(bad_query.value) == "limit: above the maximum window 200 (got 201)"
        assert isinstance(bad_query.value.__cause__, RayTaskError)
        with pytest.raises(
            InvalidQuery, match=r"^limit: above the maximum window 200 \(got 201\)$"
        ):
            await tier.subscribe(tenant, too_big)
        await still_serving("a subscribe the gateway refused")

        await sub.close()
        await writer.aclose()
    await r.aclose()


def _config(path: Path, settings: TierSettings, url: str) -> Path:
    data = settings.model_dump(mode="json", exclude={"edge"})
    data["redis"]["redis_url"] = url
    path.write_text(yaml.safe_dump(data))
    return path


def _popen(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "raycluster.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raycluster.cli", *args],
        capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip


@pytest.mark.timeout(600)
async def test_nothing_a_run_prints_or_logs_shows_the_password(
    ray_namespace: str, secret_redis: LocalRedis, tmp_path: Path
) -> None:
    """Item 6: `serve` (and what its actors log), `status`, a failed re-adopting
    start, `stop`; the password appears in none of their output, nor in Ray's logs."""
    # One shard of 3 CPUs fits the session's 4; no second one does.
    settings = tier_settings(unique("secret"), ray_namespace, shards=1, gateways=1,
                             shard_num_cpus=3)  # fmt: skip
    config = _config(tmp_path / "tier.yaml", settings, secret_redis.url)
    gcs = ray.get_runtime_context().gcs_address
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYCLUSTER_")}
    env["RAY_ADDRESS"] = gcs
    names = ["--name", settings.name, "--namespace", ray_namespace]
    serve = _popen("serve", "--config", str(config), "--status-every", "1", env=env)
    out_lines: list[str] = []
    err_lines: list[str] = []
    readers = [
        threading.Thread(target=lambda: out_lines.extend(serve.stdout or []), daemon=True),
        threading.Thread(target=lambda: err_lines.extend(serve.stderr or []), daemon=True),
    ]
    for t in readers:
        t.start()
    outputs: list[str] = []
    try:
        await wait_for(
            lambda: any(ln.startswith("status ") for ln in out_lines), 180,
            what=lambda: f"serve's first status line: {out_lines} {err_lines}",
        )  # fmt: skip
        st = await asyncio.to_thread(_cli, "status", "--address", gcs, *names, "--json", env=env)
        assert st.returncode == 0, st.stderr
        assert json.loads(st.stdout)["live_shards"] == ["shard-0"]
        outputs += [st.stdout, st.stderr]
        # A second serve of the same tier, asking for more than fits: it fails, and the
        # first one serves on.
        big = _config(tmp_path / "big.yaml", settings.model_copy(update={"start_timeout_s": 3}),
                      secret_redis.url)  # fmt: skip
        again = await asyncio.to_thread(_cli, "serve", "--config", str(big), "--shards", "40",
                                        env=env)  # fmt: skip
        assert again.returncode == 1 and "not ready after 3 s" in again.stderr, again.stderr
        outputs += [again.stdout, again.stderr]
        n = len(out_lines)
        await wait_for(lambda: len(out_lines) > n + 1, 60, what="serve serving on")
    finally:
        serve.send_signal(signal.SIGTERM)
        await asyncio.to_thread(serve.wait, 120)
        for t in readers:
            t.join(30)
        for pipe in (serve.stdout, serve.stderr):
            if pipe is not None:
                pipe.close()
    assert serve.returncode == 0, "".join(err_lines)
    outputs += ["".join(out_lines), "".join(err_lines)]
    assert any("redis redis://:***@127.0.0.1:" in ln for ln in out_lines), out_lines
    stop = await asyncio.to_thread(_cli, "stop", "--address", gcs, *names, env=env)
    assert stop.returncode == 1 and "no tier" in stop.stderr  # serve stopped it on SIGTERM
    outputs += [stop.stdout, stop.stderr]
    for text in outputs:
        assert REDIS_PASSWORD not in text, text
    logs = ray._private.worker._global_node.get_logs_dir_path()  # this session's
    assert await asyncio.to_thread(_files_holding, REDIS_PASSWORD, logs) == []


def _files_holding(text: str, folder: str) -> list[str]:
    return [
        str(p) for p in Path(folder).rglob("*") if p.is_file() and text.encode() in p.read_bytes()
    ]
