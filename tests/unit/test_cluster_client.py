"""The client side: `LiveList` frame application and `Subscription` buffering."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from support import wait_for

from raycluster.client import LiveList, Subscription
from raycluster.cluster import GatewayDelta
from raycluster.errors import ClosedError, DesyncError
from raycluster.livequery import Cursor, DeltaOp, LiveDelta, LiveQuery

pytestmark = pytest.mark.timeout(30)


def d(op: str, agg_id: str | None = None, **kw: Any) -> LiveDelta:
    row = kw.pop("row", {"v": agg_id} if op not in ("leave", "unmatch", "reset") else None)
    return LiveDelta(op=DeltaOp(op), agg_id=agg_id, row=row, **kw)


def window(*ids: str) -> LiveList:
    ll = LiveList()
    ll.apply(d("reset", count=len(ids)))
    for i, agg_id in enumerate(ids):
        ll.apply(d("enter", agg_id, new_index=i, version=1))
    return ll


def state(ll: LiveList) -> tuple[Any, ...]:
    return ([(i.agg_id, i.version, i.row) for i in ll.items], ll.expected, ll.resets)


# -- LiveList ------------------------------------------------------------------------


def test_reset_announces_enters_and_completes_after_them() -> None:
    ll = window("x")
    ll.apply(d("reset", count=2))
    assert ll.ids == [] and not ll.complete and ll.resets == 2
    ll.apply(d("enter", "a", new_index=0))
    assert not ll.complete
    ll.apply(d("enter", "b", new_index=1))
    assert ll.complete and ll.ids == ["a", "b"] and len(ll) == 2
    empty = LiveList()
    empty.apply(d("reset", count=0))
    assert empty.complete and empty.ids == []


def test_maintained_ops() -> None:
    ll = window("a", "b", "c")
    ll.apply(d("enter", "n", new_index=1, version=1))
    assert ll.ids == ["a", "n", "b", "c"]
    ll.apply(d("enter", "z", new_index=4, version=1))  # append at the end
    assert ll.ids == ["a", "n", "b", "c", "z"]
    ll.apply(d("leave", "b", old_index=2))
    assert ll.ids == ["a", "n", "c", "z"]
    ll.apply(d("move", "a", old_index=0, new_index=3, version=2, row={"v": "a2"}))
    assert ll.ids == ["n", "c", "z", "a"]
    assert ll.items[3].version == 2 and ll.items[3].row == {"v": "a2"}
    ll.apply(d("move", "a", old_index=3, new_index=0, version=3))
    assert ll.ids == ["a", "n", "c", "z"]
    ll.apply(d("update", "c", new_index=2, version=5, row={"v": "c5"}))
    assert ll.ids == ["a", "n", "c", "z"] and ll.rows[2] == {"v": "c5"}
    assert ll.items[2].version == 5
    assert [i.agg_id for i in ll] == ll.ids


def test_streamed_ops() -> None:
    ll = LiveList()
    ll.apply(d("reset", count=0))
    ll.apply(d("match", "a", version=1))
    ll.apply(d("match", "b", version=1))
    ll.apply(d("match", "c", version=1))
    assert ll.ids == ["a", "b", "c"]  # arrival order
    ll.apply(d("update", "b", version=2, row={"v": "b2"}))
    assert ll.ids == ["a", "b", "c"] and ll.rows[1] == {"v": "b2"}
    ll.apply(d("unmatch", "a"))
    assert ll.ids == ["b", "c"]
    ll.apply(d("match", "a", version=3))
    assert ll.ids == ["b", "c", "a"]


@pytest.mark.parametrize(
    "frame",
    [
        d("enter", "x", new_index=4),  # past the end
        d("enter", "x", new_index=-1),
        d("enter", "x"),  # no index
        d("leave", "b", old_index=0),  # wrong row at the index
        d("leave", "a", old_index=3),  # out of range
        d("leave", "a"),
        d("move", "b", old_index=0, new_index=1),  # wrong row
        d("move", "a", old_index=0, new_index=3),  # new index out of range
        d("move", "a", old_index=0),
        d("update", "a", new_index=1),  # wrong row
        d("update", "a", new_index=7),
        d("unmatch", "zz"),  # not held
    ],
    ids=repr,
)
def test_misfitting_frame_raises_and_leaves_the_list_unchanged(frame: LiveDelta) -> None:
    ll = window("a", "b", "c")
    before = state(ll)
    with pytest.raises(DesyncError):
        ll.apply(frame)
    assert state(ll) == before


def test_misfitting_frame_mid_window_keeps_the_owed_enters() -> None:
    ll = LiveList()
    ll.apply(d("reset", count=3))
    ll.apply(d("enter", "a", new_index=0))
    before = state(ll)
    with pytest.raises(DesyncError):
        ll.apply(d("enter", "b", new_index=5))
    assert state(ll) == before and ll.expected == 2


@pytest.mark.parametrize(
    "frame", [d("update", "zz", version=2), d("match", "a", version=2)], ids=repr
)
def test_streamed_frame_that_shows_a_lost_frame_raises(frame: LiveDelta) -> None:
    ll = LiveList()
    ll.apply(d("reset", count=0))
    ll.apply(d("match", "a", version=1))
    before = state(ll)
    with pytest.raises(DesyncError):
        ll.apply(frame)
    assert state(ll) == before


# -- Subscription ----------------------------------------------------------------------


class FakeControl:
    """Records what a Subscription asks of its gateway; a reanchor gets an empty window."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.sub: Subscription | None = None

    async def reanchor(self, sub_id: str, cursor: Cursor | None, limit: int) -> None:
        self.calls.append(("reanchor", (cursor, limit)))
        if self.sub is not None:
            self.sub.deliver(frames_of(d("reset", count=0), seq0=100))

    async def unsubscribe(self, sub_id: str) -> None:
        self.calls.append(("unsubscribe", sub_id))

    async def resync(self, sub_id: str) -> None:
        self.calls.append(("resync", sub_id))


Q = LiveQuery(entity="asset", limit=5)


def gd(seq: int, delta: LiveDelta, epoch: int = 1) -> GatewayDelta:
    return GatewayDelta(sub_id="s1", seq=seq, epoch=epoch, delta=delta)


def frames_of(*deltas: LiveDelta, seq0: int = 1, epoch: int = 1) -> list[GatewayDelta]:
    return [gd(seq0 + k, x, epoch) for k, x in enumerate(deltas)]


async def test_subscription_applies_frames_and_iterates_them() -> None:
    sub = Subscription("s1", "acme", Q, FakeControl(), buffer=100)
    done = sub.next_reset()
    sub.deliver(frames_of(d("reset", count=2), d("enter", "a", new_index=0)))
    assert not done.done()  # one enter still owed
    sub.deliver(frames_of(d("enter", "b", new_index=1), seq0=3))
    assert done.done()
    assert sub.rows.ids == ["a", "b"] and sub.epoch == 1
    got = [await anext(sub) for _ in range(3)]
    assert [f.delta.op for f in got] == [DeltaOp.RESET, DeltaOp.ENTER, DeltaOp.ENTER]
    assert [f.seq for f in got] == [1, 2, 3]


async def test_subscription_overflow_becomes_a_synthetic_reset() -> None:
    sub = Subscription("s1", "acme", Q, FakeControl(), buffer=4)
    sub.deliver(
        frames_of(
            d("reset", count=3),
            d("enter", "a", new_index=0, version=1),
            d("enter", "b", new_index=1, version=1),
            d("enter", "c", new_index=2, version=1),
        )
    )
    assert len(sub.drain()) == 4  # exactly the bound: kept
    sub.deliver(frames_of(d("update", "b", new_index=1, version=2, row={"v": "b2"}), seq0=5))
    sub.deliver(
        frames_of(
            d("leave", "a", old_index=0),
            d("enter", "d", new_index=2, version=1),
            d("move", "c", old_index=1, new_index=0, version=2),
            d("enter", "e", new_index=3, version=1),
            seq0=6,
        )
    )
    out = sub.drain()
    assert sub.dropped_frames > 0
    assert out[0].delta.op is DeltaOp.RESET
    assert out[0].delta.count == len(sub.rows) == 4
    assert [f.delta.op for f in out[1:]] == [DeltaOp.ENTER] * 4
    assert [f.delta.agg_id for f in out[1:]] == sub.rows.ids == ["c", "b", "d", "e"]
    assert [f.delta.new_index for f in out[1:]] == [0, 1, 2, 3]
    assert [f.delta.row for f in out[1:]] == sub.rows.rows
    assert out[2].delta.version == 2 and out[2].delta.row == {"v": "b2"}
    # A client rebuilding from the synthetic frames alone gets the same list.
    replay = LiveList()
    for f in out:
        replay.apply(f.delta)
    assert replay.ids == sub.rows.ids and replay.rows == sub.rows.rows


async def test_subscription_desync_skips_the_frame_and_asks_for_a_resync() -> None:
    control = FakeControl()
    sub = Subscription("s1", "acme", Q, control, buffer=100)
    sub.deliver(frames_of(d("reset", count=1), d("enter", "a", new_index=0)))
    sub.drain()
    sub.deliver(frames_of(d("leave", "zz", old_index=0), seq0=3))
    assert sub.rows.ids == ["a"] and sub.drain() == []
    await wait_for(lambda: ("resync", "s1") in control.calls, 2)


async def test_subscription_reanchor_and_close_go_to_the_gateway() -> None:
    control = FakeControl()
    sub = control.sub = Subscription("s1", "acme", Q, control, buffer=100)
    cursor = Cursor(values=["a"])
    await sub.reanchor(cursor, 3)
    await sub.close()
    await sub.close()  # idempotent
    assert control.calls == [("reanchor", (cursor, 3)), ("unsubscribe", "s1")]
    assert [f.delta.op for f in sub.drain()] == [DeltaOp.RESET]  # queued before close
    with pytest.raises(StopAsyncIteration):
        await anext(sub)
    with pytest.raises(ClosedError):
        await sub.reanchor(None, 3)


# -- packaging -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code", ["import raycluster.client", "import raycluster; raycluster.LiveList"]
)
def test_client_package_imports_on_its_own(code: str) -> None:
    # Regression: client.subscription once imported cluster.protocol at runtime,
    # and cluster.gateway imports client.subscription: a cycle on a cold import.
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-1]
