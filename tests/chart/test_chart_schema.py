"""helm lint, values.schema.json and values.yaml: what a user sees for a wrong value."""

from __future__ import annotations

import json

import helm_python as helm
import pytest
import yaml
from chart_render import CHART_DIR, value_comments

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
VALUES_YAML = (CHART_DIR / "values.yaml").read_text()
INSTALL_PREFIX = (
    "values don't meet the specifications of the schema(s) in the following chart(s):\n"
    "dynamo-health-sidecar:\n"
)
# Kubernetes objects the chart passes through as they are: the API server checks them.
PASS_THROUGH = {"/properties/volumes/items", "/properties/initContainers/items"}


def schema_error(chart, values) -> str:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(values)
    return str(caught.value)


@pytest.mark.parametrize("kube_version", ["v1.29.0", None])
def test_lint_is_clean(kube_version):
    report = helm.lint(CHART_DIR, strict=True, kube_version=kube_version)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert (problems, report["errors"]) == ([], [])


@pytest.mark.parametrize(
    "values",
    [
        {"sidecar": {"native": True}},
        {"sidecar": {"kubeReporting": {"enabled": True}}},
        {
            "service": {"enabled": True},
            "worker": {"ports": [{"name": "http", "containerPort": 8000}]},
        },
    ],
)
def test_lint_is_clean_with_values_that_change_structure(values):
    report = helm.lint(CHART_DIR, values, strict=True)
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_lint_reports_a_wrong_value_as_an_error():
    report = helm.lint(CHART_DIR, {"system": {"port": 70000}})
    assert "- at '/system/port': maximum: got 70,000, want 65,535\n" in report["errors"]


def test_schema_accepts_the_defaults(chart):
    chart.validate_schema({})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"system": {"port": "9090"}}, "- at '/system/port': got string, want integer"),
        (
            {"probes": {"startup": {"failureThreshold": "720"}}},
            "- at '/probes/startup/failureThreshold': got string, want integer",
        ),
        ({"sidecar": {"native": "yes"}}, "- at '/sidecar/native': got string, want boolean"),
        ({"system": {"endpoints": "generate"}}, "- at '/system/endpoints': got string, want array"),
    ],
)
def test_schema_rejects_a_wrong_type(chart, values, message):
    assert schema_error(chart, values) == f"dynamo-health-sidecar:\n{message}\n"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"system": {"port": 70000}}, "- at '/system/port': maximum: got 70,000, want 65,535"),
        ({"system": {"port": 0}}, "- at '/system/port': minimum: got 0, want 1"),
    ],
)
def test_schema_rejects_a_port_out_of_range(chart, values, message):
    assert schema_error(chart, values) == f"dynamo-health-sidecar:\n{message}\n"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replica": 2}, "- at '': additional properties 'replica' not allowed"),
        (
            {"probes": {"liveness": {"failureTreshold": 3}}},
            "- at '/probes/liveness': additional properties 'failureTreshold' not allowed",
        ),
        (
            {"sidecar": {"securityContext": {"runAsRoot": True}}},
            "- at '/sidecar/securityContext': additional properties 'runAsRoot' not allowed",
        ),
    ],
)
def test_schema_rejects_an_unknown_key(chart, values, message):
    assert schema_error(chart, values) == f"dynamo-health-sidecar:\n{message}\n"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"sidecar": {"mode": "server"}},
            "- at '/sidecar/mode': value must be one of 'worker', 'frontend'",
        ),
        (
            {"sidecar": {"mode": "frontend", "frontendShape": "1.6.1"}},
            "- at '/sidecar/frontendShape': value must be one of 'documented', 'dynamo-1.6.1'",
        ),
        (
            {"system": {"startingHealthStatus": "healthy"}},
            "- at '/system/startingHealthStatus': value must be one of 'ready', 'notready'",
        ),
        (
            {"sidecar": {"liveness": "deep"}},
            "- at '/sidecar/liveness': value must be one of 'started', 'health'",
        ),
        (
            {"sidecar": {"log": {"level": "trace"}}},
            "- at '/sidecar/log/level': value must be one of 'debug', 'info', 'warning', 'error'",
        ),
    ],
)
def test_schema_rejects_a_bad_enum(chart, values, message):
    assert schema_error(chart, values) == f"dynamo-health-sidecar:\n{message}\n"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"probes": {"liveness": {"successThreshold": 2}}},
            "- at '/probes/liveness/successThreshold': maximum: got 2, want 1",
        ),
        (
            {"probes": {"readiness": {"periodSeconds": 0}}},
            "- at '/probes/readiness/periodSeconds': minimum: got 0, want 1",
        ),
        (
            {"sidecar": {"drainSeconds": -1}},
            "- at '/sidecar/drainSeconds': minimum: got -1, want 0",
        ),
        (
            {"system": {"healthPath": "health"}},
            "- at '/system/healthPath': 'health' does not match pattern "
            "'^/[A-Za-z0-9._~!$&\\'()*+,;=:@%/-]*$'",
        ),
        (
            {"system": {"endpoints": ["gen erate"]}},
            "- at '/system/endpoints/0': 'gen erate' does not match pattern "
            "'^[A-Za-z0-9_.-]{1,128}$'",
        ),
    ],
)
def test_schema_rejects_a_value_kubernetes_or_the_sidecar_would_refuse(chart, values, message):
    assert schema_error(chart, values) == f"dynamo-health-sidecar:\n{message}\n"


def test_schema_reports_every_wrong_value_at_once(chart):
    message = schema_error(chart, {"system": {"port": "x", "livePath": "live"}, "bogus": 1})
    assert "- at '/system/port': got string, want integer\n" in message
    assert "- at '/system/livePath': 'live' does not match pattern" in message
    assert "- at '': additional properties 'bogus' not allowed\n" in message


def test_install_refuses_a_wrong_value_naming_it(chart):
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.render({"system": {"port": 70000}}, name="rel", namespace="ns")
    assert (
        str(caught.value)
        == INSTALL_PREFIX + "- at '/system/port': maximum: got 70,000, want 65,535\n"
    )


def test_values_every_key_has_a_one_line_comment():
    missing = [
        f"{key} (line {line})" for key, line, comment in value_comments(VALUES_YAML) if not comment
    ]
    assert missing == []


def _objects(node, pointer=""):
    """Every object node of the schema, with its JSON pointer."""
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield pointer, node
        for key, child in node.items():
            yield from _objects(child, f"{pointer}/{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _objects(child, f"{pointer}/{index}")


def test_schema_forbids_unknown_keys_in_every_object_with_properties():
    loose = [
        pointer
        for pointer, node in _objects(SCHEMA)
        if "properties" in node and node.get("additionalProperties") is not False
    ]
    assert sorted(loose) == sorted(PASS_THROUGH)


def test_schema_describes_exactly_the_values_of_each_chart_section():
    defaults = yaml.safe_load(VALUES_YAML)

    def compare(values, node, where):
        if "$ref" in node or "properties" not in node:
            return  # Kubernetes types: their optional fields have no defaults here
        own = set(node["properties"]) - {"global"}
        assert own == set(values), where
        for key, value in values.items():
            if isinstance(value, dict) and value:
                compare(value, node["properties"][key], f"{where}.{key}")

    compare(defaults, SCHEMA, "values")


def test_schema_describes_every_value():
    undescribed = [
        pointer
        for pointer, node in _objects(SCHEMA)
        for key, child in node.get("properties", {}).items()
        if "$ref" not in child and not child.get("description")
    ]
    assert undescribed == []
