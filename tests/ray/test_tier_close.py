"""Stopping a tier ends the driver's subscriptions, and nothing of it touches Ray after.

Each case runs `tier_close_run.py` in a process of its own (it shuts Ray
down, which the session's Ray instance must outlive).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.mark.parametrize("mode", ["aclose", "stop", "shutdown"])
def test_subscriptions_end_and_ray_stays_down(mode: str) -> None:
    with tempfile.TemporaryDirectory(prefix="rc-") as tmp:  # short: Ray's socket paths
        env = {**os.environ, "RAY_TMPDIR": tmp, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, str(HERE / "tier_close_run.py"), mode],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            pytest.fail(proc.stdout[-3000:] + proc.stderr[-3000:] + gcs_logs(Path(tmp)))
    got = json.loads(lines[-1].removeprefix("RESULT "))
    assert got["ray_alive"] == {"gcs_server": True, "raylet": True}, got
    assert got["readers_ended"], got
    why = "Ray was shut down" if mode == "shutdown" else "was stopped"
    assert all(r is not None and why in r for r in got["reasons"]), got
    assert got["ray_down_s"] is not None and got["ray_down_s"] >= 10, got  # no auto-init
    assert got["tasks"] == [], got  # nothing of the tier left running


def gcs_logs(tmp: Path) -> str:
    """The end of the GCS's logs under `tmp` (why it died, when the driver says so)."""
    tails = []
    for log in sorted(tmp.glob("**/logs/gcs_server.*")):
        with contextlib.suppress(OSError):
            tails.append(f"\n--- {log.name}:\n" + log.read_text(errors="replace")[-2000:])
    return "".join(tails)
