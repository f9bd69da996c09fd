"""Run the tier on any Ray cluster until stopped (the `ray job submit` entrypoint).

    ray job submit --working-dir . -- python jobs/serve.py --config configs/tier.yaml

Starts (or re-adopts) the tier, prints its status every `--status-every`
seconds, and blocks. `ray job stop` (SIGTERM) or Ctrl-C stops every actor of
the tier before exiting. With no Redis configured, a private local server
lives as long as this job (single-node use only).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from raycluster import Tier, TierSettings  # noqa: E402

log = logging.getLogger("raycluster.serve")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "tier.yaml"))
    ap.add_argument("--shards", type=int, default=None, help="override the configured count")
    ap.add_argument("--status-every", type=float, default=10.0, help="seconds between status lines")
    ap.add_argument(
        "--for-seconds", type=float, default=None, help="stop by itself after this long"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    settings = TierSettings.load(args.config)
    tier = Tier.start(settings, shards=args.shards)
    print(f"serving tier {tier.name!r}: redis {tier.redis_url}, gateways {tier.gateway_ids}",
          flush=True)  # fmt: skip

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    deadline = time.monotonic() + args.for_seconds if args.for_seconds else None
    try:
        while not stop.wait(args.status_every):
            st = tier.status()
            line = {k: st[k] for k in ("live_shards", "subscriptions", "partitions_owned",
                                       "frames_per_s", "changes_per_s", "lag_ms")}  # fmt: skip
            print("status " + json.dumps(line), flush=True)
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        print("stopping the tier", flush=True)
        tier.stop()
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
