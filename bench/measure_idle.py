"""Memory and idle, each measurement returning numbers: RSS growth under a million
probes, the idle CPU and RSS of another sidecar and of the references over the same wall
time, and the RSS of a sidecar with Kubernetes reporting on. The three run together: CPU
time is counted per process, so the load on one does not show in the others' figures."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import load
import procfs
from fleet import Server, clean_environment, free_port, http_up, wait_until
from loadtools import probe_count, wrk
from progress import log
from references import start_fake_kube
from rig import Rig
from sidecars import serve_argv, set_ready


def _cpu_readings(watched: dict[str, Server]) -> dict[str, tuple[int | None, float]]:
    """Both CPU counters of every watched server: schedstat's nanoseconds where the kernel
    has them, /proc/PID/stat's ticks as the fallback."""
    return {
        k: (procfs.cpu_ns_precise(s.pid), procfs.cpu_seconds(s.pid)) for k, s in watched.items()
    }


def idle_window(
    watched: dict[str, Server], seconds: float, cancel: threading.Event
) -> dict[str, dict[str, Any]]:
    """CPU share and RSS of each watched (idle) server over `seconds`; empty if cancelled."""
    before = _cpu_readings(watched)
    began = time.monotonic()
    if cancel.wait(seconds):
        return {}
    seconds = time.monotonic() - began
    result: dict[str, dict[str, Any]] = {}
    for key, server in watched.items():
        ns0, ticks0 = before[key]
        ns1 = procfs.cpu_ns_precise(server.pid)
        coarse = procfs.cpu_seconds(server.pid) - ticks0
        precise = None if ns0 is None or ns1 is None else (ns1 - ns0) / 1e9
        result[key] = {
            "seconds": seconds,
            "cpu_seconds_schedstat": precise,
            "cpu_seconds_stat": coarse,
            # schedstat counts nanoseconds; stat counts whole ticks (10 ms here)
            "cpu_share": (coarse if precise is None else precise) / seconds,
            "rss_bytes": procfs.rss_bytes(server.pid),
        }
    return result


def rss_growth(rig: Rig, server: Server, served: int) -> dict[str, Any]:
    """RSS before and after `rss_probes` probes, once at least `rss_warmup` probes
    (connection per request) have been served, counting the `served` earlier ones: the
    first probes fill caches and arenas, which is not growth."""
    p = rig.profile
    top_up = max(0, p.rss_warmup - served)
    log(f"RSS growth: {served:,} probes served, {top_up:,} more to warm up, then {p.rss_probes:,}")
    warm = probe_count(rig.tools, server, top_up) if top_up else {"errors": 0, "rate": 5000.0}
    time.sleep(0.5)
    before = procfs.rss_bytes(server.pid)
    samples = [before]
    done, errors, rate = 0, warm["errors"], warm["rate"]
    while done < p.rss_probes:
        # In chunks of at most 15 s, so the samples show a growth that comes and goes.
        seconds = min(15.0, max(1.0, (p.rss_probes - done) / max(rate, 1.0)))
        result = wrk(rig.tools, server.url(), connections=8, seconds=seconds)
        done += result["requests"]
        errors += result["errors_total"]
        rate = result["rate"]
        samples.append(procfs.rss_bytes(server.pid))
    time.sleep(0.5)
    after = procfs.rss_bytes(server.pid)
    return {
        "warmup": served + warm.get("requests", 0),
        "probes": done,
        "errors": errors,
        "rss_before": before,
        "rss_after": after,
        "rss_max": max([*samples, after]),
        "growth_bytes": after - before,
        "samples": samples,
    }


def _service_account(rundir: Path) -> Path:
    """A service account directory with a token: the reporter reads one at start."""
    account = rundir / "serviceaccount"
    account.mkdir(exist_ok=True)
    (account / "token").write_text("bench-token\n")
    return account


def _refused(fleet_tail: str, returncode: int) -> tuple[bool, str]:
    """(wired, why) for a sidecar that exited at once: exit 2 with "not supported" (or
    "not in this version") is a sidecar without reporting; any other exit is a failure."""
    last = (fleet_tail.strip().splitlines() or [""])[-1][:160]
    wired = returncode != 2 or not any(
        words in last for words in ("not supported", "not in this version")
    )
    return wired, f"`serve --kube on` exits {returncode}: {last}"


def _start_reporting(rig: Rig, api_port: int) -> tuple[subprocess.Popen[bytes], int, Path]:
    """`serve --kube on` pointed at the fake API server, with the Downward API variables
    a pod would have: (process, probe port, socket)."""
    port = free_port()
    sock = rig.fleet.rundir / "kube-on.sock"
    argv = serve_argv(
        rig.tools.sidecar, port, sock, "--endpoints", "generate",
        "--kube", "on", "--kube-api-url", f"http://127.0.0.1:{api_port}",
        "--kube-service-account-dir", str(_service_account(rig.fleet.rundir)),
    )  # fmt: skip
    env = clean_environment() | {
        "POD_NAME": "bench-worker-0",
        "POD_NAMESPACE": "bench",
        "POD_UID": "00000000-0000-4000-8000-000000000000",
    }
    return rig.fleet.spawn("sidecar-kube-on", argv, env=env), port, sock


def _reporting_rss(rig: Rig, api_port: int) -> dict[str, Any]:
    """Start the reporting sidecar; its RSS once it has settled after ready and the calls
    the fake API server saw, or why there is no reading. Raises RuntimeError when the
    sidecar does not come up (the caller turns that into the reason)."""
    settle = rig.profile.reporting_settle_seconds
    raw: dict[str, Any] = {"wired": True, "rss_bytes": None, "why": "", "api_calls": {}}
    proc, port, sock = _start_reporting(rig, api_port)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(3)  # an unsupported --kube on exits at once
    if proc.returncode is not None:
        raw["wired"], raw["why"] = _refused(rig.fleet.log_tail(proc, 3), proc.returncode)
    else:
        server = Server("sidecar-kube-on", proc, port, sock)
        wait_until("sidecar --kube on", http_up(port), proc, rig.fleet, timeout=30)
        set_ready(server)
        time.sleep(settle)
        raw["rss_bytes"] = procfs.rss_bytes(proc.pid)
        with contextlib.suppress(OSError, ValueError):
            raw["api_calls"] = json.loads(load.probe(api_port, "/bench/calls")[1])
    rig.fleet.stop(proc)
    return raw


def reporting_on(rig: Rig) -> dict[str, Any]:
    """RSS with Kubernetes reporting on. Without a cluster here, the sidecar reports to
    a minimal fake API server (`load.py fake-kube`, plain HTTP on 127.0.0.1) through
    `--kube-api-url`, with a token file and the Downward API variables set. A sidecar
    that refuses `--kube on` as unsupported has no reporting wired (the bench decides by
    running it, not by reading the sidecar's source)."""
    fake: subprocess.Popen[bytes] | None = None
    try:
        fake, api_port = start_fake_kube(rig.fleet)
        return _reporting_rss(rig, api_port)
    except RuntimeError as exc:
        why = f"`serve --kube on` did not serve: {str(exc).splitlines()[0][:160]}"
        return {"wired": True, "rss_bytes": None, "why": why, "api_calls": {}}
    finally:
        if fake is not None:
            rig.fleet.stop(fake)


def memory_and_idle(
    rig: Rig, loaded: Server, served: int, watched: dict[str, Server]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[dict[str, Any] | BaseException]]:
    """The three together: RSS growth on `loaded` (in this thread), the idle window over
    `watched` and the reporting sidecar (each in its own). Returns (RSS growth, idle,
    [the reporting result or its exception], empty if it did not finish in 120 s)."""
    idle: dict[str, dict[str, Any]] = {}
    cancel = threading.Event()

    def measure_idle() -> None:
        idle.update(idle_window(watched, rig.profile.idle_seconds, cancel))

    reporting: list[dict[str, Any] | BaseException] = []

    def measure_reporting() -> None:
        try:
            reporting.append(reporting_on(rig))
        except Exception as exc:  # reported by the caller, in the bench's thread
            reporting.append(exc)

    idle_thread = threading.Thread(target=measure_idle, name="idle")
    idle_thread.start()
    reporting_thread = threading.Thread(target=measure_reporting, name="kube", daemon=True)
    reporting_thread.start()
    try:
        rss = rss_growth(rig, loaded, served)
    except BaseException:
        cancel.set()  # an interrupted run must not wait out the idle window
        raise
    finally:
        idle_thread.join()
    reporting_thread.join(120)
    return rss, idle, reporting
