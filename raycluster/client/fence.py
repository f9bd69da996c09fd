"""`Fence`: the per-subscription frame check a client end applies before `LiveList.apply`.

Same rule as the gateway's: a `reset` of an older epoch is stale; a `reset`
otherwise starts a new run (`seq` + 1 expected next). Any other frame must
carry the current epoch and the next `seq`; an older one is stale, a newer
one means a frame was lost — the caller asks for a resync, and every frame
until the next `reset` is dropped.
"""

from __future__ import annotations

from typing import Literal

__all__ = ("Fence", "Verdict")

Verdict = Literal["ok", "stale", "gap"]


class Fence:
    """Decides per frame: apply it (`ok`), drop it (`stale`), or drop it and resync (`gap`).

    `gap` is returned once per gap; later frames are `stale` until a `reset`.
    """

    __slots__ = ("epoch", "gap", "next_seq")

    def __init__(self) -> None:
        self.epoch = -1
        self.next_seq = 0
        self.gap = False

    def clear(self) -> None:
        """Forget the stream (a new connection starts with a fresh `reset`)."""
        self.epoch, self.next_seq, self.gap = -1, 0, False

    def check(self, seq: int, epoch: int, is_reset: bool) -> Verdict:
        """The verdict on one frame; updates the state for the next."""
        if is_reset:
            if epoch < self.epoch:
                return "stale"
            self.epoch, self.next_seq, self.gap = epoch, seq + 1, False
            return "ok"
        if epoch == self.epoch and seq == self.next_seq and not self.gap:
            self.next_seq = seq + 1
            return "ok"
        if epoch < self.epoch or (epoch == self.epoch and seq < self.next_seq) or self.gap:
            return "stale"
        self.gap = True
        return "gap"
