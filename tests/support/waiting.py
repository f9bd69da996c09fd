"""Waiting on a condition: poll until it holds, fail the test if it does not in time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

__all__ = ("wait_for", "wait_until")


async def wait_for(
    predicate: Callable[[], Any],
    timeout_s: float = 10.0,
    *,
    what: str | Callable[[], str] | None = None,
    interval_s: float = 0.02,
) -> float:
    """Poll `predicate` (sync or async) every `interval_s` until its result is truthy;
    the seconds it took.

    After `timeout_s` without success it raises an `AssertionError` naming what was
    awaited (`what`, called then if it is a callable, so it can show the state at
    the deadline; by default the predicate's source) and the predicate's last
    result when that says more than `False`. Errors of the predicate propagate.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(predicate, timeout_s, what, result))
        await asyncio.sleep(interval_s)


def wait_until(
    predicate: Callable[[], Any],
    timeout_s: float = 10.0,
    *,
    what: str | Callable[[], str] | None = None,
    interval_s: float = 0.1,
) -> float:
    """`wait_for` for synchronous tests (it sleeps the thread): same rules, same failure."""
    start = time.monotonic()
    deadline = start + timeout_s
    while True:
        result = predicate()
        if result:
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(predicate, timeout_s, what, result))
        time.sleep(interval_s)


def _timed_out(
    predicate: Callable[[], Any], timeout_s: float, what: str | Callable[[], str] | None, last: Any
) -> str:
    text = f"timed out after {timeout_s}s waiting for {_describe(predicate, what)}"
    if not isinstance(last, bool):
        text += f"; last value: {last!r}"
    return text


def _describe(predicate: Callable[[], Any], what: str | Callable[[], str] | None) -> str:
    if callable(what):
        return what()
    if what:
        return what
    try:  # a lambda names itself best by its source line
        return " ".join(inspect.getsource(predicate).split())
    except (OSError, TypeError):
        return repr(predicate)
