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
run.py (whose machinery this reuses).
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import load  # noqa: E402
import run  # noqa: E402
from run import Fleet, Server, Tools, log  # noqa: E402

VARIANT_SETS: list[tuple[str, str, tuple[str, ...]]] = [
    # (label, variants.py variants, extra serve flags)
    ("as it is", "baseline", ()),
    ("state file off", "baseline", ("--state-file", "off")),
    ("switch interval 0.5 ms", "switch-interval", ()),
    ("no websockets/watchfiles", "no-extras", ()),
    ("uvicorn tick 1 s", "tick-1s", ()),
    ("proxy_headers=False", "no-proxy-headers", ()),
    ("plain ASGI probe paths", "asgi-probe", ()),
    ("ASGI + proxy_headers=False", "asgi-probe,no-proxy-headers", ()),
    ("all four above", "no-extras,tick-1s,no-proxy-headers,asgi-probe", ()),
    ("raw httptools protocol", "raw-probe,no-extras,tick-1s", ()),
]


def ensure_py_spy(tools_dir: Path) -> str:
    venv = tools_dir / "py-venv"
    ours = venv / "bin" / "py-spy"
    if ours.exists():
        return str(ours)
    on_path = shutil.which("py-spy")
    if on_path:
        return on_path
    log(f"installing py-spy into {venv}")
    run.run_quiet([sys.executable, "-m", "venv", str(venv)], timeout=300)
    run.run_quiet([str(venv / "bin" / "pip"), "install", "--quiet", "py-spy"], timeout=900)
    return str(ours)


# --------------------------------------------------------------------------- py-spy


def py_spy_record(py_spy: str, pid: int, seconds: float, out: Path) -> Path:
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
    python = run.sidecar_python(tools.sidecar)
    return dataclasses.replace(tools, sidecar=[python, str(HERE / "variants.py"), variants])


def wakeups(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[2])
    return total


def exec_to_first_probe(tools: Tools, fleet: Fleet, runs: int) -> float:
    times = []
    for i in range(runs):
        port = run.free_port()
        sock = fleet.rundir / f"exec-{time.monotonic_ns()}-{i}.sock"
        argv = [
            *tools.sidecar, "serve", "--host", "127.0.0.1", "--port", str(port),
            "--socket", str(sock), "--endpoints", "generate", "--drain-seconds", "0",
            "--kube", "off",
        ]  # fmt: skip
        began = time.perf_counter()
        proc = fleet.spawn(f"exec-{i}", argv)
        while True:
            if proc.poll() is not None or time.perf_counter() - began > 30:
                raise RuntimeError("a variant did not start")
            with contextlib.suppress(OSError):
                load.probe(port, "/health", timeout=1.0)
                if load.unix_request(str(sock), "GET", "/v1/status", timeout=1.0)[0] == 200:
                    break
            time.sleep(0.001)
        times.append(time.perf_counter() - began)
        fleet.stop(proc)
    return statistics.median(times)


def measure_variants(
    tools: Tools, fleet: Fleet, rounds: int, idle_seconds: float, gate: Any
) -> list[dict[str, Any]]:
    servers: list[tuple[str, Server]] = []
    for n, (label, variants, extra) in enumerate(VARIANT_SETS):
        server = run.start_sidecar(fleet, variant_tools(tools, variants), f"v{n}", extra=extra)
        run.set_ready(server)
        servers.append((label, server))
    results: dict[str, dict[str, Any]] = {label: {"label": label} for label, _ in servers}

    time.sleep(1.0)
    gate("variants: idle")
    log(f"variants: idle CPU and wake-ups over {idle_seconds:g}s, all idle together")
    before = {label: (run.cpu_ns_precise(s.pid) or 0, wakeups(s.pid)) for label, s in servers}
    began = time.monotonic()
    time.sleep(idle_seconds)
    seconds = time.monotonic() - began
    for label, server in servers:
        ns, wakes = before[label]
        now = run.cpu_ns_precise(server.pid) or 0
        results[label]["idle_cpu_share"] = (now - ns) / 1e9 / seconds
        results[label]["idle_wakeups_per_s"] = (wakeups(server.pid) - wakes) / seconds
        results[label]["rss_idle_bytes"] = run.rss_bytes(server.pid)

    log(f"variants: wrk -c8, connection per request, {rounds} interleaved rounds")
    rates: dict[str, list[float]] = {label: [] for label, _ in servers}
    cpu: dict[str, list[float]] = {label: [] for label, _ in servers}
    p99: dict[str, list[float]] = {label: [] for label, _ in servers}
    go = run.start_reference(fleet, tools, "go-reference", keepalive=False)
    go_rates: list[float] = []
    for r in range(rounds):
        gate(f"variants: round {r + 1}")
        order = [*servers, ("Go reference", go)]
        if r % 2:
            order.reverse()
        for label, server in order:
            result = run.wrk_measured(tools, server, connections=8, seconds=2)
            if server is go:
                go_rates.append(result["rate"])
                continue
            rates[label].append(result["rate"])
            cpu[label].append(result["server_cpu_us_per_request"])
            p99[label].append(result["latency_us"]["p99"])
    base = rates[servers[0][0]]
    for label, _ in servers:
        results[label]["rate"] = statistics.median(rates[label])
        results[label]["rate_vs_as_is"] = statistics.median(
            a / b for a, b in zip(rates[label], base, strict=True)
        )
        results[label]["rate_vs_go"] = statistics.median(
            a / b for a, b in zip(rates[label], go_rates, strict=True)
        )
        results[label]["cpu_us_per_probe"] = statistics.median(cpu[label])
        results[label]["p99_c8_us"] = statistics.median(p99[label])

    log("variants: signal to visible state, 500 times each")
    for label, server in servers:
        assert server.socket_path is not None
        gate(f"variants: signal to visible, {label}")
        visible = load.signal_to_visible(str(server.socket_path), server.port, 500, "generate")
        results[label]["visible_p50_us"] = visible["visible_us"]["p50"]
        results[label]["visible_p99_us"] = visible["visible_us"]["p99"]
        run.set_ready(server)
    for _, server in [*servers, ("Go reference", go)]:
        fleet.stop(server.proc)

    log("variants: exec to first probe, median of 3 each")
    seen: dict[str, float] = {}
    for label, variants, _ in VARIANT_SETS:
        if variants not in seen:
            seen[variants] = exec_to_first_probe(variant_tools(tools, variants), fleet, 3)
        results[label]["exec_to_first_probe_s"] = seen[variants]
    return [results[label] for label, _ in servers]


def render_variants(rows: list[dict[str, Any]]) -> list[str]:
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
            f"{r['idle_wakeups_per_s']:.1f}/s | {r['rss_idle_bytes'] / run.MIB:.1f} MB | "
            f"{r['exec_to_first_probe_s']:.3f} s | {r['visible_p50_us'] / 1000:.2f} / "
            f"{r['visible_p99_us'] / 1000:.2f} ms |"
        )
    return [*lines, ""]


# --------------------------------------------------------------------------- main


def profile_probes(
    tools: Tools, fleet: Fleet, py_spy: str, seconds: float, out: Path, gate: Any
) -> dict[str, Any]:
    server = run.start_sidecar(fleet, tools, "profiled")
    run.set_ready(server)
    gate("py-spy, probe path")
    log(f"py-spy on the probe path: wrk -c8, connection per request, {seconds:g}s")
    wrk = subprocess.Popen(
        [
            tools.wrk,
            "-t1",
            "-c8",
            f"-d{int(seconds) + 3}s",
            *run.PROBE_HEADERS,
            "-H",
            "Connection: close",
            server.url(),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        probes = summarize(py_spy_record(py_spy, server.pid, seconds, out / "probes.raw"))
    finally:
        wrk.wait(seconds + 30)

    gate("py-spy, socket")
    log(f"py-spy on the socket: 2,000 signals/s with 400 probes/s, {seconds:g}s")
    assert server.socket_path is not None
    driver = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "load.py"),
            "signals",
            "--socket",
            str(server.socket_path),
            "--seconds",
            str(seconds + 3),
        ],
        stdout=subprocess.DEVNULL,
    )
    prober = subprocess.Popen(
        [str(tools.kubeprobe), "-url", server.url(), "-duration", f"{seconds + 3}s"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        signals = summarize(py_spy_record(py_spy, server.pid, seconds, out / "signals.raw"))
    finally:
        driver.wait(seconds + 60)
        prober.wait(seconds + 60)
    fleet.stop(server.proc)
    return {"probes": probes, "signals": signals}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="py-spy sampling time")
    parser.add_argument("--rounds", type=int, default=4, help="rate rounds per variant")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--tools-dir", type=Path, default=run.DEFAULT_TOOLS)
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
    args = parser.parse_args(argv)
    run.stop_on_signals()

    server_cpus, load_cpus = run.plan_cpus()
    os.sched_setaffinity(0, load_cpus)
    rundir = Path(tempfile.mkdtemp(prefix="dynamo-health-bench-profile-"))
    fleet = Fleet(rundir, server_cpus)
    lines = ["## Where the time goes (bench/hotspots.py)", ""]
    results: dict[str, Any] = {}
    try:
        tools = run.ensure_tools(args.tools_dir, args.sidecar)
        gate = run.Bench(tools, run.FULL, fleet, args.wait_quiet).quiet_gate
        if not args.skip_py_spy:
            py_spy = ensure_py_spy(args.tools_dir)
            results["py_spy"] = profiled = profile_probes(
                tools, fleet, py_spy, args.seconds, rundir, gate
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
            f"{','.join(map(str, sorted(server_cpus)))}; load average "
            f"{os.getloadavg()[0]:.2f} at the end; {time.strftime('%Y-%m-%d %H:%M')}."
        )
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
    except (run.SetupError, RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        log(f"failed: {exc}")
        return 1
    finally:
        fleet.stop_all()
        shutil.rmtree(rundir, ignore_errors=True)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
