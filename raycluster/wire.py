"""The frames shards, gateways and clients exchange: one format below all three.

On the wire a frame is a list `[sub_id, seq, epoch, delta, rev]` (`delta` is
a `LiveDelta` as a JSON object; `rev` the revision of the subscription's query
the frame belongs to), so a batch for many subscriptions is one message. A
gateway hands a frame to its client as a `GatewayDelta`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raycluster.livequery.models import LiveDelta, delta_from_wire, trusted

__all__ = ("GatewayDelta", "WireFrame", "gateway_deltas")

WireFrame = list[Any]  # [sub_id, seq, epoch, delta-as-dict, rev]


class GatewayDelta(BaseModel):
    """One frame of one subscription, as a gateway hands it to its consumer."""

    model_config = ConfigDict(frozen=True)
    sub_id: str
    seq: int = Field(description="Contiguous per subscription and epoch.")
    epoch: int = Field(description="Fencing epoch of the partition claim that sent it.")
    delta: LiveDelta


def gateway_deltas(entries: list[WireFrame]) -> list[GatewayDelta]:
    """`GatewayDelta`s of wire entries `[sub_id, seq, epoch, delta-dict, ...]`."""
    return [
        trusted(GatewayDelta, {"sub_id": e[0], "seq": e[1], "epoch": e[2],
                               "delta": delta_from_wire(e[3])})
        for e in entries
    ]  # fmt: skip
