"""`ray job submit` of jobs/serve.py against a Ray head of this test's own.

The head (`ray start --head`) gets its own temp dir and free ports for
everything it binds, so it never meets the session's local instance (nor
anyone else's Ray). `ray stop` would stop every Ray on the machine, so the
head is stopped by signalling exactly its processes: those with a file open
under its temp dir or naming it on their command line, and their
descendants. The job keeps its own Redis (`configs/tier.yaml` names none), so
nothing is shared with the session's Ray or Redis: the test runs in any order,
before or after the rest of the tier, or alone.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray_procs import stop_processes_under
from support import free_port, unique

ROOT = Path(__file__).resolve().parents[2]
EXCLUDES = [".git", ".mypy_cache", ".hypothesis", ".pytest_cache", ".ruff_cache", ".benchmarks",
            "tests", "benchmarks"]  # fmt: skip


def _port_range(n: int) -> tuple[int, int]:
    """`n` consecutive free ports (for the head's workers)."""
    rnd = random.Random()
    for _ in range(200):
        base = rnd.randrange(20_000, 30_000 - n)
        ok = True
        for port in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base, base + n - 1
    raise RuntimeError("no free port range")


def _run(args: list[str], env: dict[str, str], timeout_s: float) -> Any:
    return subprocess.run(
        args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )


@pytest.fixture(scope="module")
def head() -> Iterator[tuple[str, dict[str, str]]]:
    """A private Ray head: (dashboard address, environment for the `ray` CLI)."""
    temp_dir = tempfile.mkdtemp(prefix="rcj", dir="/tmp")  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    dashboard = free_port()
    low, high = _port_range(40)
    ports = {
        "--port": free_port(),
        "--dashboard-port": dashboard,
        "--ray-client-server-port": free_port(),
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--metrics-export-port": free_port(),
        "--min-worker-port": low,
        "--max-worker-port": high,
    }
    args = ["ray", "start", "--head", "--include-dashboard=true", "--num-cpus=4",
            "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}", "--disable-usage-stats",
            *(f"{k}={v}" for k, v in ports.items())]  # fmt: skip
    try:
        started = _run(args, env, 180)
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        left = stop_processes_under(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"head processes left: {left}"


@pytest.mark.timeout(420)
def test_ray_job_submit_serves_the_tier(head: tuple[str, dict[str, str]]) -> None:
    address, env = head
    submission = unique("rcj")
    runtime_env = {
        "env_vars": {"RAYCLUSTER_SHARDS": "2", "RAYCLUSTER_SHARD_NUM_CPUS": "0.5",
                     "RAY_AUTH_MODE": "disabled"},
        "excludes": EXCLUDES,
    }  # fmt: skip
    submit = _run(
        ["ray", "job", "submit", "--address", address, "--submission-id", submission,
         "--working-dir", str(ROOT), "--runtime-env-json", json.dumps(runtime_env), "--",
         "python", "jobs/serve.py", "--config", "configs/tier.yaml",
         "--for-seconds", "20", "--status-every", "2"],
        env, 300,
    )  # fmt: skip
    plain = ["--log-style", "record", "--log-color", "false"]
    status = _run(["ray", "job", "status", *plain, "--address", address, submission], env, 60)
    logs = _run(["ray", "job", "logs", "--address", address, submission], env, 60).stdout
    why = submit.stdout[-3000:] + submit.stderr[-3000:] + logs[-3000:]
    assert submit.returncode == 0, why
    assert f"Job '{submission}' succeeded" in status.stdout + status.stderr, status.stdout + why
    lines = [json.loads(ln.split("status ", 1)[1]) for ln in logs.splitlines()
             if ln.startswith("status {")]  # fmt: skip
    assert lines, logs[-3000:]
    assert any(line["live_shards"] == ["shard-0", "shard-1"] for line in lines), lines
    assert all(line["partitions_owned"] <= 256 for line in lines)
    assert lines[-1]["partitions_owned"] == 256, lines[-1]
    assert "stopped" in logs
