"""Shared by the benchmarks that run an edge in a child process: ports and readiness."""

from __future__ import annotations

import asyncio
import socket
import time


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_healthy(port: int, timeout_s: float = 30) -> None:
    """Wait until the edge on `port` answers `/healthz` with 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /healthz HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
            data = await r.read()
            w.close()
            if b" 200 " in data.split(b"\r\n", 1)[0]:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("the edge never became healthy")
