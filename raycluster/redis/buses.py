"""The control bus (gateway → shard) and the delta bus (shard → external gateway).

**Control** (`lq:ctrl:{shard}`): read with a consumer group, the consumer
named after the shard, and acknowledged after handling. A reader first
re-reads its own pending (delivered, unacknowledged) entries, so requests a
crashed shard had taken but not finished are delivered again; the group is
created at id 0 with MKSTREAM, so requests sent before any reader existed
(or while it was down) are delivered too.

**Delta** (`lq:delta:{gateway}`): one entry per batch of frames (JSON), the
stream bounded by `MAXLEN ~`; a reader resumes from the last id it saw.

Both readers hold their own blocking connection, reconnect with backoff
after losing it, and resume where they were: nothing lost, nothing repeated
(a control message taken but not acknowledged is not handed out again by the
same reader).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar

import redis.exceptions as rx
from pydantic import BaseModel, ValidationError

from raycluster._resources import AsyncResource
from raycluster._tasks import Backoff, checkpoint
from raycluster.cluster.protocol import Control

from ._client import ReadGate, interruptible, make_client, resolve_url
from .errors import REFUSED, UNREACHABLE, refused, translate_errors
from .settings import RedisSettings

__all__ = (
    "BusStats",
    "ControlMessage",
    "ControlPairs",
    "ControlStream",
    "DeltaStream",
    "RedisControlBus",
    "RedisDeltaBus",
)

log = logging.getLogger(__name__)

_BODY = b"c"  # control entry field: the message (JSON object)
_FRAMES = b"f"  # delta entry field: the batch of frames (JSON array)


@dataclass(slots=True)
class BusStats:
    """Counters of one bus (read them; the bus only adds)."""

    sent: int = 0
    received: int = 0
    malformed: int = 0
    reconnects: int = 0


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """One control request as read from a shard's control stream."""

    id: str
    shard_id: str
    body: dict[str, Any]


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_default)


_R = TypeVar("_R", bound="_Reader")


class _Bus(AsyncResource):
    """What both buses share: a command client, the readers they opened, closing."""

    client_name = "raycluster-bus"

    def __init__(self, url: str, *, settings: RedisSettings | None = None) -> None:
        self.settings = s = settings if settings is not None else RedisSettings.from_env()
        self.keys = s.keys
        self.stats = BusStats()
        self._url = url
        self._client = make_client(url, s, name=self.client_name)
        self._streams: set[_Reader] = set()

    @classmethod
    def from_url(cls, url: str | None = None, *, settings: RedisSettings | None = None) -> Self:
        """A bus with its own connections (closed by `aclose`)."""
        s = settings if settings is not None else RedisSettings.from_env()
        return cls(resolve_url(url, s), settings=s)

    async def _append(self, stream: str, field: bytes, payload: str, maxlen: int, to: str) -> str:
        """XADD one message (bounded `maxlen ~`) to `stream`; its stream id."""
        with translate_errors(f"send to {to}"):
            sid: Any = await self._client.xadd(
                stream, {field: payload}, maxlen=maxlen, approximate=True
            )
        self.stats.sent += 1
        return str(sid.decode())

    async def aclose(self) -> None:
        """Close every reader this bus opened, then the connections."""
        for stream in list(self._streams):
            await stream.aclose()
        await self._client.aclose()

    def _track(self, stream: _R) -> _R:
        self._streams.add(stream)
        stream._on_close.append(self._streams.discard)
        return stream


_T = TypeVar("_T")


class _Reader(AsyncResource, Generic[_T]):
    """Shared life cycle of one blocking stream reader (connection, buffer, close, backoff).

    A subclass's `_fill()` reads once (blocking up to `bus_block_ms`) and
    appends what it read, as items of type `_T`, to `_buf`.
    """

    def __init__(self, bus: _Bus, name: str) -> None:
        self.settings = settings = bus.settings
        self.stats = bus.stats
        self._client = make_client(bus._url, settings, blocking_ms=settings.bus_block_ms, name=name)
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        self._wake = asyncio.Event()
        self._closed = False
        self._gate = ReadGate(self._client)
        self._on_close: list[Callable[[Any], None]] = []
        self._buf: deque[_T] = deque()

    @property
    def closed(self) -> bool:
        """Whether `aclose` was called."""
        return self._closed

    def __aiter__(self) -> Self:
        return self

    async def _next(self) -> _T:
        """The next item read: from the buffer, else read until there is one."""
        while not self._buf:
            checkpoint()
            if self._closed:
                raise StopAsyncIteration
            async with self._gate.busy():
                await self._fill()
        return self._buf.popleft()

    async def _fill(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        """End the iteration (a blocked read returns at once) and close the connection."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        for fn in self._on_close:
            fn(self)
        await self._gate.close(self.settings.socket_timeout_s)

    async def _lost(self, e: BaseException) -> None:
        self.stats.reconnects += 1
        log.warning("%s: Redis unavailable (%s); reconnecting", type(self).__name__, e)
        await interruptible(self._backoff.sleep(), self._wake)  # aclose cuts it short


class ControlStream(_Reader[ControlMessage]):
    """Control messages of one shard, as an async iterator (and async context manager).

    Acknowledge each message after handling it (`ack`); unacknowledged ones
    are delivered again to the next reader of this shard (e.g. after a restart).
    """

    def __init__(self, bus: RedisControlBus, shard_id: str, consumer: str) -> None:
        super().__init__(bus, "raycluster-ctrl-read")
        self.shard_id = shard_id
        self.consumer = consumer
        self._bus = bus
        self._key = bus.keys.ctrl_stream(shard_id)
        self._group = bus.settings.control_group
        self._inflight: set[str] = set()  # handed out, not yet acknowledged
        self._pending_from: str | None = "0"  # None: pending re-read done, read new (">")
        self._group_ready = False

    async def __anext__(self) -> ControlMessage:
        return await self._next()

    async def ack(self, msg: ControlMessage | str, *more: ControlMessage | str) -> None:
        """Acknowledge handled messages."""
        await self._bus.ack(self.shard_id, msg, *more)

    def _acked(self, ids: Sequence[str]) -> None:
        self._inflight.difference_update(ids)

    async def _fill(self) -> None:
        try:
            if not self._group_ready:
                await self._ensure_group()
            if self._pending_from is not None:
                await self._read_pending()
                return
            done, resp = await interruptible(
                self._client.xreadgroup(
                    self._group,
                    self.consumer,
                    {self._key: ">"},
                    count=self.settings.bus_count,
                    block=self.settings.bus_block_ms,
                ),
                self._wake,
            )
            if done and resp:
                await self._take(resp[0][1])
            self._backoff.reset()
        except REFUSED as e:
            raise refused(f"read {self._key}", e) from e
        except UNREACHABLE as e:  # (first: a cluster between masters answers ResponseErrors)
            # Entries delivered on the lost connection are pending now: re-read them.
            self._pending_from = "0"
            await self._lost(e)
        except rx.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            # The stream or group vanished (e.g. a restarted Redis without persistence).
            self._group_ready = False

    async def _ensure_group(self) -> None:
        try:
            await self._client.xgroup_create(self._key, self._group, id="0", mkstream=True)
        except rx.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    async def _read_pending(self) -> None:
        assert self._pending_from is not None
        resp: Any = await self._client.xreadgroup(
            self._group,
            self.consumer,
            {self._key: self._pending_from},
            count=self.settings.bus_count,
        )
        entries = resp[0][1] if resp else []
        if not entries:
            self._pending_from = None
            return
        self._pending_from = entries[-1][0].decode()
        await self._take([e for e in entries if e[0].decode() not in self._inflight])

    async def _take(self, entries: list[Any]) -> None:
        bad: list[str] = []
        for raw_id, fields in entries:
            mid = raw_id.decode()
            body = None
            try:
                if fields:
                    body = json.loads(fields[_BODY])
            except (KeyError, ValueError):
                body = None
            if not isinstance(body, dict):
                # Unreadable (or trimmed away while pending): skip it for good.
                self.stats.malformed += 1
                log.warning("control: skipped malformed entry %s %s", self._key, mid)
                bad.append(mid)
                continue
            self._inflight.add(mid)
            self.stats.received += 1
            self._buf.append(ControlMessage(mid, self.shard_id, body))
        if bad:
            await self._client.xack(self._key, self._group, *bad)


class ControlPairs(AsyncResource):
    """`(message id, Control)` pairs of one shard (the `ControlBus.controls` form).

    A message that is not a valid `Control` is counted as malformed,
    acknowledged and skipped.
    """

    def __init__(self, stream: ControlStream) -> None:
        self.stream = stream

    def __aiter__(self) -> ControlPairs:
        return self

    async def __anext__(self) -> tuple[str, Control]:
        while True:
            msg = await self.stream.__anext__()
            try:
                return msg.id, Control.model_validate(msg.body)
            except ValidationError:
                self.stream.stats.malformed += 1
                self.stream.stats.received -= 1
                log.warning("control: skipped invalid control %s: %r", msg.id, msg.body)
                await self.stream.ack(msg)

    async def aclose(self) -> None:
        """Close the underlying stream."""
        await self.stream.aclose()


class RedisControlBus(_Bus):
    """Control requests to shards over `lq:ctrl:{shard}` (the `ControlBus` port).

    Delivery is at least once: a message stays pending until acknowledged
    and is re-delivered to the next reader of that shard. (redis-py retries a
    send after a dropped connection, so a message may rarely be sent twice;
    controls are idempotent per subscription.)
    """

    client_name = "raycluster-ctrl"

    async def send_control(self, shard_id: str, control: Control | Mapping[str, Any]) -> None:
        """Append a control message (a `Control` or any JSON object) for `shard_id`."""
        await self.send_control_id(shard_id, control)

    async def send_control_id(
        self, shard_id: str, control: Control | BaseModel | Mapping[str, Any]
    ) -> str:
        """`send_control`, returning the message's stream id."""
        body = _json(control if isinstance(control, BaseModel) else dict(control))
        stream = self.keys.ctrl_stream(shard_id)
        return await self._append(stream, _BODY, body, self.settings.ctrl_maxlen, shard_id)

    def control(self, shard_id: str, *, consumer: str | None = None) -> ControlStream:
        """The control messages of `shard_id` as `ControlMessage`s (body: the JSON object).

        The consumer is named after the shard unless given. Iterate it;
        acknowledge each message after handling it.
        """
        return self._track(ControlStream(self, shard_id, consumer or shard_id))

    def controls(self, shard_id: str) -> ControlPairs:
        """`(message id, Control)` pairs of `shard_id`: first any unacked, then new ones."""
        return ControlPairs(self.control(shard_id))

    async def ack(
        self, shard_id: str, msg_id: str | ControlMessage, *more: str | ControlMessage
    ) -> None:
        """Acknowledge handled messages of `shard_id` (acking twice is harmless)."""
        ids = [m.id if isinstance(m, ControlMessage) else m for m in (msg_id, *more)]
        for stream in self._streams:
            if isinstance(stream, ControlStream) and stream.shard_id == shard_id:
                stream._acked(ids)
        with translate_errors(f"ack control of {shard_id}"):
            await self._client.xack(
                self.keys.ctrl_stream(shard_id), self.settings.control_group, *ids
            )

    async def pending(self, shard_id: str) -> int:
        """How many messages of `shard_id` were delivered but not acknowledged."""
        with translate_errors(f"pending control of {shard_id}"):
            try:
                info: Any = await self._client.xpending(
                    self.keys.ctrl_stream(shard_id), self.settings.control_group
                )
            except rx.ResponseError as e:
                if "NOGROUP" in str(e):
                    return 0
                raise
        return int(info["pending"])


class DeltaStream(_Reader[tuple[str, list[Any]]]):
    """Delta batches of one gateway (each a list of frames), as an async iterator.

    `last_id` is the id of the last batch read: pass it to `deltas()` later
    to resume exactly after it. Also an async context manager.
    """

    def __init__(self, bus: RedisDeltaBus, gateway_id: str, last_id: str) -> None:
        super().__init__(bus, "raycluster-delta-read")
        self.gateway_id = gateway_id
        self._key = bus.keys.delta_channel(gateway_id)
        self._last: str = last_id

    @property
    def last_id(self) -> str:
        """The id of the last batch handed out (`$` until the first read)."""
        return self._last

    async def __anext__(self) -> list[Any]:
        mid, frames = await self._next()
        self._last = mid
        return frames

    async def _fill(self) -> None:
        try:
            if self._last == "$":
                # Resolve '$' once: re-sending '$' on every read would skip what
                # arrived between two reads.
                last: Any = await self._client.xrevrange(self._key, "+", "-", count=1)
                self._last = last[0][0].decode() if last else "0-0"
            done, resp = await interruptible(
                self._client.xread(
                    {self._key: self._last},
                    count=self.settings.bus_count,
                    block=self.settings.bus_block_ms,
                ),
                self._wake,
            )
            self._backoff.reset()
        except REFUSED as e:
            raise refused(f"read {self._key}", e) from e
        except UNREACHABLE as e:
            await self._lost(e)
            return
        if not done or not resp:
            return
        for raw_id, fields in resp[0][1]:
            mid = raw_id.decode()
            frames = None
            try:
                frames = json.loads(fields[_FRAMES])
            except (KeyError, ValueError, TypeError):
                frames = None
            if not isinstance(frames, list):
                self.stats.malformed += 1
                log.warning("delta: skipped malformed entry %s %s", self._key, mid)
                self._last = mid  # nothing buffered after it yet: skipping moves the position
                continue
            self.stats.received += 1
            self._buf.append((mid, frames))


class RedisDeltaBus(_Bus):
    """Delta batches to external gateways over `lq:delta:{gateway}` (the `DeltaBus` port)."""

    client_name = "raycluster-delta"

    async def send(self, gateway_id: str, frames: Sequence[Any]) -> None:
        """Append one batch of frames (one XADD, a JSON array) for `gateway_id`.

        Frames are JSON values (wire frames `[sub_id, seq, epoch, delta]`,
        dicts, or pydantic models). At least once, as `send_control`.
        """
        await self.send_id(gateway_id, frames)

    async def send_id(self, gateway_id: str, frames: Sequence[Any]) -> str:
        """`send`, returning the batch's stream id."""
        stream = self.keys.delta_channel(gateway_id)
        payload = _json(list(frames))
        return await self._append(stream, _FRAMES, payload, self.settings.delta_maxlen, gateway_id)

    async def drop(self, gateway_id: str) -> None:
        """Delete a gateway's delta stream (it closed, or it is gone for good)."""
        with translate_errors(f"drop delta stream of {gateway_id}"):
            await self._client.delete(self.keys.delta_channel(gateway_id))

    def deltas(self, gateway_id: str, last_id: str = "$") -> DeltaStream:
        """Batches for `gateway_id` strictly after `last_id` (`$`: from now on)."""
        return self._track(DeltaStream(self, gateway_id, last_id))
