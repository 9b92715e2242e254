"""Render the chart with real Helm (helm-python-sdk) and read the result back.

Shared by the tests in this directory and by `regenerate.py`, which writes `manifests/` from the
chart's default rendering. No cluster and no helm binary are needed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from kubernetes_validate.utils import all_versions

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "dynamo-health-sidecar"
MANIFESTS_DIR = REPO / "manifests"
CHART_README = CHART_DIR / "README.md"

# The release the plain manifests are rendered as: its name contains the chart's name, so every
# object is called just "dynamo-health-sidecar".
MANIFEST_RELEASE = "dynamo-health-sidecar"
MANIFEST_NAMESPACE = "default"
MANIFEST_HEADER = (
    "# Generated from charts/dynamo-health-sidecar with its default values "
    "(release {release}); do not edit.\n"
    "# Regenerate with: python tests/chart/regenerate.py\n"
    "# Source: {source}\n"
)

# Kubernetes versions the rendered objects must be valid for: 1.29 (native sidecars on by
# default) through the newest that kubernetes-validate ships.
OLDEST_KUBERNETES = (1, 29)
README_BEGIN = "<!-- values-table:begin (python tests/chart/regenerate.py) -->"
README_END = "<!-- values-table:end -->"


def kubernetes_versions() -> list[str]:
    versions = {v for v in all_versions() if tuple(map(int, v.split(".")[:2])) >= OLDEST_KUBERNETES}
    return sorted(versions, key=lambda v: tuple(map(int, v.split("."))))


def render(
    chart: helm.Chart,
    values: Mapping[str, Any] | None = None,
    *,
    name: str = "rel",
    namespace: str = "ns",
) -> dict[str, str]:
    """Template path -> rendered text, for the templates that render something (NOTES aside)."""
    rendered = chart.render(dict(values or {}), name=name, namespace=namespace)
    return {
        path: text
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt") and text.strip()
    }


def notes(
    chart: helm.Chart, values: Mapping[str, Any] | None = None, *, namespace: str = "ns"
) -> str:
    rendered = chart.render(dict(values or {}), name="rel", namespace=namespace)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def objects(rendered: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object of a rendering, in template order."""
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objs if obj["kind"] == kind]


def deployment(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = by_kind(objs, "Deployment")
    return found


def pod_spec(objs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment(objs)["spec"]["template"]["spec"]
    return spec


def container(objs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """A container or init container of the pod, by name."""
    spec = pod_spec(objs)
    for found in [*spec.get("initContainers", []), *spec["containers"]]:
        if found["name"] == name:
            return dict(found)
    raise KeyError(name)


def env(container_spec: Mapping[str, Any]) -> dict[str, Any]:
    """name -> value (or the valueFrom dict) of a container's environment."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container_spec.get("env", [])}


# --- the plain manifests ---------------------------------------------------------------------


def manifest_files(chart: helm.Chart) -> dict[str, str]:
    """File name under manifests/ -> content: the default rendering, one file per template."""
    rendered = render(chart, name=MANIFEST_RELEASE, namespace=MANIFEST_NAMESPACE)
    files = {}
    for source, text in rendered.items():
        header = MANIFEST_HEADER.format(release=MANIFEST_RELEASE, source=source)
        files[Path(source).name] = header + text.strip("\n") + "\n"
    return files


# --- the values table of the chart's README -------------------------------------------------


def value_comments(values_yaml: str) -> Iterator[tuple[str, int, str | None]]:
    """(dotted key, line, comment) for every key of values.yaml, the comment being the `#` line
    right above the key (None when there is none)."""
    lines = values_yaml.splitlines()

    def walk(node: yaml.Node, prefix: str) -> Iterator[tuple[str, int, str | None]]:
        if not isinstance(node, yaml.MappingNode):
            return
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            line = key_node.start_mark.line
            above = lines[line - 1].strip() if line > 0 else ""
            comment = above[1:].strip() if above.startswith("#") else None
            yield key, line + 1, comment
            walk_children = walk(value_node, key + ".")
            yield from walk_children

    yield from walk(yaml.compose(values_yaml), "")


def _schema_at(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    node = schema
    for part in dotted.split("."):
        props = node.get("properties", {})
        node = props[part] if part in props else node["additionalProperties"]
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def values_table(values_yaml: str, schema: dict[str, Any]) -> str:
    """The README's table: every leaf value, its type, default and comment in values.yaml."""
    defaults = yaml.safe_load(values_yaml)
    rows = ["| Value | Type | Default | Description |", "|---|---|---|---|"]
    for key, _line, comment in value_comments(values_yaml):
        default: Any = defaults
        for part in key.split("."):
            default = default[part]
        if isinstance(default, dict) and default:
            continue  # a section: its values have their own rows
        node = _schema_at(schema, key)
        kind = node.get("type", "object")
        kind = " or ".join(kind) if isinstance(kind, list) else kind
        if "enum" in node:
            kind = " \\| ".join(f"`{v}`" for v in node["enum"])
        shown = json.dumps(default)
        if isinstance(default, str) and "\n" in default:
            shown = "(example worker script)"
        elif isinstance(default, list) and any("\n" in str(item) for item in default):
            shown = "(example worker script, see values.yaml)"
        cell = (comment or "").replace("|", "\\|")
        shown = shown.replace("|", "\\|")
        rows.append(f"| `{key}` | {kind} | `{shown}` | {cell} |")
    return "\n".join(rows) + "\n"


def readme_with_table(readme: str, table: str) -> str:
    pattern = re.compile(re.escape(README_BEGIN) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(readme):
        raise ValueError(f"the chart README has no {README_BEGIN} ... {README_END} block")
    return pattern.sub(lambda _: f"{README_BEGIN}\n{table}{README_END}", readme)
