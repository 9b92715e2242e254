#!/usr/bin/env python3
"""Where the sidecar's time goes, and what the suggested changes would buy:

    python bench/hotspots.py [--seconds 8] [--json profile.json]

1. py-spy (installed from PyPI into a virtual environment under the tools directory)
   samples the sidecar, Python and native frames, while wrk probes it with a connection
   per request, then while the socket takes 2,000 signals/s. The report lists the top
   frames and the share of samples by package.
2. The variants of `variants.py` (each a change to the sidecar applied at run time,
   nothing in `sidecar/` edited) run side by side: probe rate (connection per request,
   interleaved rounds), idle CPU and wake-ups, idle RSS, exec to first probe, and signal
   to visible state.

Markdown on stdout, progress on stderr; servers on the first CPU, load on the others, as in
run.py (whose modules this reuses).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import load
import procfs
from fleet import Fleet, Server, free_port, plan_cpus, stop_on_signals
from loadtools import PROBE_HEADERS, wrk_measured
from progress import log
from quiet import Quiet
from references import start_go
from sidecars import answering, serve_argv, set_ready, start_sidecar
from tooling import (
    DEFAULT_TOOLS,
    HERE,
    SetupError,
    Tools,
    ensure_pip_tool,
    ensure_tools,
    sidecar_python,
)
from units import MIB

Gate = Callable[[str], None]

VARIANT_SETS: list[tuple[str, str, tuple[str, ...]]] = [
    # (label, variants.py variants, extra serve flags)
    ("as it is", "baseline", ()),
    ("state file off", "baseline", ("--state-file", "off")),
    ("switch interval 0.5 ms", "switch-interval", ()),
    ("proxy_headers=False", "no-proxy-headers", ()),
    ("plain ASGI probe paths", "asgi-probe", ()),
    ("ASGI + proxy_headers=False", "asgi-probe,no-proxy-headers", ()),
    ("raw httptools protocol", "raw-probe", ()),
]


# --------------------------------------------------------------------------- py-spy


def py_spy_record(py_spy: str, pid: int, seconds: float, out: Path) -> Path:
    """Collapsed stacks of every thread, native frames and idle ones included (the share
    of idle samples says how busy the sidecar was)."""
    argv = [
        py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
        "--rate", "250", "--native", "--idle", "--format", "raw", "--output", str(out),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed: {done.stderr[-800:]}")
    return out


def _package(frame: str) -> str:
    """The package of a Python frame `name (path/file.py:line)`, or '' for a native one."""
    where = frame.rpartition("(")[2]
    if ".py:" not in where:
        return ""
    path = where.split(":")[0]
    parts = path.split("/")
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    if parts[0] == "sidecar" or "/sidecar/" in path:
        return "sidecar"
    return parts[0] if len(parts) > 1 else f"stdlib {parts[0]}"


def summarize(raw: Path, top: int = 15) -> dict[str, Any]:
    """Shares of the sampled stacks: waiting in epoll apart; then by innermost Python
    package, by native leaf (the syscalls), and the top Python frames (inclusive)."""
    total = waiting = 0
    stacks: list[tuple[list[str], int]] = []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames, n = stack.split(";"), int(count)
        total += n
        # The loop thread waiting for events, or the executor's thread (the state file's
        # writer) waiting for work: idle.
        if frames[-1].startswith(("epoll_pwait", "epoll_wait")) or any(
            f.startswith("_worker (") and "thread.py:81)" in f for f in frames
        ):
            waiting += n
            continue
        stacks.append((frames, n))
    busy = max(1, total - waiting)
    by_package: collections.Counter[str] = collections.Counter()
    native_leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    innermost_frames: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        python = [f for f in frames if _package(f)]
        innermost = python[-1] if python else ""
        innermost_frames[innermost or "(native only)"] += n
        package = _package(innermost) if innermost else "native only"
        if innermost.startswith("Runner.run") or package == "stdlib asyncio":
            package = "uvloop (C) under the loop"
        by_package[package] += n
        if not _package(frames[-1]):
            native_leaf[frames[-1].split(" (")[0]] += n
        for frame in set(python):
            if not frame.startswith(("<module>", "main (", "run_serve", "Runner.run")):
                inclusive[frame] += n

    def shares(counter: collections.Counter[str], k: int) -> list[tuple[str, float]]:
        return [(name, n / busy) for name, n in counter.most_common(k)]

    return {
        "samples": total,
        "waiting_share": waiting / max(1, total),
        "by_package": shares(by_package, 12),
        "native_leaf": shares(native_leaf, top),
        "inclusive": shares(inclusive, top),
        "innermost": shares(innermost_frames, top),
    }


def render_profile(title: str, summary: dict[str, Any], note: str) -> list[str]:
    """One profile's four tables, as Markdown lines."""
    lines = [
        f"### {title}",
        "",
        f"{note} {summary['samples']:,} samples of all threads; {summary['waiting_share']:.0%} "
        "idle (the loop in epoll, the executor's thread waiting for work); the shares below "
        "are of the busy samples.",
        "",
        "| innermost Python package | share |",
        "|---|---|",
    ]
    lines += [f"| {name} | {share:.0%} |" for name, share in summary["by_package"]]
    lines += ["", "| native leaf frame (syscalls and C) | share |", "|---|---|"]
    lines += [f"| `{name}` | {share:.0%} |" for name, share in summary["native_leaf"]]
    lines += ["", "| innermost Python frame (self, native below it included) | share |"]
    lines += ["|---|---|"]
    lines += [f"| `{name}` | {share:.0%} |" for name, share in summary["innermost"]]
    lines += ["", "| Python frame (inclusive) | share |", "|---|---|"]
    lines += [f"| `{name}` | {share:.0%} |" for name, share in summary["inclusive"]]
    return [*lines, ""]


# --------------------------------------------------------------------------- variants


def variant_tools(tools: Tools, variants: str) -> Tools:
    """The tools with the sidecar run through variants.py, on the sidecar's interpreter."""
    python = sidecar_python(tools.sidecar)
    return dataclasses.replace(tools, sidecar=[python, str(HERE / "variants.py"), variants])


def wakeups(pid: int) -> int:
    """Times the process's threads were scheduled (schedstat's third field): an idle
    server's cost is mostly its wake-ups."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[2])
    return total


def exec_to_first_probe(tools: Tools, fleet: Fleet, runs: int) -> float:
    """The median of `runs` starts, Popen to both doors answering."""
    times = []
    for i in range(runs):
        port = free_port()
        sock = fleet.rundir / f"exec-{time.monotonic_ns()}-{i}.sock"
        argv = serve_argv(tools.sidecar, port, sock, "--endpoints", "generate", "--kube", "off")
        began = time.perf_counter()
        proc = fleet.spawn(f"exec-{i}", argv)
        while True:
            if proc.poll() is not None or time.perf_counter() - began > 30:
                raise RuntimeError("a variant did not start")
            with contextlib.suppress(OSError):
                if answering(port, sock):
                    break
            time.sleep(0.001)
        times.append(time.perf_counter() - began)
        fleet.stop(proc)
    return statistics.median(times)


Row = dict[str, Any]


def start_variants(tools: Tools, fleet: Fleet) -> list[tuple[str, Server]]:
    """Every variant set as a ready sidecar, all up at once so they share the conditions."""
    servers: list[tuple[str, Server]] = []
    for n, (label, variants, extra) in enumerate(VARIANT_SETS):
        server = start_sidecar(fleet, variant_tools(tools, variants), f"v{n}", extra=extra)
        set_ready(server)
        servers.append((label, server))
    return servers


def measure_idle(
    servers: list[tuple[str, Server]], results: dict[str, Row], seconds: float, gate: Gate
) -> None:
    """Idle CPU, wake-ups and RSS of every variant, all idle over the same window."""
    time.sleep(1.0)
    gate("variants: idle")
    log(f"variants: idle CPU and wake-ups over {seconds:g}s, all idle together")
    before = {label: (procfs.cpu_ns_precise(s.pid) or 0, wakeups(s.pid)) for label, s in servers}
    began = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - began
    for label, server in servers:
        ns, wakes = before[label]
        now = procfs.cpu_ns_precise(server.pid) or 0
        results[label]["idle_cpu_share"] = (now - ns) / 1e9 / elapsed
        results[label]["idle_wakeups_per_s"] = (wakeups(server.pid) - wakes) / elapsed
        results[label]["rss_idle_bytes"] = procfs.rss_bytes(server.pid)


def measure_rates(
    tools: Tools, servers: list[tuple[str, Server]], go: Server, rounds: int, gate: Gate
) -> dict[str, dict[str, list[float]]]:
    """wrk -c8 on every variant and on Go, interleaved (reversed every other round):
    measure -> label (or "Go reference") -> one value per round."""
    log(f"variants: wrk -c8, connection per request, {rounds} interleaved rounds")
    series: dict[str, dict[str, list[float]]] = {"rate": {}, "cpu": {}, "p99": {}}
    for r in range(rounds):
        gate(f"variants: round {r + 1}")
        order = [*servers, ("Go reference", go)]
        if r % 2:
            order.reverse()
        for label, server in order:
            result = wrk_measured(tools, server, connections=8, seconds=2)
            series["rate"].setdefault(label, []).append(result["rate"])
            series["cpu"].setdefault(label, []).append(result["server_cpu_us_per_request"])
            series["p99"].setdefault(label, []).append(result["latency_us"]["p99"])
    return series


def summarize_rates(series: dict[str, dict[str, list[float]]], results: dict[str, Row]) -> None:
    """Medians, and the ratios to "as it is" and to Go as medians of paired rounds (a
    round slowed by background load slows both sides of its ratio)."""
    rates, go_rates = series["rate"], series["rate"]["Go reference"]
    base = rates[VARIANT_SETS[0][0]]
    for label, row in results.items():
        row["rate"] = statistics.median(rates[label])
        row["rate_vs_as_is"] = statistics.median(
            a / b for a, b in zip(rates[label], base, strict=True)
        )
        row["rate_vs_go"] = statistics.median(
            a / b for a, b in zip(rates[label], go_rates, strict=True)
        )
        row["cpu_us_per_probe"] = statistics.median(series["cpu"][label])
        row["p99_c8_us"] = statistics.median(series["p99"][label])


def measure_visible(servers: list[tuple[str, Server]], results: dict[str, Row], gate: Gate) -> None:
    """Signal to visible state, 500 flips on each variant (left ready after)."""
    log("variants: signal to visible state, 500 times each")
    for label, server in servers:
        assert server.socket_path is not None
        gate(f"variants: signal to visible, {label}")
        visible = load.signal_to_visible(str(server.socket_path), server.port, 500, "generate")
        results[label]["visible_p50_us"] = visible["visible_us"]["p50"]
        results[label]["visible_p99_us"] = visible["visible_us"]["p99"]
        set_ready(server)


def measure_starts(tools: Tools, fleet: Fleet, results: dict[str, Row]) -> None:
    """Exec to first probe per variant set; rows with the same variants (the state file
    off is a flag, not a variant) share one measurement."""
    log("variants: exec to first probe, median of 3 each")
    seen: dict[str, float] = {}
    for label, variants, _ in VARIANT_SETS:
        if variants not in seen:
            seen[variants] = exec_to_first_probe(variant_tools(tools, variants), fleet, 3)
        results[label]["exec_to_first_probe_s"] = seen[variants]


def measure_variants(
    tools: Tools, fleet: Fleet, rounds: int, idle_seconds: float, gate: Gate
) -> list[Row]:
    """Every variant set side by side: one row each, in VARIANT_SETS's order."""
    servers = start_variants(tools, fleet)
    results: dict[str, Row] = {label: {"label": label} for label, _ in servers}
    measure_idle(servers, results, idle_seconds, gate)
    go = start_go(fleet, tools, "go-reference", keepalive=False)
    summarize_rates(measure_rates(tools, servers, go, rounds, gate), results)
    measure_visible(servers, results, gate)
    for _, server in [*servers, ("Go reference", go)]:
        fleet.stop(server.proc)
    measure_starts(tools, fleet, results)
    return [results[label] for label, _ in servers]


def render_variants(rows: list[Row]) -> list[str]:
    """The variants' table, as Markdown lines."""
    lines = [
        "### What each change buys (run-time prototypes in `bench/variants.py`)",
        "",
        "| variant | probe rate, conn/request (wrk -c8) | vs as it is | vs Go | p99 (wrk -c8) | "
        "CPU per probe | idle CPU | idle wake-ups | idle RSS | exec to first probe | "
        "signal to visible p50 / p99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['rate']:,.0f}/s | {r['rate_vs_as_is']:.2f}x | "
            f"{r['rate_vs_go']:.2f}x | "
            f"{r['p99_c8_us'] / 1000:.2f} ms | "
            f"{r['cpu_us_per_probe']:.0f} us | {r['idle_cpu_share'] * 100:.3f}% | "
            f"{r['idle_wakeups_per_s']:.1f}/s | {r['rss_idle_bytes'] / MIB:.1f} MB | "
            f"{r['exec_to_first_probe_s']:.3f} s | {r['visible_p50_us'] / 1000:.2f} / "
            f"{r['visible_p99_us'] / 1000:.2f} ms |"
        )
    return [*lines, ""]


# --------------------------------------------------------------------------- main


def _profile_probe_path(
    tools: Tools, server: Server, py_spy: str, seconds: float, out: Path
) -> dict[str, Any]:
    """py-spy while wrk saturates the port (wrk runs 3 s longer than the sampling, which
    starts 1 s in, so every sample falls under load)."""
    wrk = subprocess.Popen(
        [
            tools.wrk, "-t1", "-c8", f"-d{int(seconds) + 3}s", *PROBE_HEADERS,
            "-H", "Connection: close", server.url(),
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        return summarize(py_spy_record(py_spy, server.pid, seconds, out / "probes.raw"))
    finally:
        wrk.wait(seconds + 30)


def _profile_socket(
    tools: Tools, server: Server, py_spy: str, seconds: float, out: Path
) -> dict[str, Any]:
    """py-spy while the signal driver (2,000/s) and kubeprobe (8 x 50/s) run together."""
    assert server.socket_path is not None
    driver = subprocess.Popen(
        [
            sys.executable, str(HERE / "load.py"), "signals",
            "--socket", str(server.socket_path), "--seconds", str(seconds + 3),
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    prober = subprocess.Popen(
        [str(tools.kubeprobe), "-url", server.url(), "-duration", f"{seconds + 3}s"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        return summarize(py_spy_record(py_spy, server.pid, seconds, out / "signals.raw"))
    finally:
        driver.wait(seconds + 60)
        prober.wait(seconds + 60)


def profile_probes(
    tools: Tools, fleet: Fleet, py_spy: str, seconds: float, out: Path, gate: Gate
) -> dict[str, Any]:
    """Both profiles, on one ready sidecar."""
    server = start_sidecar(fleet, tools, "profiled")
    set_ready(server)
    gate("py-spy, probe path")
    log(f"py-spy on the probe path: wrk -c8, connection per request, {seconds:g}s")
    probes = _profile_probe_path(tools, server, py_spy, seconds, out)
    gate("py-spy, socket")
    log(f"py-spy on the socket: 2,000 signals/s with 400 probes/s, {seconds:g}s")
    signals = _profile_socket(tools, server, py_spy, seconds, out)
    fleet.stop(server.proc)
    return {"probes": probes, "signals": signals}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (the same --tools-dir, --sidecar and --wait-quiet as run.py)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="py-spy sampling time")
    parser.add_argument("--rounds", type=int, default=4, help="rate rounds per variant")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--tools-dir", type=Path, default=DEFAULT_TOOLS)
    parser.add_argument("--sidecar", help="the command that runs the sidecar (default: found)")
    parser.add_argument("--skip-py-spy", action="store_true")
    parser.add_argument("--skip-variants", action="store_true")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long before each measurement for a quieter machine (as run.py)",
    )
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, fleet: Fleet) -> tuple[list[str], dict[str, Any]]:
    """The profiles and the variants, as asked: (the report's lines, the raw results)."""
    lines = ["## Where the time goes (bench/hotspots.py)", ""]
    results: dict[str, Any] = {}
    tools = ensure_tools(args.tools_dir, args.sidecar)
    gate = Quiet(fleet, args.wait_quiet).gate
    if not args.skip_py_spy:
        py_spy = ensure_pip_tool(args.tools_dir, "py-venv", "py-spy", "py-spy")
        results["py_spy"] = profiled = profile_probes(
            tools, fleet, py_spy, args.seconds, fleet.rundir, gate
        )
        lines += render_profile(
            "Probe path: wrk -c8, connection per request",
            profiled["probes"],
            "py-spy --native --idle at 250 Hz while the port is saturated;",
        )
        lines += render_profile(
            "Worker's socket: 2,000 signals/s (new connection each) and 400 probes/s",
            profiled["signals"],
            "py-spy --native --idle at 250 Hz;",
        )
    if not args.skip_variants:
        rows = measure_variants(tools, fleet, args.rounds, args.idle_seconds, gate)
        results["variants"] = rows
        lines += render_variants(rows)
    lines.append(
        f"Machine: {os.cpu_count()} CPUs, servers pinned to CPU "
        f"{','.join(map(str, sorted(fleet.cpus)))}; load average "
        f"{os.getloadavg()[0]:.2f} at the end; {time.strftime('%Y-%m-%d %H:%M')}."
    )
    return lines, results


def main(argv: Sequence[str] | None = None) -> int:
    """Profile and compare; every server is stopped and the run directory removed on the
    way out (the profiles are copied beside `--json` first)."""
    args = parse_args(argv)
    stop_on_signals()
    server_cpus, load_cpus = plan_cpus()
    os.sched_setaffinity(0, load_cpus)
    rundir = Path(tempfile.mkdtemp(prefix="dynamo-health-bench-profile-"))
    fleet = Fleet(rundir, server_cpus)
    try:
        lines, results = measure(args, fleet)
        text = "\n".join(lines) + "\n"
        sys.stdout.write(text)
        if args.json:
            args.json.write_text(json.dumps({"results": results, "report": text}, indent=2))
            for raw in rundir.glob("*.raw"):
                # py-spy's collapsed stacks, for flamegraph.pl or speedscope
                shutil.copy(raw, args.json.with_name(f"{args.json.stem}.{raw.name}"))
        return 0
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    except (SetupError, RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        log(f"failed: {exc}")
        return 1
    finally:
        fleet.stop_all()
        shutil.rmtree(rundir, ignore_errors=True)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
