"""Run the tier on any Ray cluster until stopped (the `ray job submit` entrypoint).

    ray job submit --working-dir . -- python jobs/serve.py --config configs/tier.yaml

Starts (or re-adopts) the tier, prints its status every `--status-every`
seconds, and blocks. `ray job stop` (SIGTERM) or Ctrl-C stops every actor of
the tier before exiting. With no Redis configured, a private local server
lives as long as this job (single-node use only).

Same as `raycluster serve` (the code is `raycluster._jobs.serve`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raycluster._jobs import add_serve_args, serve

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_serve_args(ap)
    raise SystemExit(serve(ap.parse_args()))
