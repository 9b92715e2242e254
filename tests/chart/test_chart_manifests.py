"""manifests/ and the chart README's values table are generated from the chart and kept current."""

from __future__ import annotations

import json

import yaml
from chart_render import (
    CHART_DIR,
    CHART_README,
    MANIFESTS_DIR,
    manifest_files,
    readme_with_table,
    values_table,
)

REGENERATE = "run `python tests/chart/regenerate.py` and commit the result"


def test_manifests_match_the_chart_default_rendering(chart):
    expected = manifest_files(chart)
    actual = {
        name: (MANIFESTS_DIR / name).read_text()
        for name in expected
        if (MANIFESTS_DIR / name).exists()
    }
    assert actual == expected, REGENERATE


def test_manifests_hold_no_file_the_chart_does_not_render(chart):
    extra = {p.name for p in MANIFESTS_DIR.iterdir()} - set(manifest_files(chart))
    assert extra == set(), REGENERATE


def test_manifests_leave_the_namespace_to_kubectl():
    for path in sorted(MANIFESTS_DIR.glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            assert "namespace" not in obj["metadata"], path.name


def test_chart_readme_values_table_is_current():
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    table = values_table((CHART_DIR / "values.yaml").read_text(), schema)
    readme = CHART_README.read_text()
    assert readme_with_table(readme, table) == readme, REGENERATE
