"""`demo`, run as a newcomer would, without a terminal: the whole lifecycle in its output."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import free_port


def run_demo(*flags: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DYN_")}
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "demo", "--port", str(free_port()), *flags],
        env=clean,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout
    return result.stdout


def order_of(output: str, *patterns: str) -> list[int]:
    return [re.search(pattern, output, re.M).start() for pattern in patterns]  # type: ignore[union-attr]


def test_demo_crash_shows_load_ready_death_restart_and_ready_again() -> None:
    output = run_demo("--load-seconds", "1", "--crash-after", "3", "--duration", "9")
    positions = order_of(
        output,
        r"loading the model \(1s\)",
        r"generate: notready -> ready after",
        r"kubelet: GET /live -> 200",
        r"demo: SIGKILL to worker",
        r"worker life 1: alive -> ended after .* \(its session connection closed\)",
        r"kubelet: liveness failed 3 times: restarting the worker",
        r"worker life 2: ended -> alive",
        r"(?s)worker life 2: ended -> alive.*generate: notready -> ready after",
    )
    assert positions == sorted(positions)


def test_demo_hang_ends_the_life_by_the_heartbeat_deadline() -> None:
    output = run_demo("--load-seconds", "1", "--hang-after", "2.5", "--duration", "9")
    positions = order_of(
        output,
        r"hung \(alive, but silent\)",
        r"worker life 1: alive -> ended after .* \(no heartbeat for 3s\)",
        r"kubelet: liveness failed 3 times: restarting the worker",
    )
    assert positions == sorted(positions)
