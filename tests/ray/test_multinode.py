"""Every actor kind survives the loss of its node, on a multi-node Ray.

The scenarios (`multinode_run.py`) run in a process of their own: a
`ray.cluster_utils.Cluster` connects its driver with `ray.init(address=…)`,
which cannot happen in this process once the session's local Ray is up (and
shutting that down mid-session would break the modules after this one). One
run builds the cluster once and plays the scenarios in order (each removes
one node); each is reported here as its own test. The cluster lives under a
private `RAY_TMPDIR` on free ports, and whatever is left of it afterwards is
stopped by that directory (never by process name).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from multinode_run import SCENARIOS
from ray_procs import stop_processes_under

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUN_TIMEOUT_S = 420.0


@pytest.fixture(scope="module")
def run() -> Iterator[tuple[dict[str, Any], str]]:
    """The scenarios' results and the tail of the run's output."""
    temp_dir = tempfile.mkdtemp(prefix="rcm", dir="/tmp")  # short: Ray's socket paths
    out = Path(temp_dir) / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(
        RAY_TMPDIR=temp_dir,
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
    )
    try:
        try:
            proc = subprocess.run(
                [sys.executable, str(HERE / "multinode_run.py"), str(out)],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                check=False,
            )  # fmt: skip
            log = proc.stdout[-4000:] + proc.stderr[-4000:]
        except subprocess.TimeoutExpired as e:
            # The run dumps every thread's stack before this (`multinode_run.STACKS_AFTER_S`).
            out_tail = (e.stdout or b"")[-4000:]
            err_tail = (e.stderr or b"")[-8000:].decode(errors="replace")
            log = f"timed out after {RUN_TIMEOUT_S}s\n{out_tail!r}\n{err_tail}"
        results = json.loads(out.read_text()) if out.exists() else {}
        yield results, log
    finally:
        left = stop_processes_under(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"processes of the multi-node cluster left: {left}"


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_multinode(run: tuple[dict[str, Any], str], scenario: str) -> None:
    results, log = run
    result = results.get(scenario)
    assert result is not None, f"{scenario} did not run: {results.get('_driver')}\n{log}"
    assert result["ok"], result.get("error", "") + "\n--- run output ---\n" + log
