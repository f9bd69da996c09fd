"""A private multi-node Ray (`ray.cluster_utils.Cluster`) and how to clean up after one.

A `Cluster` cannot share a process with the session's local Ray, so the
multi-node scenarios run in a process of their own (`multinode_run.py`); its
Ray lives under its own `RAY_TMPDIR` (its temp dirs, sockets and the
"current cluster" address file, which would otherwise point `ray.init("auto")`
on this machine at it) and on free ports. `stop_processes_under` ends
whatever is left of it by that directory, never by process name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from support import free_port

__all__ = ("head_args", "stop_processes_under")


def head_args(**resources: Any) -> dict[str, Any]:
    """`Cluster(head_node_args=...)` for a head on free ports, no dashboard."""
    return {
        "gcs_server_port": free_port(),
        "include_dashboard": False,
        "dashboard_agent_listen_port": free_port(),
        "metrics_export_port": free_port(),
        "runtime_env_agent_port": free_port(),
        "ray_client_server_port": free_port(),
        **resources,
    }


def _pids_under(temp_dir: str) -> set[int]:
    """Processes naming `temp_dir` on their command line or holding a file under it,
    and their descendants."""
    parents: dict[int, int] = {}
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            parents[pid] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if temp_dir in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.add(pid)
                continue
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd).startswith(temp_dir):
                        found.add(pid)
                        break
        except (OSError, ValueError, IndexError):
            continue
    grew = True
    while grew:
        kids = {p for p, pp in parents.items() if pp in found and p not in found}
        found |= kids
        grew = bool(kids)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_processes_under(temp_dir: str) -> set[int]:
    """SIGTERM what runs under `temp_dir`, SIGKILL what is left; the pids still alive."""
    pids: set[int] = set()
    for sig, grace_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        pids = {p for p in _pids_under(temp_dir) if _alive(p)}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            pids = {p for p in pids if _alive(p)}
            time.sleep(0.2)
        if not pids:
            return set()
    return pids
