"""Helpers of the CLI tests: a one-shard tier in-process, running the CLI, brute-force truth."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raycluster._wiring import redis_shard
from raycluster.config import TierSettings
from raycluster.redis import RedisMembership, Writer

ENTITY = "asset"
PASSWORD = "S3cretPW_xyz"  # of the private Redis of `secret_tier1`; never printed (issue 17)
COLUMNS = {"name": "str", "kind": "str", "site": "str", "temp": "int"}


@dataclass
class Result:
    """What a CLI run left: exit code, stdout, stderr."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]


@dataclass
class Tier1:
    """A running one-shard tier: its Redis URL, the CLI's config file, a writer, the truth."""

    url: str
    config: Path
    settings: TierSettings
    writer: Writer
    cwd: Path
    tenant: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def upsert(self, agg_id: str, row: dict[str, Any]) -> None:
        await self.writer.upsert(self.tenant, ENTITY, agg_id, row)
        self.rows[agg_id] = dict(row)


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment minus every RAYCLUSTER_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYCLUSTER_")}
    env.update(extra)
    return env


@asynccontextmanager
async def start_tier1(url: str, tmp_path: Path) -> AsyncIterator[Tier1]:
    """Start one shard with fast settings and a fresh key prefix; stop it on exit."""
    prefix = f"lqc-{uuid.uuid4().hex[:8]}"
    cfg = {
        "name": prefix,
        "redis": {"redis_url": url, "key_prefix": prefix, "heartbeat_ttl_s": 2.0},
        "shard": {"heartbeat_interval_s": 0.4, "ownership_interval_s": 0.2},
        "gateway": {"attempt_timeout_s": 1.0, "request_deadline_s": 20.0},
        "entities": [{"name": ENTITY, "columns": COLUMNS, "max_window": 200}],
    }
    config = tmp_path / "tier.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    settings = TierSettings.load(config)
    shard, closers = redis_shard("shard-0", url, settings)
    task = asyncio.create_task(shard.run())
    writer = Writer.from_url(url, entities=settings.entities, settings=settings.redis)
    members = RedisMembership.from_url(url, settings=settings.redis)
    try:
        await wait_for(lambda: _has_shard(members), 20, what="the shard's heartbeat")
        yield Tier1(url=url, config=config, settings=settings, writer=writer, cwd=cwd)
    finally:
        # Each step is bounded without waiting for a cancellation to finish
        # (`wait_for` would): one stuck teardown once held the session for 300 s.
        await _bounded(shard.stop(), 10)
        task.cancel()  # `run` serves until cancelled
        await _bounded(task, 10)
        for closing in (closers.aclose(), writer.aclose(), members.aclose()):
            await _bounded(closing, 10)


async def _bounded(aw: Awaitable[Any], timeout_s: float) -> None:
    """Await `aw` for at most `timeout_s`; say so (not raise) if it is still running then."""
    t = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({t}, timeout=timeout_s)
    if not done:
        t.cancel()
        print(f"teardown: {t!r} still running after {timeout_s} s", file=sys.stderr)
    elif not t.cancelled():
        t.exception()  # retrieved: a failed close of the test's own client is not its result


async def _has_shard(members: RedisMembership) -> bool:
    return "shard-0" in await members.live_shards()


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float, *, what: str = "condition"
) -> None:
    """Poll `predicate` (sync or async) until true; AssertionError on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "raycluster.cli", *args]


async def run_cli(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout_s: float = 60.0,
) -> Result:
    """Run the CLI to the end (the event loop keeps serving the shard meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        *cli_command(*args),
        cwd=cwd,
        env=dict(env) if env is not None else clean_env(),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), timeout_s
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def top_n(
    rows: Mapping[str, Mapping[str, Any]],
    keep: Callable[[Mapping[str, Any]], bool],
    key: Callable[[str, Mapping[str, Any]], Any],
    n: int,
) -> list[str]:
    """Brute force: ids of the first `n` rows kept by `keep`, ordered by `key(id, row)`."""
    ids = [i for i, r in rows.items() if keep(r)]
    return sorted(ids, key=lambda i: key(i, rows[i]))[:n]
