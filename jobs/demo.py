"""The main job: the tier on a local Ray with the embedded Redis, and a failover.

Starts three shards and an in-cluster gateway, writes rows, keeps a few live
windows (two through the in-cluster gateway, one through an external gateway
over Redis), prints them as they change, kills the shard that owns them
mid-way, shows the failover, and checks every window against a brute-force
recomputation at the end. Exit status 0 means every window was exact.

    python jobs/demo.py [--seconds 12] [--rate 200] [--config configs/tier.yaml]

With --postgres the rows live in a private PostgreSQL (started beside the
private Redis) and are written with plain SQL; the tier follows it through
its ingester actor, which is killed mid-way instead of a shard, and every
window is checked against Postgres' own ORDER BY … COLLATE "C" LIMIT.

Runs `raycluster demo` (the code is `raycluster._jobs.demo`): a bad config or a failure
is one line `raycluster: error: …`, exit 2 or 1 (docs/cli.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raycluster.cli import main

if __name__ == "__main__":
    # Through the command line: a bad config or a failure is one line, as there.
    raise SystemExit(main(["demo", *sys.argv[1:]]))
