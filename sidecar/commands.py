"""`signal` and `status`: a running sidecar, seen and told from a shell.

For workers without Python (`dynamo-health-sidecar signal ready generate`) and for operators
(`kubectl exec POD -c health-sidecar -- dynamo-health-sidecar status`). Both speak to the
worker's socket through the standard-library client, print one line on stderr on failure,
and exit with a code a script can test.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from sidecar.client import SidecarClient, SidecarError, SidecarRejected, SidecarUnavailable

EXIT_OK = 0
EXIT_UNAVAILABLE = 1
EXIT_REFUSED = 2
EXIT_NOT_READY = 3


def signal_sidecar(
    action: str, endpoint: str | None, socket_path: str | None, pid: int | None = None
) -> int:
    """Tell the sidecar an endpoint is (not) ready, or that the worker is alive."""
    client = SidecarClient(socket_path)
    try:
        if action == "heartbeat":
            answer = client.heartbeat(pid)
            print(f"heartbeat: worker life {answer['life']}")
        else:
            assert endpoint is not None
            answer = client.set_endpoint(endpoint, "ready" if action == "ready" else "notready")
            print(f"{endpoint}: {answer['status']} (worker {answer['overall']})")
    except SidecarError as exc:
        return _fail(exc)
    return EXIT_OK


def show_status(socket_path: str | None, as_json: bool, out: TextIO = sys.stdout) -> int:
    """Print what the sidecar sees; exit 0 when ready (or healthy), 3 when not."""
    client = SidecarClient(socket_path)
    try:
        health = client.status()
        worker = client.worker()
    except SidecarError as exc:
        return _fail(exc)
    if as_json:
        out.write(json.dumps({"health": health, "worker": worker}, indent=2, sort_keys=True) + "\n")
    else:
        out.write(render_table(health, worker))
    ready = health.get("status") in ("ready", "healthy")
    return EXIT_OK if ready else EXIT_NOT_READY


def render_table(health: Mapping[str, Any], worker: Mapping[str, Any]) -> str:
    """The status as a person reads it: the verdict first, then the endpoints."""
    rows = [("status", str(health.get("status")))]
    state = "alive" if worker["alive"] else f"ended: {worker['end_reason']}"
    rows.append(("life", f"{worker['life']} ({state})"))
    rows.append(("live", "yes" if worker["live"] else f"no: {worker['reason']}"))
    if worker.get("draining"):
        rows.append(("draining", "yes"))
    if worker.get("pid") is not None:
        rows.append(("pid", str(worker["pid"])))
    process = worker.get("process")
    if process:
        memory = int(process.get("rss_bytes", 0)) / 2**20
        rows.append(
            ("process", f"cpu {process.get('cpu_percent', 0):.1f}%, memory {memory:.0f} MiB")
        )
    if worker.get("status_text"):
        rows.append(("status text", str(worker["status_text"])))
    if worker.get("heartbeat_deadline_seconds") is not None:
        rows.append(("heartbeat due in", f"{worker['heartbeat_deadline_seconds']:.1f}s"))
    rows.append(("instances", str(worker["instances"])))
    for lease in worker.get("leases") or ():
        rows.append((f"lease {lease['lease']}", _describe_lease(lease)))
    lines = [f"{name:<17}{value}" for name, value in rows]
    endpoints = worker.get("endpoints") or {}
    if endpoints:
        width = max(17, *(len(name) + 2 for name in endpoints))
        lines.append("")
        lines.append(f"{'ENDPOINT':<{width}}{'STATUS':<10}{'FOR':<10}CHANGES")
        for name, record in sorted(endpoints.items()):
            since = _duration(float(record["since_seconds"]))
            lines.append(f"{name:<{width}}{record['status']:<10}{since:<10}{record['transitions']}")
    return "\n".join(lines) + "\n"


def _describe_lease(lease: Mapping[str, Any]) -> str:
    """`held by session 1, 2 instances (7587888160958628000)`: who keeps what."""
    ids = ", ".join(str(i) for i in lease["instance_ids"])
    more = ", ..." if len(lease["instance_ids"]) < lease["instances"] and ids else ""
    line = f"{lease['held_by']}, {lease['instances']} instances ({ids}{more})"
    if lease.get("expires_in_seconds") is not None:
        line += f", expires in {lease['expires_in_seconds']:.1f}s"
    return line


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _fail(exc: SidecarError) -> int:
    print(f"dynamo-health-sidecar: {exc}", file=sys.stderr)
    if isinstance(exc, SidecarUnavailable):
        return EXIT_UNAVAILABLE
    if isinstance(exc, SidecarRejected):
        return EXIT_REFUSED
    return EXIT_UNAVAILABLE
