"""Expected failures: one line `raycluster: error: …` on stderr, exit 2 (usage) or 1."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

import pytest
from cli_helpers import ENTITY, Tier1, clean_env, run_cli


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("raycluster: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["watch"], "the following arguments are required: TENANT, ENTITY"),
        (["watch", "t", ENTITY, "--limit", "many"], "argument --limit: invalid int value"),
        (["watch", "t", ENTITY, "--where", "temp>>5"], "--where: 'temp' is int (got '>5')"),
        (["watch", "t", ENTITY, "--where", "temp=hot"], "--where: 'temp' is int (got 'hot')"),
        (["watch", "t", ENTITY, "--where", "no operator"], "--where: expected COLUMN OP VALUE"),
        (["watch", "t", ENTITY, "--where", "site>null"], "--where: null only works with ="),
        (["watch", "t", ENTITY, "--sort", ","], "--sort: expected COLUMN"),
        (["watch", "t", ENTITY, "--limit", "0"], "limit: must be greater than 0"),
        (["watch", "t", ENTITY, "--frames", "-1"], "--frames: must be 0 or more"),
        (["write", "t", "order"], "ENTITY 'order': not declared in the config"),
        (["write", "a:b", ENTITY], "TENANT 'a:b': must be non-empty, without ':'"),
    ],
)
async def test_usage_errors_exit_2_with_one_line(tier1: Tier1, args: list[str], says: str) -> None:
    if len(args) > 1:  # watch/write: the test tier's config (declares `asset` only)
        args = [args[0], "--config", str(tier1.config), *args[1:]]
    res = await run_cli(*args, cwd=tier1.cwd, stdin="")
    assert res.code == 2, (res.code, res.err)
    assert says in _one_error_line(res.err)
    assert res.out == ""


async def test_missing_redis_url_is_one_line(tmp_path: Path) -> None:
    for cmd in (["write", "t", ENTITY], ["watch", "t", ENTITY], ["edge"]):
        res = await run_cli(*cmd, cwd=tmp_path, stdin="")  # no config, no env, no flag
        assert res.code == 2, (cmd, res.err)
        line = _one_error_line(res.err)
        assert line == (
            "raycluster: error: no Redis URL: pass --redis-url, set RAYCLUSTER_REDIS_URL, "
            "or set redis.redis_url in the --config file"
        )


async def test_redis_url_from_the_environment(tier1: Tier1) -> None:
    cfg = tier1.config.read_text().replace(f"redis_url: {tier1.url}", "redis_url: null")
    nourl = tier1.config.with_name("nourl.yaml")
    nourl.write_text(cfg)
    res = await run_cli(
        "write", "--config", str(nourl), tier1.tenant, ENTITY, cwd=tier1.cwd,
        env=clean_env(RAYCLUSTER_REDIS_URL=tier1.url), stdin='{"id": "e1", "row": {"temp": 3}}\n',
    )  # fmt: skip
    assert res.code == 0, res.err
    got = await tier1.writer.get(tier1.tenant, ENTITY, "e1")
    assert got is not None and got[1] == {"temp": 3}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens once the socket is closed


async def test_unreachable_redis_is_a_runtime_error(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    res = await run_cli(
        "write", "--redis-url", url, "t", ENTITY, cwd=tmp_path, stdin='{"id": "x", "row": {}}\n'
    )
    assert res.code == 1
    line = _one_error_line(res.err)
    assert "Redis unavailable" in line and "after 0 line(s) written" in line, line
    res = await run_cli("watch", "--redis-url", url, "t", ENTITY, cwd=tmp_path)
    assert res.code == 1
    assert "Redis unavailable" in _one_error_line(res.err)


async def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    res = await run_cli("write", "--debug", "t", ENTITY, "missing.jsonl", cwd=tmp_path,
                        env=clean_env(RAYCLUSTER_REDIS_URL="redis://127.0.0.1:1/0"))  # fmt: skip
    assert res.code == 1
    assert "Traceback" in res.err
    assert res.err.rstrip().splitlines()[-1].startswith("raycluster: error: cannot read missing")


async def test_the_console_script_is_installed(tmp_path: Path) -> None:
    exe = shutil.which("raycluster")
    assert exe is not None, "pip install -e . installs the `raycluster` script"
    proc = await asyncio.create_subprocess_exec(
        exe, "--help", cwd=tmp_path, stdout=asyncio.subprocess.PIPE, env=clean_env()
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    for command in ("demo", "serve", "edge", "status", "write", "watch"):
        assert f"    {command} " in out.decode()
