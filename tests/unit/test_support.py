"""The shared test support: `wait_for` says what it waited for; `fast_tier` merges sections."""

from __future__ import annotations

import pytest
from support import HEARTBEAT_TTL_S, fast_tier, unique, wait_for


async def test_wait_for_returns_once_true_sync_or_async() -> None:
    calls = []

    def soon() -> bool:
        calls.append(1)
        return len(calls) >= 3

    async def at_once() -> list[int]:
        return [1]

    assert await wait_for(soon, 5, interval_s=0) >= 0
    assert len(calls) == 3
    await wait_for(at_once, 1)


async def test_wait_for_names_what_it_awaited_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"after 0.05s waiting for the answer$"):
        await wait_for(lambda: False, 0.05, what="the answer")
    seen = {"n": 0}
    with pytest.raises(AssertionError, match=r"waiting for n == 1: 0; last value: \[\]$"):
        await wait_for(list, 0.05, what=lambda: f"n == 1: {seen['n']}")
    with pytest.raises(AssertionError, match=r"waiting for .*lambda: seen\[\"n\"\] > 0"):
        await wait_for(lambda: seen["n"] > 0, 0.05)


def test_fast_tier_merges_sections_key_by_key() -> None:
    cfg = fast_tier({"name": "a", "redis": {"key_prefix": "p"}}, {"redis": {"key_prefix": "q"}})
    assert cfg["name"] == "a"
    assert cfg["redis"] == {"heartbeat_ttl_s": HEARTBEAT_TTL_S, "key_prefix": "q"}
    assert fast_tier({"redis": None})["redis"] is None  # a non-dict replaces the section


def test_unique_names_differ_and_keep_their_label() -> None:
    a, b = unique("t"), unique("t")
    assert a != b and a.startswith("t-") and b.startswith("t-")
