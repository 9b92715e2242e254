"""Write what is generated from the chart: `manifests/` (the default rendering, for
`kubectl apply -f manifests/` without Helm) and the values table of the chart's README.

    python tests/chart/regenerate.py          # rewrite them
    python tests/chart/regenerate.py --check  # exit 1 when they differ from the chart

test_chart_manifests.py fails when either drifts from the chart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import helm_python as helm
from chart_render import (
    CHART_DIR,
    CHART_README,
    MANIFESTS_DIR,
    manifest_files,
    readme_with_table,
    values_table,
)


def generated() -> dict[Path, str]:
    """Path -> content of every generated file."""
    with helm.Chart.load(CHART_DIR) as chart:
        files = {MANIFESTS_DIR / name: text for name, text in manifest_files(chart).items()}
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    table = values_table((CHART_DIR / "values.yaml").read_text(), schema)
    files[CHART_README] = readme_with_table(CHART_README.read_text(), table)
    return files


def main(argv: list[str]) -> int:
    files = generated()
    stale = [path for path in sorted(MANIFESTS_DIR.glob("*.yaml")) if path not in files]
    changed = [
        path for path, text in files.items() if not path.exists() or path.read_text() != text
    ]
    if "--check" in argv:
        for path in changed + stale:
            print(f"out of date: {path.relative_to(CHART_DIR.parents[1])}", file=sys.stderr)
        return 1 if changed or stale else 0
    for path in stale:
        path.unlink()
        print(f"removed {path}")
    MANIFESTS_DIR.mkdir(exist_ok=True)
    for path in changed:
        path.write_text(files[path])
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
