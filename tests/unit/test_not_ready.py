"""`NotReadyError`: one line that names what a start waited for, however many actors."""

from __future__ import annotations

import pickle

from raycluster.errors import MAX_LISTED, NotReadyError


def test_a_few_pending_actors_are_each_named_with_their_demand() -> None:
    e = NotReadyError(
        "t", 15, {"shard-1": {"CPU": 64.0}, "shard-0": {"CPU": 64.0}}, {},
        {"CPU": 124.0}, {"CPU": 4.0}, {"CPU": 4.0},
    )  # fmt: skip
    assert str(e) == (
        "tier 't': shard-0, shard-1 not ready after 15 s; missing resources: CPU 124 "
        "(shard-0 needs {'CPU': 64.0}; shard-1 needs {'CPU': 64.0}; free {'CPU': 4.0} of "
        "{'CPU': 4.0}); what the call started was stopped"
    )
    assert str(pickle.loads(pickle.dumps(e))) == str(e)  # it crosses processes intact


def test_many_pending_actors_are_summed_up_in_natural_order() -> None:
    pending = {f"shard-{i}": {"CPU": 1.5} for i in range(2, 256)}
    pending["ray-gw-0"] = {"gw": 1.0}
    e = NotReadyError("t", 20, pending, {}, {"CPU": 380.0}, {"CPU": 1.0}, {"CPU": 4.0})
    first = ", ".join(["ray-gw-0", *(f"shard-{i}" for i in range(2, MAX_LISTED + 1))])
    assert str(e).startswith(f"tier 't': {first} and 247 more not ready after 20 s; ")
    assert "(ray-gw-0 needs {'gw': 1.0}; shard-2, shard-3," in str(e)
    assert "and 246 more each need {'CPU': 1.5}; free" in str(e)
    assert len(str(e).splitlines()) == 1 and len(str(e)) < 1000
    assert e.pending == pending  # the fields keep every actor
