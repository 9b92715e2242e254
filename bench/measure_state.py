"""`/health` on a large state, each measurement returning numbers: 1,000 endpoints in
worker mode, 10,000 instances in frontend mode, and (full run) probes while instances
register with the state file on."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import load
import procfs
from fleet import Server
from loadtools import kubeprobe
from progress import log
from rig import Rig
from sidecars import start_sidecar
from units import KIB

# Registered with the state file off: with it on, every change re-encodes the whole state
# on the event loop (measured apart, by registration_under_probes); once registered, the
# state file is idle either way.
STATE_FILE_OFF = ("--state-file", "off")


def _probe_big(rig: Rig, server: Server, key: str, count: int, rate: float) -> dict[str, Any]:
    """Check `/health` lists all `count` entries, then the paced probers reading the whole
    body and again reading 10 KiB as the kubelet does; the RSS after."""
    p = rig.profile
    raw: dict[str, Any] = {}
    time.sleep(0.3)
    code, body = load.probe(server.port)
    raw[f"{key}_body_bytes"], raw[f"{key}_code"] = len(body), code
    listed = len(json.loads(body)[key])
    if listed != count or code != 200:
        raise RuntimeError(f"/health is {code} and lists {listed} {key}, not {count}")
    log(f"{server.name}: paced probers on /health ({len(body):,} bytes)")
    for mode, readmax in (("full", 0), ("kubelet", 10 * KIB)):
        rig.quiet.gate(f"{server.name}: /health, {mode} read")
        raw[f"{key}_{mode}"] = kubeprobe(
            rig.tools, server.url(), seconds=p.big_state_seconds, readmax=readmax,
            probers=p.probers, rate=rate,
        )  # fmt: skip
    raw[f"{key}_rss_bytes"] = procfs.rss_bytes(server.pid)
    return raw


def endpoints(rig: Rig) -> dict[str, Any]:
    """Worker mode: `generate` and 999 other endpoints marked ready over the socket."""
    p = rig.profile
    worker = start_sidecar(rig.fleet, rig.tools, "sidecar-endpoints", extra=STATE_FILE_OFF)
    assert worker.socket_path is not None
    names = ["generate"] + [f"endpoint-{i:04d}" for i in range(1, p.endpoints)]
    log(f"worker mode: registering {len(names)} endpoints")
    raw: dict[str, Any] = {
        "endpoints_register_seconds": load.register_endpoints(str(worker.socket_path), names)
    }
    raw |= _probe_big(rig, worker, "endpoints", p.endpoints, p.prober_rate)
    rig.fleet.stop(worker.proc)
    return raw


def instances(rig: Rig) -> dict[str, Any]:
    """Frontend mode: 10,000 instances registered as Dynamo registers them, probed at
    half the rate (the body is 1.6 MiB)."""
    p = rig.profile
    frontend = start_sidecar(
        rig.fleet, rig.tools, "sidecar-instances", mode="frontend", extra=STATE_FILE_OFF
    )
    assert frontend.socket_path is not None
    log(f"frontend mode: registering {p.instances:,} instances")
    raw: dict[str, Any] = {
        "instances_register_seconds": load.register_instances(
            str(frontend.socket_path), p.instances
        )
    }
    raw |= _probe_big(rig, frontend, "instances", p.instances, p.prober_rate / 2)
    rig.fleet.stop(frontend.proc)
    return raw


def registration_under_probes(rig: Rig) -> dict[str, Any]:
    """Probes on the live path while instances register, with the state file on (the
    default): what a frontend with churning instances sees."""
    p = rig.profile
    server = start_sidecar(rig.fleet, rig.tools, "sidecar-registering", mode="frontend")
    assert server.socket_path is not None
    log(f"frontend mode, state file on: probing /live while {p.instances:,} instances register")
    took: list[float] = []
    failed: list[BaseException] = []

    def register() -> None:
        try:
            took.append(load.register_instances(str(server.socket_path), p.instances))
        except (OSError, RuntimeError) as exc:
            failed.append(exc)  # raised below, in the bench's thread

    worker = threading.Thread(target=register, name="register")
    worker.start()
    try:
        probes = kubeprobe(
            rig.tools, server.url("/live"), seconds=3.0, probers=p.probers, rate=p.prober_rate
        )
    finally:
        worker.join(120)
    rig.fleet.stop(server.proc)
    if failed or not took:
        raise RuntimeError(f"registration under probes failed: {failed}")
    return {"register_seconds": took[0], "probes": probes}
