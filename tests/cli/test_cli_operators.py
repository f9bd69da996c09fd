"""The command line driven as a careless operator would (issue 17), on a private Redis
with a password: one `raycluster: error:` line and the documented exit, within the
command's bounds, and never the password."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
from pathlib import Path

import pytest
import yaml
from cli_helpers import ENTITY, PASSWORD, Result, Tier1, clean_env, cli_command, run_cli

pytestmark = pytest.mark.redis


def _one_error_line(res: Result) -> str:
    assert res.err_lines and len(res.err_lines) == 1, res.err
    line = res.err_lines[0]
    assert line.startswith("raycluster: error: ") and "Traceback" not in res.err, res.err
    return line


def _no_password(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text, text


def _bad_configs(t: Tier1, tmp_path: Path) -> dict[str, tuple[Path, dict[str, str], str]]:
    """Bad inputs: (config file, environment, what the error line says)."""
    good = yaml.safe_load(t.config.read_text())
    unknown_top = tmp_path / "unknown.yaml"
    unknown_top.write_text(yaml.safe_dump({**good, "shardz": 3}))
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({**good, "edge": {"tokns": {"t": "acme"}}}))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    bad_value = tmp_path / "value.yaml"
    bad_value.write_text(yaml.safe_dump({**good, "start_timeout_s": float("inf")}))
    return {
        "unknown top-level key": (unknown_top, {}, "shardz: unknown key"),
        "unknown section key": (typo, {}, "edge.tokns: unknown key"),
        "binary file": (binary, {}, "not UTF-8 text"),
        "missing file": (tmp_path / "missing.yaml", {}, "cannot read config"),
        "bad value": (bad_value, {}, "start_timeout_s: Input should be a finite number"),
        "bad JSON in the environment": (
            t.config,
            {"RAYCLUSTER_SHARD_RESOURCES": "{shard_slot: 1"},
            "environment: RAYCLUSTER_SHARD_RESOURCES: not valid JSON",
        ),
        "unknown environment name": (
            t.config,
            {"RAYCLUSTER_SHARD__CUSHON": "16"},
            "environment (RAYCLUSTER_SHARD__CUSHON): shard.cushon: unknown key",
        ),
        "typo of an environment name": (
            t.config,
            {"RAYCLUSTER_CUSHION": "16"},
            "environment: RAYCLUSTER_CUSHION: not a setting",
        ),
    }


COMMANDS = {
    "demo": ["demo"],
    "demo --web": ["demo", "--web", "--port", "0"],
    "serve": ["serve", "--for-seconds", "1"],
    "edge": ["edge", "--port", "0"],
    "write": ["write", "t1", ENTITY],
    "watch": ["watch", "t1", ENTITY, "--seconds", "1"],
}


async def test_every_command_answers_a_bad_config_with_one_line_and_exit_2(
    secret_tier1: Tier1, tmp_path: Path
) -> None:
    """Item 7. (`status` and `stop` read no config: they attach to a running tier.)"""
    for label, (config, env, says) in _bad_configs(secret_tier1, tmp_path).items():
        for name, args in COMMANDS.items():
            res = await run_cli(
                args[0], "--config", str(config), *args[1:],
                cwd=secret_tier1.cwd, env=clean_env(**env), stdin="",
            )  # fmt: skip
            assert res.code == 2, (label, name, res.code, res.err)
            assert says in _one_error_line(res), (label, name, res.err)
            assert res.out == "", (label, name, res.out)
            _no_password(res.out, res.err)


async def test_write_names_the_line_that_is_not_utf8_after_writing_every_line_before_it(
    secret_tier1: Tier1, tmp_path: Path
) -> None:
    """Item 8: a file is read line by line, as stdin is."""
    t = secret_tier1

    def row_line(i: int) -> bytes:
        return json.dumps({"id": f"r{i}", "row": {"name": f"n{i}", "temp": i}}).encode() + b"\n"

    small = tmp_path / "small.jsonl"
    small.write_bytes(row_line(1) + b"\n" + b'{"id": "x", "row": {"name": "\xff"}}\n' + row_line(4))
    for source in ("file", "stdin"):
        await t.writer.delete(t.tenant, ENTITY, "r1")
        if source == "file":
            res = await run_cli("write", "--config", str(t.config), t.tenant, ENTITY, str(small),
                                cwd=t.cwd)  # fmt: skip
        else:
            res = await _run_bytes(t, small.read_bytes())
        assert res.code == 1, (source, res.err)
        assert _one_error_line(res) == (
            "raycluster: error: line 3: not UTF-8 text (invalid start byte at byte 30 of the "
            "line); nothing from line 3 on was written; the 1 row line(s) before it were"
        ), source
        assert (await t.writer.get(t.tenant, ENTITY, "r1")) is not None, source
        assert await t.writer.get(t.tenant, ENTITY, "r4") is None, source

    big = tmp_path / "big.jsonl"
    with big.open("wb") as f:
        for i in range(1, 20_001):
            f.write(row_line(i))
        f.write(b'{"id": "bad", "row": {"name": "caf\xc3"}}\n')
        f.write(row_line(20_002))
    res = await run_cli("write", "--config", str(t.config), t.tenant, ENTITY, str(big),
                        cwd=t.cwd, timeout_s=180)  # fmt: skip
    assert res.code == 1, res.err
    *progress, line = res.err_lines  # progress lines while it ran (stderr is not a terminal)
    assert all(" lines written (" in p for p in progress) and "Traceback" not in res.err, res.err
    assert line.startswith("raycluster: error: line 20001: not UTF-8 text"), line
    assert line.endswith("the 20000 row line(s) before it were"), line
    for i in (1, 10_000, 20_000):
        got = await t.writer.get(t.tenant, ENTITY, f"r{i}")
        assert got is not None and got[1] == {"name": f"n{i}", "temp": i}
    assert await t.writer.get(t.tenant, ENTITY, "r20002") is None
    _no_password(res.out, res.err)


async def _run_bytes(t: Tier1, data: bytes) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *cli_command("write", "--config", str(t.config), t.tenant, ENTITY, "-"),
        cwd=t.cwd, env=clean_env(), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(data), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def test_watch_seconds_bounds_the_whole_command_with_no_shard_live(
    secret_tier1: Tier1, tmp_path: Path
) -> None:
    """Item 10: no shard serves this key prefix, and the gateway would wait 300 s for one;
    `--seconds 3` ends the command (the harness would give up after 60 s)."""
    cfg = yaml.safe_load(secret_tier1.config.read_text())
    cfg["redis"]["key_prefix"] = "lqc-noshard"
    cfg["gateway"]["request_deadline_s"] = 300
    lonely = tmp_path / "lonely.yaml"
    lonely.write_text(yaml.safe_dump(cfg))
    res = await run_cli("watch", "--config", str(lonely), "t1", ENTITY, "--seconds", "3",
                        cwd=secret_tier1.cwd, timeout_s=60)  # fmt: skip
    assert res.code == 1, res.err
    assert res.err_lines[-1] == (
        "raycluster: error: --seconds 3 passed before the first window (is a shard running?)"
    ), res.err
    assert all(ln.startswith("raycluster: ") for ln in res.err_lines), res.err
    _no_password(res.out, res.err)


async def test_the_password_is_never_shown(secret_tier1: Tier1, tmp_path: Path) -> None:
    """Item 6 for the commands without Ray: a wrong password, a URL that is not Redis's,
    and an edge serving for a moment; nothing any of them prints holds a password."""
    t = secret_tier1
    wrong = t.url.replace(PASSWORD, "WrongPW_abc")
    outputs: list[str] = []
    res = await run_cli("watch", "--redis-url", wrong, "t1", ENTITY, "--seconds", "5", cwd=t.cwd)
    assert res.code == 1, res.err
    assert "refused the credentials" in _one_error_line(res), res.err
    outputs += [res.out, res.err]
    res = await run_cli("write", "--redis-url", wrong, "t1", ENTITY, cwd=t.cwd,
                        stdin='{"id": "a", "row": {"temp": 1}}\n')  # fmt: skip
    assert res.code == 1, res.err
    outputs += [res.out, res.err]
    res = await run_cli("watch", "--redis-url", t.url.replace("redis://", "http://"), "t1",
                        ENTITY, "--seconds", "5", cwd=t.cwd)  # fmt: skip
    assert res.code == 2, res.err
    assert "http://:***@" in _one_error_line(res), res.err
    outputs += [res.out, res.err]
    # The edge, for a moment, on the right password (and with --debug: every log line).
    proc = await asyncio.create_subprocess_exec(
        *cli_command("edge", "--debug", "--config", str(t.config), "--port", "0"),
        cwd=t.cwd, env=clean_env(), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    outputs += [out.decode(), err.decode()]
    _no_password(*outputs)
    for text in outputs:
        assert "WrongPW_abc" not in text, text


class _Peer:
    """A TCP server on every local address, on a thread of this test: it accepts each
    connection and then says `reply` (or nothing at all) and keeps it open."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.sock = socket.create_server(("0.0.0.0", 0))
        self.port: int = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed: the test is over
                return
            self.conns.append(conn)
            if self.reply is not None:
                conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()
        self.thread.join(10)


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (None, "no answer within 5 s (something accepts connections there but does not speak"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "does not speak Ray's protocol (gRPC)"),
    ],
)
async def test_status_against_a_peer_that_is_not_ray_fails_within_seconds(
    tmp_path: Path, reply: bytes | None, says: str
) -> None:
    """Item 9: the TCP connect succeeds, and `ray.init` would wait for ever; the probe
    does not (the harness gives up after 60 s)."""
    peer = _Peer(reply)
    try:
        for cmd in ("status", "stop"):
            address = f"127.0.0.1:{peer.port}"
            res = await run_cli(cmd, "--address", address, cwd=tmp_path,
                                env=clean_env(RAY_ADDRESS=""), timeout_s=60)  # fmt: skip
            assert res.code == 1, res.err
            line = _one_error_line(res)
            assert line.startswith(f"raycluster: error: no Ray cluster at {address}: "), line
            assert says in line, line
    finally:
        peer.close()
