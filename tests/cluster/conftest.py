"""Fixtures of the cluster tests: the one-node cluster brought up (or the tests skipped, saying
why), the API server through the administrator's kubeconfig, a namespace per test, and the
measured durations, printed at the end of the run and written beside the cluster's state."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# `cluster` is this package; its harness module is `cluster.cluster` (also run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster import cluster, workload

MARKER = "cluster: runs the chart on a real one-node Kubernetes (root; builds it on first use)"


def pytest_configure(config: pytest.Config) -> None:
    if not any(line.startswith("cluster:") for line in config.getini("markers")):
        config.addinivalue_line("markers", MARKER)


@pytest.fixture(scope="package")
def kube() -> Iterator[workload.Kube]:
    """The cluster, up (built and started now if needed). Skipped only when not root or when
    there is no Go to build it with; any other trouble fails with the harness's one line.

    A cluster this fixture started is stopped after the last cluster test, so that its
    components do not load the machine under the timing-sensitive tests that follow; one that
    was up before (`cluster.py up` by hand) is left up."""
    if os.geteuid() != 0:
        pytest.skip("the cluster tests need root (network namespace, cgroups): run them as root")
    if not shutil.which("go") and not cluster.binaries.is_built(cluster.binaries.KUBERNETES):
        pytest.skip("the cluster tests build Kubernetes with Go, and there is no go on PATH")
    was_up = cluster.is_up()
    try:
        timings = cluster.up()
    except (cluster.ClusterError, cluster.binaries.BuildError) as exc:
        pytest.fail(f"cluster up failed: {exc}", pytrace=False)
    workload.RESULTS.update(timings)
    yield workload.Kube(cluster.kubeconfig_path())
    if not was_up:
        began = time.monotonic()
        cluster.down()
        workload.RESULTS["down_s"] = time.monotonic() - began


@pytest.fixture
def namespace(kube: workload.Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of the test's own, deleted after it."""
    prefix = request.node.name.removeprefix("test_").replace("_", "-")[:40].rstrip("-")
    with kube.namespace(prefix) as name:
        yield name


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not workload.RESULTS:
        return
    shown = {key: round(value, 2) for key, value in workload.RESULTS.items()}
    terminalreporter.write_sep("-", "cluster test results")
    for key, value in shown.items():
        terminalreporter.write_line(f"{key}: {value}")
    path = cluster.state_root() / "results.json"
    try:
        path.write_text(json.dumps(shown, indent=2, sort_keys=True) + "\n")
        terminalreporter.write_line(f"(written to {path})")
    except OSError as exc:
        terminalreporter.write_line(f"(not written to {path}: {exc})")
