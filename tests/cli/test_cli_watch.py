"""`raycluster watch`: the live window printed as frames arrive, until --frames/--seconds/Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

from cli_helpers import ENTITY, Tier1, clean_env, cli_command, run_cli, top_n
from support import wait_for

from raycluster.cluster import partition_of
from raycluster.redis import RedisMembership, RedisRegistry


def _pumps_by_temp_desc(rows: dict[str, dict[str, Any]], n: int) -> list[str]:
    return top_n(
        rows,
        keep=lambda r: r.get("kind") == "pump" and r.get("temp") is not None and r["temp"] > 10,
        key=lambda i, r: (-r["temp"], r["name"], i),
        n=n,
    )


async def _seed(t: Tier1) -> None:
    for i in range(12):
        kind = "pump" if i % 3 else "fan"
        await t.upsert(f"a{i:02}", {"name": f"n{i % 5}", "kind": kind, "temp": 5 * i})


class Watcher:
    """A `watch` subprocess whose stdout lines are read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode().rstrip("\n"))

    async def finish(self, timeout_s: float = 30.0) -> tuple[int, str]:
        assert self.proc.stderr is not None
        err = await asyncio.wait_for(self.proc.stderr.read(), timeout_s)
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        await self.reader
        return code, err.decode()


async def _start(t: Tier1, *args: str) -> Watcher:
    proc = await asyncio.create_subprocess_exec(
        *cli_command("watch", "--config", str(t.config), t.tenant, ENTITY, *args),
        cwd=t.cwd,
        env=clean_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return Watcher(proc)


async def test_watch_frames_json_prints_the_window_after_exactly_n_frames(tier1: Tier1) -> None:
    await _seed(tier1)
    w = await _start(
        tier1, "--where", "kind=pump", "--where", "temp>10", "--sort=-temp,name",
        "--limit", "4", "--frames", "2", "--json",
    )  # fmt: skip
    await wait_for(lambda: len(w.lines) >= 1, 30, what="the first window")
    first = json.loads(w.lines[0])
    assert [r["id"] for r in first["rows"]] == _pumps_by_temp_desc(tier1.rows, 4)
    assert first["frames"] == 0
    assert first["rows"][0]["row"] == tier1.rows[first["rows"][0]["id"]]
    # Enters at the top and pushes the last one out: exactly two frames.
    await tier1.upsert("hot", {"name": "zz", "kind": "pump", "temp": 500})
    code, err = await w.finish()
    assert code == 0, err
    last = json.loads(w.lines[-1])
    assert last["frames"] == 2
    assert [r["id"] for r in last["rows"]] == _pumps_by_temp_desc(tier1.rows, 4)
    assert last["rows"][0]["id"] == "hot"


async def test_watch_frames_counts_whole_changes(tier1: Tier1) -> None:
    await _seed(tier1)
    w = await _start(
        tier1, "--where", "kind=pump", "--where", "temp>10", "--sort=-temp,name",
        "--limit", "4", "--frames", "1", "--json",
    )  # fmt: skip
    await wait_for(lambda: len(w.lines) >= 1, 30, what="the first window")
    # One change, two frames: the top row drops out (leave), the next one backfills
    # (enter). --frames 1 must not stop between them and print three rows.
    top = json.loads(w.lines[0])["rows"][0]["id"]
    await tier1.upsert(top, {**tier1.rows[top], "temp": 0})
    code, err = await w.finish()
    assert code == 0, err
    last = json.loads(w.lines[-1])
    assert last["frames"] == 2
    assert [r["id"] for r in last["rows"]] == _pumps_by_temp_desc(tier1.rows, 4)
    assert top not in [r["id"] for r in last["rows"]]


async def test_watch_frames_zero_is_a_one_shot_table(tier1: Tier1) -> None:
    await _seed(tier1)
    res = await run_cli(
        "watch", "--config", str(tier1.config), tier1.tenant, ENTITY, "--where", "kind=pump",
        "--where", "temp>10", "--sort=-temp,name", "--limit", "3", "--frames", "0",
        "--columns", "name,temp", cwd=tier1.cwd,
    )  # fmt: skip
    assert res.code == 0, res.err
    lines = [ln for ln in res.out.splitlines() if ln.strip()]
    assert lines[0].startswith(
        f"{tier1.tenant}/{ENTITY} where kind = 'pump' and temp > 10 "
        "order by temp desc, name limit 3 | 3 row(s), 0 frame(s)"
    )
    assert lines[1].split() == ["#", "id", "name", "temp"]
    want = _pumps_by_temp_desc(tier1.rows, 3)
    body = [ln.split() for ln in lines[2:]]
    assert body == [
        [str(k + 1), i, tier1.rows[i]["name"], str(tier1.rows[i]["temp"])]
        for k, i in enumerate(want)
    ]


async def test_watch_seconds_appends_plain_snapshots_as_rows_change(tier1: Tier1) -> None:
    await _seed(tier1)
    w = await _start(tier1, "--sort", "name", "--limit", "3", "--seconds", "4")
    await wait_for(lambda: any("row(s)" in ln for ln in w.lines), 30, what="the first window")
    await tier1.upsert("aaa", {"name": "a-first", "kind": "fan", "temp": 1})
    code, err = await w.finish()
    assert code == 0, err
    heads = [k for k, ln in enumerate(w.lines) if "row(s)" in ln]
    assert len(heads) >= 2, w.lines  # the first window, then the changed one
    last = w.lines[heads[-1] + 2 : heads[-1] + 5]
    want = top_n(tier1.rows, keep=lambda r: True, key=lambda i, r: (r["name"], i), n=3)
    assert [ln.split()[1] for ln in last] == want
    assert want[0] == "aaa"


async def test_ctrl_c_unsubscribes_cleanly(tier1: Tier1) -> None:
    await _seed(tier1)
    registry = RedisRegistry.from_url(tier1.url, settings=tier1.settings.redis)
    members = RedisMembership.from_url(tier1.url, settings=tier1.settings.redis)
    p = partition_of(tier1.tenant, ENTITY)
    try:
        w = await _start(tier1, "--limit", "2")
        await wait_for(lambda: any("row(s)" in ln for ln in w.lines), 30, what="the window")
        assert len(await registry.by_partition(p)) == 1
        assert len(await members.live_gateways()) == 1
        w.proc.send_signal(signal.SIGINT)
        code, err = await w.finish()
        assert code == 0, err
        assert "Traceback" not in err
        assert await registry.by_partition(p) == []
        assert await members.live_gateways() == []
    finally:
        await registry.aclose()
        await members.aclose()


async def test_frames_not_reached_within_seconds_is_an_error(tier1: Tier1) -> None:
    await _seed(tier1)
    res = await run_cli(
        "watch", "--config", str(tier1.config), tier1.tenant, ENTITY, "--limit", "2",
        "--frames", "5", "--seconds", "1", "--json", cwd=tier1.cwd,
    )  # fmt: skip
    assert res.code == 1
    assert res.err_lines == ["raycluster: error: 0 of 5 frame(s) arrived within 1s"]
    assert len(json.loads(res.out.splitlines()[-1])["rows"]) == 2  # the window was still shown


async def test_a_query_the_tier_rejects_is_a_usage_error(tier1: Tier1) -> None:
    res = await run_cli(
        "watch", "--config", str(tier1.config), tier1.tenant, ENTITY, "--where", "colour=red",
        "--frames", "0", cwd=tier1.cwd,
    )  # fmt: skip
    assert res.code == 2
    assert res.err_lines == ["raycluster: error: where.0.column: unknown column (got 'colour')"], (
        res.err
    )
