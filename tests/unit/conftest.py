"""Unit tier: no Ray, no Redis, no server at all (a test that reaches for one fails loudly).

`ray.init` raises, and so does every socket connect made by a unit test (its
tasks and threads included: the guard follows the test's context, so the
background tasks of other folders' session fixtures in a whole-suite run are
left alone).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import pytest

_IN_UNIT_TEST: ContextVar[bool] = ContextVar("in_unit_test", default=False)


def _refuse_ray(*a: object, **k: object) -> None:
    raise RuntimeError("unit tests must not start Ray")


def _refusing(connect: Callable[[socket.socket, Any], Any]) -> Callable[..., Any]:
    def guarded(self: socket.socket, address: Any) -> Any:
        if _IN_UNIT_TEST.get():
            raise ConnectionRefusedError(
                f"unit tests must not connect to a server (Redis, Ray, ...): {address!r}"
            )
        return connect(self, address)

    return guarded


@pytest.fixture(autouse=True)
def _no_servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    ray = sys.modules.get("ray")
    if ray is not None:
        monkeypatch.setattr(ray, "init", _refuse_ray)
    monkeypatch.setattr(socket.socket, "connect", _refusing(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", _refusing(socket.socket.connect_ex))
    token = _IN_UNIT_TEST.set(True)
    try:
        yield
    finally:
        _IN_UNIT_TEST.reset(token)
