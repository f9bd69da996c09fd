"""Unit tier: no Ray, no Redis (a test that reaches for Ray fails loudly)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = sys.modules.get("ray")
    if ray is not None:

        def refuse(*a: object, **k: object) -> None:
            raise RuntimeError("unit tests must not start Ray")

        monkeypatch.setattr(ray, "init", refuse)
