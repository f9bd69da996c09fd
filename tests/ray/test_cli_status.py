"""`raycluster status` against a running tier: the real status dict, formatted; the command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest
import ray
from ray_helpers import running_tier, tier_settings
from support import unique

from raycluster.cli import format_status, main


def _table(text: str) -> dict[str, list[str]]:
    rows = {}
    for ln in text.splitlines()[2:]:
        cells = ln.split()
        if cells and (cells[0].startswith("shard-") or cells[0] == "total"):
            rows[cells[0]] = cells[1:]
    return rows


async def test_status_of_a_running_tier(
    ray_namespace: str, redis_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tier_settings(unique("clistat"), ray_namespace, shards=2)
    async with running_tier(settings, redis_server.url) as tier:
        before = await asyncio.to_thread(tier.status)
        after = await asyncio.to_thread(tier.status)
        text = format_status(after, before, 1.0)
        rows = _table(text)
        assert text.splitlines()[0].startswith(f"tier {settings.name}: 2 live shard(s), 2 desired")
        assert set(rows) == {"shard-0", "shard-1", "total"}
        for sid in ("shard-0", "shard-1"):
            alive, partitions, subs, fps, lag = rows[sid]
            assert alive == "yes"
            assert int(partitions) == len(after["shards"][sid]["partitions"])
            assert int(subs) == after["shards"][sid]["subscriptions"]
            float(fps), float(lag)
        assert rows["total"][:2] == ["2/2", "256"]

        # The command itself, in this driver (Ray is up): a one-sample table, then JSON.
        code = await asyncio.to_thread(
            main, ["status", "--name", settings.name, "--namespace", ray_namespace,
                   "--interval", "0"],
        )  # fmt: skip
        out = capsys.readouterr().out
        assert code == 0
        assert _table(out)["total"][:2] == ["2/2", "256"]
        code = await asyncio.to_thread(
            main, ["status", "--name", settings.name, "--namespace", ray_namespace,
                   "--interval", "0.2", "--json"],
        )  # fmt: skip
        assert code == 0
        st = json.loads(capsys.readouterr().out)
        assert st["live_shards"] == ["shard-0", "shard-1"] and st["partitions_owned"] == 256

        # A separate process attaching to this Ray instance by address, like an operator.
        address = ray.get_runtime_context().gcs_address
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "raycluster.cli", "status", "--address", address,
             "--name", settings.name, "--namespace", ray_namespace, "--interval", "0.5"],
            capture_output=True, text=True, timeout=120, env=dict(os.environ),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert _table(proc.stdout)["total"][:2] == ["2/2", "256"], proc.stdout
        print(proc.stdout)


async def test_status_of_a_missing_tier_is_one_line(
    ray_namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await asyncio.to_thread(
        main, ["status", "--name", "no-such-tier", "--namespace", ray_namespace]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err == (
        f"raycluster: error: no tier 'no-such-tier' runs in namespace {ray_namespace!r}\n"
    )
