"""What a new process costs, each measurement returning numbers: the exec probe users
write instead of a sidecar (a process per probe), and the sidecar's own start, from exec
to the first probe answered."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import load
from fleet import free_port
from progress import log
from rig import Rig
from sidecars import serve_argv


def exec_probe(rig: Rig) -> dict[str, Any]:
    """`test -f` spawned directly, and through `sh -c` as many probes are written."""
    p = rig.profile
    ready = rig.fleet.rundir / "ready"
    ready.touch()
    log(f"exec probe: `test -f` as a new process, {p.exec_probe_runs} times")
    test = shutil.which("test") or "test"
    direct = load.exec_probe([test, "-f", str(ready)], p.exec_probe_runs)
    shell = load.exec_probe(["sh", "-c", f"test -f {ready}"], p.exec_probe_runs)
    return {"direct": direct, "shell": shell}


def _first_answers(
    proc: subprocess.Popen[bytes], port: int, sock: Path, began: float
) -> tuple[float, float]:
    """When (perf_counter) the probe port first gave 200/503 and the socket first gave
    200, polled every 1 ms: a kubelet probe and the worker's first signal need both."""
    probe_at = socket_at = None
    deadline = began + 30
    while probe_at is None or socket_at is None:
        if proc.poll() is not None:
            raise RuntimeError(f"the sidecar exited {proc.returncode} at start")
        if time.perf_counter() > deadline:
            raise RuntimeError("the sidecar did not answer within 30s of exec")
        if probe_at is None:
            with contextlib.suppress(OSError):
                code, _ = load.probe(port, "/health", timeout=1.0)
                if code in (200, 503):
                    probe_at = time.perf_counter()
        if socket_at is None:
            with contextlib.suppress(OSError):
                status, _ = load.unix_request(str(sock), "GET", "/v1/status", timeout=1.0)
                if status == 200:
                    socket_at = time.perf_counter()
        if probe_at is None or socket_at is None:
            time.sleep(0.001)
    return probe_at, socket_at


def exec_to_first_probe(rig: Rig) -> list[dict[str, float]]:
    """`exec_starts` starts of a fresh sidecar, each timed from Popen to both doors
    answering, then stopped."""
    p, fleet = rig.profile, rig.fleet
    runs: list[dict[str, float]] = []
    log(f"exec to first probe answered, {p.exec_starts} starts")
    for i in range(p.exec_starts):
        port = free_port()
        sock = fleet.rundir / f"start-{i}.sock"
        argv = serve_argv(rig.tools.sidecar, port, sock, "--endpoints", "generate", "--kube", "off")
        began = time.perf_counter()
        proc = fleet.spawn(f"start-{i}", argv)
        probe_at, socket_at = _first_answers(proc, port, sock, began)
        runs.append(
            {
                "probe_seconds": probe_at - began,
                "socket_seconds": socket_at - began,
                "both_seconds": max(probe_at, socket_at) - began,
            }
        )
        fleet.stop(proc)
    return runs
