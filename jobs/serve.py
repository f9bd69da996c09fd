"""Run the tier on any Ray cluster until stopped (the `ray job submit` entrypoint).

    ray job submit --working-dir . -- python jobs/serve.py --config configs/tier.yaml

Starts (or re-adopts) the tier, prints its status every `--status-every`
seconds, and blocks. `ray job stop` (SIGTERM) or Ctrl-C stops every actor of
the tier before exiting. With no Redis configured, a private local server
lives as long as this job (single-node use only).

Runs `raycluster serve` (the code is `raycluster._jobs.serve`): a bad config or a failure
is one line `raycluster: error: …`, exit 2 or 1 (docs/cli.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raycluster.cli import main

if __name__ == "__main__":
    # Through the command line: a bad config or a failure is one line, as there.
    raise SystemExit(main(["serve", *sys.argv[1:]]))
