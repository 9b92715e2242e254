"""One run of the bench: the five phases in order, each measuring, keeping the raw
numbers and adding its figures as soon as it has them. The quiet gate and the
background share are per phase (see quiet.py)."""

from __future__ import annotations

import time
from typing import Any

import figures
import measure_idle
import measure_port
import measure_process
import measure_state
import procfs
from figures import Results
from measure_port import PortServers
from rig import Rig
from sidecars import set_ready, start_sidecar


def probe_port(rig: Rig, results: Results) -> PortServers:
    """The probe port beside the references, then paced probers and signals. Returns the
    servers that stay up: the idle figures of the last phase watch them."""
    p = rig.profile
    servers = measure_port.start_servers(rig)
    time.sleep(0.5)
    mine: dict[str, Any] = {"rss_after_start_bytes": procfs.rss_bytes(servers.sidecar.pid)}
    rates, refs = measure_port.wrk_series(rig, servers)
    mine |= rates
    results.raw["sidecar"], results.raw["references"] = mine, refs
    rig.fleet.stop(servers.go_keepalive.proc)
    results.add(figures.probe_rate(mine, refs, p))
    results.add(figures.latency_8_probers(mine, refs, p))
    mine["paced_quiet"] = measure_port.paced_quiet(rig, servers.sidecar)
    mine["paced_signals"], mine["signals"], mine["signals_cpu_share"] = measure_port.under_signals(
        rig, servers.sidecar
    )
    results.add(figures.latency_under_signals(mine, p))
    mine["visible"] = measure_port.signal_to_visible(rig, servers.sidecar)
    results.add(figures.signal_to_visible(mine["visible"]))
    return servers


def exec_probe(rig: Rig, results: Results) -> None:
    """The exec probe: no figure of its own, the context table compares it."""
    results.raw["exec_probe"] = measure_process.exec_probe(rig)


def large_state(rig: Rig, results: Results) -> None:
    """`/health` with 1,000 endpoints and with 10,000 instances; in the full run also
    registration under probes with the state file on."""
    raw = measure_state.endpoints(rig) | measure_state.instances(rig)
    results.raw["big_state"] = raw
    for key in ("endpoints", "instances"):
        results.add(figures.health_large_state(raw, key, rig.profile))
    if rig.profile.registration_under_probes:
        results.raw["registration_under_probes"] = measure_state.registration_under_probes(rig)


def exec_to_first_probe(rig: Rig, results: Results) -> None:
    """A fresh sidecar's start, on a machine no longer loaded by the earlier phases."""
    runs = measure_process.exec_to_first_probe(rig)
    results.raw["exec_to_first_probe"] = runs
    results.add(figures.exec_to_first_probe(runs))


def memory_and_idle(rig: Rig, results: Results, port: PortServers) -> None:
    """RSS growth on the probe-port sidecar (warmed up by the probe-port figures), while
    a fresh ready sidecar, Go and nginx sit idle and a reporting sidecar settles."""
    p = rig.profile
    idle_sidecar = start_sidecar(rig.fleet, rig.tools, "sidecar-idle")
    set_ready(idle_sidecar)
    served = sum(results.raw["sidecar"][k]["requests"] for k in ("close", "close_c8"))
    watched = {"sidecar": idle_sidecar, "go": port.go, "nginx": port.nginx}
    time.sleep(1.0)
    rss, idle, reporting = measure_idle.memory_and_idle(rig, port.sidecar, served, watched)
    if reporting and isinstance(reporting[0], dict):
        results.raw["rss_idle_reporting_on"] = reporting[0]
    results.raw["rss_growth"], results.raw["idle"] = rss, idle
    results.add(figures.rss_growth(rss, p))
    results.add(figures.rss_idle_reporting_off(idle, p))
    if not reporting or isinstance(reporting[0], BaseException):
        raise RuntimeError(f"measuring RSS with reporting on failed: {reporting}")
    results.add(figures.rss_idle_reporting_on(reporting[0], p))
    results.add(figures.cpu_idle(idle))
    rig.fleet.stop(idle_sidecar.proc)


def run_all(rig: Rig) -> Results:
    """Every phase in turn (their figures come out in the order of the table)."""
    results = Results()
    quiet = rig.quiet
    held: list[PortServers] = []  # the probe port's servers, still up for the last phase
    quiet.phase("probe port", lambda: held.append(probe_port(rig, results)))
    quiet.phase("exec probe", lambda: exec_probe(rig, results))
    quiet.phase("large state", lambda: large_state(rig, results))
    quiet.phase("exec to first probe", lambda: exec_to_first_probe(rig, results))
    quiet.phase("memory and idle", lambda: memory_and_idle(rig, results, held[0]))
    return results
