"""The load generators, each run as its own process and read back as numbers: wrk for
saturating load, kubeprobe for paced kubelet-like probers."""

from __future__ import annotations

import json
import statistics
import subprocess
from collections.abc import Callable
from typing import Any

import procfs
from fleet import Server
from progress import log
from tooling import HERE, Tools
from units import KIB

# The kubelet's own headers: a server may treat kube-probe differently.
PROBE_HEADERS = ["-H", "User-Agent: kube-probe/1.31", "-H", "Accept: */*"]


def wrk(
    tools: Tools, url: str, *, connections: int, seconds: float, close: bool = True
) -> dict[str, Any]:
    """One wrk run, one thread; `close` sends `Connection: close`, so wrk reconnects after
    every answer as the kubelet does. Returns wrk_report.lua's JSON, with the rate and
    the error count added."""
    argv = [
        tools.wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout", "2s",
        "-s", str(HERE / "wrk_report.lua"),
        *PROBE_HEADERS,
    ]  # fmt: skip
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(url)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("JSON "):
            result: dict[str, Any] = json.loads(line[5:])
            result["rate"] = result["requests"] / (result["duration_us"] / 1e6)
            result["errors_total"] = sum(result["errors"].values())
            return result
    raise RuntimeError(f"wrk gave no result: {done.stdout[-500:]} {done.stderr[-500:]}")


def wrk_measured(
    tools: Tools, server: Server, *, connections: int, seconds: float, close: bool = True
) -> dict[str, Any]:
    """A wrk run with the server's CPU per request beside it."""
    cpu_before = procfs.cpu_seconds(server.pid)
    result = wrk(tools, server.url(), connections=connections, seconds=seconds, close=close)
    cpu = procfs.cpu_seconds(server.pid) - cpu_before
    result["server_cpu_seconds"] = cpu
    result["server_cpu_us_per_request"] = cpu / max(1, result["requests"]) * 1e6
    result["server_cpu_share"] = cpu / (result["duration_us"] / 1e6)
    return result


def kubeprobe(
    tools: Tools,
    url: str,
    *,
    seconds: float,
    probers: int = 8,
    rate: float = 50.0,
    readmax: int = 10 * KIB,
) -> dict[str, Any]:
    """`probers` paced probers at `rate` a second each for `seconds`, each probe a new
    connection reading `readmax` bytes of the body (0: all). Returns kubeprobe's JSON."""
    argv = [
        str(tools.kubeprobe),
        "-url", url,
        "-probers", str(probers),
        "-rate", str(rate),
        "-duration", f"{seconds}s",
        "-readmax", str(readmax),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"kubeprobe failed: {done.stderr[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several wrk runs on one server as one result (percentiles: per-run medians)."""
    requests = sum(r["requests"] for r in runs)
    seconds = sum(r["duration_us"] for r in runs) / 1e6
    cpu = sum(r["server_cpu_seconds"] for r in runs)
    return {
        "rounds": runs,
        "requests": requests,
        "seconds": seconds,
        "rate": requests / seconds,
        "errors_total": sum(r["errors_total"] for r in runs),
        "server_cpu_us_per_request": cpu / max(1, requests) * 1e6,
        "server_cpu_share": cpu / seconds,
        "p50_us_median": statistics.median(r["latency_us"]["p50"] for r in runs),
        "p99_us_median": statistics.median(r["latency_us"]["p99"] for r in runs),
        "p99_us_max": max(r["latency_us"]["p99"] for r in runs),
    }


def interleaved(
    tools: Tools,
    gate: Callable[[str], None],
    servers: dict[str, Server],
    *,
    rounds: int,
    seconds: int,
    connections: int,
    close: bool,
    what: str,
) -> dict[str, dict[str, Any]]:
    """wrk on each server in turn, `rounds` times (the order reversed every other round),
    so background load on a shared machine falls on all of them alike. `gate` runs
    before each round (the quiet gate); the result is one merged run per server."""
    log(f"{what}: {rounds} x {seconds:g}s on each of {', '.join(servers)}, interleaved")
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in servers}
    for n in range(rounds):
        gate(f"{what}, round {n + 1}")
        order = list(servers) if n % 2 == 0 else list(reversed(list(servers)))
        for key in order:
            runs[key].append(
                wrk_measured(
                    tools, servers[key], connections=connections, seconds=seconds, close=close
                )
            )
    return {key: merge_runs(value) for key, value in runs.items()}


def probe_count(tools: Tools, server: Server, count: int) -> dict[str, Any]:
    """At least `count` probes (wrk -c8, connection per request) in wrk runs sized by the
    rate seen so far (wrk runs for a time, not a number of requests)."""
    done, errors, rate = 0, 0, 5000.0
    while done < count:
        seconds = max(1.0, (count - done) / rate)
        result = wrk(tools, server.url(), connections=8, seconds=seconds)
        done += result["requests"]
        errors += result["errors_total"]
        rate = result["rate"]
    return {"requests": done, "errors": errors, "rate": rate}
