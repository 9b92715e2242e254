"""Fixtures of the chart tests: the real chart, loaded once with helm-python-sdk."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

# The helper modules beside this file (chart_render, kubelet), whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import helm_python as helm
from chart_render import CHART_DIR, objects, render

Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render_objects(chart: helm.Chart) -> Render:
    """values -> every Kubernetes object the chart renders for them."""

    def _render(values: Mapping[str, Any] | None = None, **options: Any) -> list[dict[str, Any]]:
        return objects(render(chart, values, **options))

    return _render


@pytest.fixture(scope="session")
def default_objects(render_objects: Render) -> list[dict[str, Any]]:
    return render_objects()


@pytest.fixture(scope="session")
def default_values(chart: helm.Chart) -> dict[str, Any]:
    return chart.values
