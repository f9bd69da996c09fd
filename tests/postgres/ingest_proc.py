"""An ingester in a process of its own, for tests that SIGKILL it.

`python3 ingest_proc.py CONFIG.json`: the file holds `postgres` (PostgresSettings
fields), `redis_url`, `redis` (RedisSettings fields), `entities` (EntitySpec
fields) and `status_file`, where the process writes its `status()` every 20 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from raycluster.livequery import EntitySpec
from raycluster.postgres.ingester import Ingester
from raycluster.postgres.settings import PostgresSettings
from raycluster.redis import RedisSettings


def write_status(path: Path, status: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


async def main(path: str) -> None:
    cfg = json.loads(Path(path).read_text())  # noqa: ASYNC240 (once, at start)
    ing = Ingester(
        PostgresSettings.model_validate(cfg["postgres"]),
        cfg["redis_url"],
        redis_settings=RedisSettings.model_validate(cfg["redis"]),
        entities=[EntitySpec.model_validate(e) for e in cfg["entities"]],
    )
    status = Path(cfg["status_file"])
    task = asyncio.create_task(ing.run())
    while not task.done():
        write_status(status, ing.status())
        await asyncio.sleep(0.02)
    task.result()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
