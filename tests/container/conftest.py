"""Fixtures of the container tests: the runtime set up (or the tests skipped when not root), the
images built once per session, and the measured durations and sizes, printed at the end of the
run and written to `results.json` in the cache directory (see runtime.py)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The helpers beside this file (runtime, pods) and the chart tests' (chart_render, kubelet).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chart"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import helm_python as helm
import runtime
from chart_render import CHART_DIR

MARKER = "container: builds the image and runs the chart's pod with Podman (root; minutes)"


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml registers the marker; this keeps --strict-markers happy where it does not.
    if not any(line.startswith("container:") for line in config.getini("markers")):
        config.addinivalue_line("markers", MARKER)


def results_path() -> Path:
    explicit = os.environ.get("DHS_CONTAINER_RESULTS")
    return Path(explicit) if explicit else runtime.cache_dir() / "results.json"


@pytest.fixture(scope="session")
def container_runtime() -> dict[str, float]:
    """Podman ready to run containers: set up now if needed. Skipped only when not root; any
    other trouble fails the tests with the setup's one-line reason."""
    if not runtime.is_root():
        pytest.skip("the container tests run Podman as root: run them as root (CI does)")
    try:
        timings = runtime.setup()
    except runtime.SetupError as exc:
        pytest.fail(f"container runtime setup failed: {exc}", pytrace=False)
    runtime.RESULTS.update({f"setup_{key}": value for key, value in timings.items()})
    return timings


@pytest.fixture(scope="session")
def images(container_runtime: dict[str, float]) -> dict[str, str]:
    """The project's image (the real Dockerfile on the local base) and the stand-in worker's."""
    try:
        runtime.RESULTS["project_image_build_s"] = runtime.build_project_image()
        runtime.RESULTS["standin_image_build_s"] = runtime.build_standin_image()
        project, base = (
            runtime.image_size(runtime.PROJECT_IMAGE),
            runtime.image_size(runtime.BASE_IMAGE),
        )
    except runtime.SetupError as exc:
        pytest.fail(f"building the images failed: {exc}", pytrace=False)
    runtime.RESULTS.update(
        image_size_mb=round(project / 1e6, 1),
        base_image_size_mb=round(base / 1e6, 1),
        image_own_layers_mb=round((project - base) / 1e6, 1),
    )
    return {"project": runtime.PROJECT_IMAGE, "standin": runtime.STANDIN_IMAGE}


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not runtime.RESULTS:
        return
    path = results_path()
    shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in runtime.RESULTS.items()}
    terminalreporter.write_sep("-", "container test results")
    for key, value in shown.items():
        terminalreporter.write_line(f"{key}: {value}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(shown, indent=2, sort_keys=True) + "\n")
        terminalreporter.write_line(f"(written to {path})")
    except OSError as exc:
        terminalreporter.write_line(f"(not written to {path}: {exc})")
