"""The reliability suite: short by default (CI), long with `--run-long` (minutes).

Every test here is marked `reliability`; `-m "not reliability"` leaves the suite out.
Each test takes its sizes from the `scale` fixture, so one test has both versions. The
measured figures are printed at the end of the run (and written as JSON to the path in
`RELIABILITY_FIGURES`, when set), for the table in README.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

FIGURES: list[dict[str, object]] = []
# `--run-long`, for what is decided when a module is imported (schemathesis' examples).
RUN_LONG = [False]


def pytest_configure(config: pytest.Config) -> None:
    RUN_LONG[0] = bool(config.getoption("run_long", default=False))
    config.addinivalue_line(
        "markers",
        "reliability: the reliability suite (tests/reliability); short by default, long with "
        "--run-long",
    )


@dataclass(frozen=True)
class Scale:
    """How much each reliability test does; `long` is the `--run-long` version."""

    long: bool
    # Load: probes (a new TCP connection each) and signals together.
    load_seconds: float
    probe_rate: float
    signal_rate: float
    notify_rate: float
    # Slow and abusive clients.
    idle_connections: int
    abuse_seconds: float
    # OpenAPI (schemathesis): examples per operation in the fuzzing phase.
    openapi_examples: int
    # Hypothesis over the real sockets and the real command line; atheris runs per target
    # (0: for 60 s each instead).
    socket_examples: int
    datagram_examples: int
    cli_examples: int
    state_file_examples: int
    atheris_runs: int
    # Faults.
    worker_kills: int
    sidecar_restarts: int
    fault_seconds: float
    # Durability: SIGKILLs 0-5 ms after an answer, and graceful stops, under signals.
    acknowledged_kills: int
    graceful_stops: int


SHORT = Scale(
    long=False,
    load_seconds=5,
    probe_rate=300,
    signal_rate=300,
    notify_rate=50,
    idle_connections=200,
    abuse_seconds=4,
    openapi_examples=30,
    socket_examples=40,
    datagram_examples=60,
    cli_examples=6,
    state_file_examples=3,
    atheris_runs=10000,
    worker_kills=2,
    sidecar_restarts=2,
    fault_seconds=1,
    acknowledged_kills=10,
    graceful_stops=3,
)

LONG = Scale(
    long=True,
    load_seconds=60,
    probe_rate=300,
    signal_rate=2000,
    notify_rate=200,
    idle_connections=1000,
    abuse_seconds=60,
    openapi_examples=500,
    socket_examples=1000,
    datagram_examples=2000,
    cli_examples=60,
    state_file_examples=60,
    atheris_runs=0,
    worker_kills=10,
    sidecar_restarts=10,
    fault_seconds=10,
    acknowledged_kills=200,
    graceful_stops=20,
)


@pytest.fixture(scope="session")
def scale(run_long: bool) -> Scale:
    return LONG if run_long else SHORT


def import_time_scale() -> Scale:
    """The scale, for a module that needs it when it is imported."""
    return LONG if RUN_LONG[0] else SHORT


Record = Callable[..., None]


@pytest.fixture
def figure(request: pytest.FixtureRequest, scale: Scale) -> Record:
    """`figure(what, value, bound="")`: a measured figure for the results table."""

    def record(what: str, value: object, bound: str = "") -> None:
        FIGURES.append(
            {
                "test": request.node.name,
                "what": what,
                "value": value,
                "bound": bound,
                "version": "long" if scale.long else "short",
            }
        )

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for row in FIGURES:
        bound = f"  (bound {row['bound']})" if row["bound"] else ""
        terminalreporter.write_line(f"{row['test']}: {row['what']} = {row['value']}{bound}")
    target = os.environ.get("RELIABILITY_FIGURES")
    if target:
        Path(target).write_text(json.dumps(FIGURES, indent=1, default=str) + "\n")
