"""Measurements on the probe port, each returning numbers: rates and latency beside the
references (wrk), paced probers with and without signals on the worker's socket
(kubeprobe), and signal to visible state."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import load
import procfs
import references
from fleet import Server
from loadtools import interleaved, kubeprobe
from progress import log
from rig import Rig
from sidecars import set_ready, start_sidecar
from tooling import HERE


@dataclass
class PortServers:
    """The servers of the probe-port figures; the sidecar, Go and nginx stay up for the
    idle figures at the end (the sidecar then takes the RSS-growth load)."""

    go: Server
    go_keepalive: Server
    nginx: Server
    sidecar: Server


def start_servers(rig: Rig) -> PortServers:
    """Go (keep-alive off and on), nginx, and a ready sidecar."""
    fleet, tools = rig.fleet, rig.tools
    go = references.start_go(fleet, tools, "go-reference", keepalive=False)
    go_keepalive = references.start_go(fleet, tools, "go-reference-keepalive", keepalive=True)
    nginx = references.start_nginx(fleet, tools)
    sidecar = start_sidecar(fleet, tools, "sidecar")
    set_ready(sidecar)
    return PortServers(go, go_keepalive, nginx, sidecar)


def wrk_series(rig: Rig, s: PortServers) -> tuple[dict[str, Any], dict[str, Any]]:
    """The three interleaved wrk series: (the sidecar's results, the references').
    The sidecar's connection-per-request result carries its per-round ratio to Go: the
    figure is their median, robust to a round that background load slowed."""
    p = rig.profile

    def series(
        servers: dict[str, Server], rounds: int, connections: int, close: bool, what: str
    ) -> dict[str, dict[str, Any]]:
        return interleaved(
            rig.tools, rig.quiet.gate, servers, rounds=rounds, seconds=p.round_seconds,
            connections=connections, close=close, what=what,
        )  # fmt: skip

    close = series(
        {"go": s.go, "nginx": s.nginx, "sidecar": s.sidecar}, p.rate_rounds, 16, True,
        "rate, connection per request (wrk -c16)",
    )  # fmt: skip
    c8 = series(
        {"go": s.go, "sidecar": s.sidecar}, p.latency_rounds, 8, True,
        "latency, 8 connections, connection per request",
    )  # fmt: skip
    keepalive = series(
        {"go": s.go_keepalive, "nginx": s.nginx, "sidecar": s.sidecar}, p.keepalive_rounds,
        16, False, "rate, keep-alive (wrk -c16)",
    )  # fmt: skip
    refs = {
        "go_close": close["go"],
        "nginx_close": close["nginx"],
        "go_close_c8": c8["go"],
        "go_keepalive": keepalive["go"],
        "nginx_keepalive": keepalive["nginx"],
    }
    mine = {"close": close["sidecar"], "close_c8": c8["sidecar"], "keepalive": keepalive["sidecar"]}
    mine["close"]["ratio_to_go_per_round"] = [
        a["rate"] / b["rate"]
        for a, b in zip(mine["close"]["rounds"], refs["go_close"]["rounds"], strict=True)
    ]
    return mine, refs


def paced_quiet(rig: Rig, sidecar: Server) -> dict[str, Any]:
    """The paced probers alone: the baseline shown beside the figure under signals."""
    p = rig.profile
    rig.quiet.gate("paced probers")
    log(f"sidecar: paced probers without signals, {p.paced_seconds}s")
    return kubeprobe(
        rig.tools, sidecar.url(), seconds=p.paced_seconds, probers=p.probers, rate=p.prober_rate
    )


def _signal_driver(rig: Rig, sidecar: Server, seconds: float) -> subprocess.Popen[str]:
    """`load.py signals` as its own process, on the load's CPUs (it inherits the bench's
    affinity): its four threads pace themselves without the bench holding their GIL."""
    assert sidecar.socket_path is not None
    argv = [
        sys.executable,
        str(HERE / "load.py"),
        "signals",
        "--socket", str(sidecar.socket_path),
        "--rate", str(rig.profile.signal_rate),
        "--seconds", str(seconds),
        "--endpoint", "aux",
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def under_signals(rig: Rig, sidecar: Server) -> tuple[dict[str, Any], dict[str, Any], float]:
    """The paced probers while the socket takes paced signals: (the probes, the signal
    driver's report, the sidecar's CPU share meanwhile). The driver starts 0.5 s ahead
    and runs 1 s longer, so every probe falls while signals flow."""
    p = rig.profile
    rig.quiet.gate("paced probers under signals")
    log(f"sidecar: paced probers while the socket takes {p.signal_rate:g} signals/s")
    driver_seconds = p.signal_seconds + 1.0
    cpu_before = procfs.cpu_seconds(sidecar.pid)
    began = time.monotonic()
    driver = _signal_driver(rig, sidecar, driver_seconds)
    try:
        time.sleep(0.5)
        probes = kubeprobe(
            rig.tools, sidecar.url(), seconds=p.signal_seconds, probers=p.probers,
            rate=p.prober_rate,
        )  # fmt: skip
        out, _ = driver.communicate(timeout=driver_seconds + 60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(5)
    share = (procfs.cpu_seconds(sidecar.pid) - cpu_before) / (time.monotonic() - began)
    if driver.returncode != 0:
        raise RuntimeError(f"the signal driver exited {driver.returncode}")
    return probes, json.loads(out), share


def signal_to_visible(rig: Rig, sidecar: Server) -> dict[str, Any]:
    """Flip `generate` and probe until the code changes (load.signal_to_visible); the
    sidecar is left ready for what follows."""
    p = rig.profile
    rig.quiet.gate("signal to visible state")
    log(f"sidecar: signal to visible state, {p.visible_iterations} times")
    assert sidecar.socket_path is not None
    visible = load.signal_to_visible(
        str(sidecar.socket_path), sidecar.port, p.visible_iterations, "generate"
    )
    set_ready(sidecar)
    return visible
