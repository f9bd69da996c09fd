"""A client that stops reading: bounded memory, a reset instead of the backlog, never a gap."""

from __future__ import annotations

import asyncio
import json
import socket

from edge_helpers import BUFFER, SEND_TIMEOUT_S, Edge, by_name, token, truth
from support import unique, wait_for

from raycluster.client import LiveList
from raycluster.livequery import LiveDelta

LIMIT = 40
BLOB = "x" * 16_000  # big frames fill the socket buffers quickly


def dechunk(raw: bytes) -> bytes:
    body = raw.split(b"\r\n\r\n", 1)[1]
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        if not size_line:
            break
        n = int(size_line, 16)
        if n == 0 or len(rest) < n:
            out += rest[:n]
            break
        out += rest[:n]
        body = rest[n + 2 :]
    return bytes(out)


async def test_slow_reader_gets_reset_or_disconnect_never_a_gap(edge: Edge) -> None:
    tenant = unique("slow")
    w = edge.rows(tenant)
    for i in range(LIMIT):
        await w.put(f"a{i:03}", name=f"n{i:03}", kind="pump", temp=i, blob=BLOB)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", edge.port))
    body = json.dumps(by_name(LIMIT).model_dump(mode="json")).encode()
    head = (
        f"POST /v1/live HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {token(tenant)}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    await loop.sock_sendall(sock, head.encode() + body)
    resets0 = edge.hub.counters["slow_consumer_resets"]
    disconnects0 = edge.hub.counters["slow_consumer_disconnects"]
    await wait_for(
        lambda: any(s.conn.tenant == tenant for s in edge.hub.subs.values()),
        10,
        what="the edge to hold the subscription",
    )
    esub = next(s for s in edge.hub.subs.values() if s.conn.tenant == tenant)
    sid = esub.id
    longest = 0
    # many writes while the client does not read
    for round_ in range(12):
        for i in range(LIMIT):
            await w.put(f"a{i:03}", name=f"n{i:03}", kind="pump", temp=round_, blob=BLOB)
            longest = max(longest, len(esub.out))
    # never more than the buffer plus a window, plus the reset and window replacing them
    assert longest <= BUFFER + 2 * (LIMIT + 1), longest
    assert edge.hub.counters["slow_consumer_resets"] > resets0
    # now read everything it was sent
    chunks = []
    end = loop.time() + SEND_TIMEOUT_S + 5
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    while loop.time() < end:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 1.0)
        except TimeoutError:
            if edge.hub.counters["slow_consumer_disconnects"] > disconnects0 or (
                sid in edge.hub.subs and not esub.out
            ):
                break
            continue
        if not data:
            break
        chunks.append(data)
    sock.close()
    text = dechunk(b"".join(chunks)).decode()
    rows = LiveList()
    seqs: list[int] = []
    ops: list[str] = []
    last_error = None
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if "event" not in fields:
            continue
        data = json.loads(fields["data"])
        if fields["event"] == "error":
            last_error = data["reason"]
        elif fields["event"] != "subscribed":
            seqs.append(data["seq"])
            ops.append(fields["event"])
            rows.apply(LiveDelta.model_validate(data["delta"]))
    # seq only ever jumps onto a reset (a backlog replaced): the fence accepts that, no gap
    jumps = [k for k in range(1, len(seqs)) if seqs[k] != seqs[k - 1] + 1]
    assert all(ops[k] == "reset" and seqs[k] > seqs[k - 1] for k in jumps), "a gap"
    if edge.hub.counters["slow_consumer_disconnects"] > disconnects0:
        assert last_error in (None, "slow_consumer")
        assert sid not in edge.hub.subs
        assert await edge.registry.get(sid) is None
    else:  # it kept up in the end: a reset replaced its backlog, and its rows are exact
        assert edge.hub.counters["frames_replaced"] > 0
        assert rows.ids == truth(w.rows, LIMIT) and rows.complete
        assert [r["temp"] for r in rows.rows] == [w.rows[i]["temp"] for i in rows.ids]
