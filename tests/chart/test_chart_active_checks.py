"""The chart's active checks: `sidecar.canary` and `sidecar.upstream` (mirror mode).

Each mode on renders its variables (and, for mirror mode, the worker's own status server on the
inner port); each value the sidecar would refuse is refused by the schema or by the chart with
one exact line; the sidecar's own settings loader accepts what the chart renders; and the chart
README's worked examples render and validate for every Kubernetes version.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from chart_render import CHART_README, container, env, kubernetes_versions

from sidecar import settings

WORKER = "worker"
SIDECAR = "health-sidecar"
UPSTREAM_VARIABLES = (
    "DYN_SIDECAR_UPSTREAM_STATUS_URL",
    "DYN_SIDECAR_UPSTREAM_INTERVAL",
    "DYN_SIDECAR_UPSTREAM_MISSES",
)
CANARY_VARIABLES = (
    "DYN_SIDECAR_CANARY_URL",
    "DYN_SIDECAR_CANARY_METHOD",
    "DYN_SIDECAR_CANARY_BODY",
    "DYN_SIDECAR_CANARY_EXPECT",
    "DYN_SIDECAR_CANARY_TIMEOUT",
    "DYN_SIDECAR_CANARY_WAIT",
    "DYN_SIDECAR_CANARY_ENDPOINT",
    "DYN_SIDECAR_CANARY_FAILURES",
)
UPSTREAM_ON = {"sidecar": {"upstream": {"enabled": True}}}
CANARY_ON = {"system": {"endpoints": ["generate"]}, "sidecar": {"canary": {"enabled": True}}}
INVALID = "\n\nthe values of dynamo-health-sidecar are invalid:\n"
README_SECTION = "## Active checks: canaries and mirror mode"


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` deep-merged over a copy of `base`, as Helm merges values files."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def readme_examples() -> list[dict[str, Any]]:
    """The values YAML blocks of the chart README's active-checks section, in order."""
    text = CHART_README.read_text()
    start = text.index(README_SECTION)
    section = text[start : text.index("\n## ", start + 1)]
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, re.S)]


def readme_scenarios() -> dict[str, dict[str, Any]]:
    """The README's examples as complete values: the vLLM worker canaried on /health, the same
    worker canaried with a one-token completion (its block replaces `sidecar.canary`), and the
    Dynamo worker in mirror mode."""
    vllm, completion, dynamo = readme_examples()
    with_completion = copy.deepcopy(vllm)
    with_completion["sidecar"]["canary"] = completion["sidecar"]["canary"]
    return {"vllm-health": vllm, "vllm-completion": with_completion, "dynamo-mirror": dynamo}


def render_error(chart: helm.Chart, values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmRenderError) as caught:
        chart.render(values, name="rel", namespace="ns")
    return str(caught.value)


def schema_error(chart: helm.Chart, values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(values)
    return str(caught.value)


def error_lines(message: str) -> list[str]:
    assert INVALID in message
    return message.split(INVALID, 1)[1].splitlines()


# --- off by default ----------------------------------------------------------------------------


def test_both_modes_are_off_by_default(default_objects, default_values):
    assert default_values["sidecar"]["upstream"]["enabled"] is False
    assert default_values["sidecar"]["canary"]["enabled"] is False
    sidecar_env = env(container(default_objects, SIDECAR))
    assert set(UPSTREAM_VARIABLES + CANARY_VARIABLES) & set(sidecar_env) == set()
    assert env(container(default_objects, WORKER)) == {
        "DYN_SIDECAR_SOCKET": "/var/run/dynamo/health.sock"
    }


def test_defaults_are_the_sidecars_defaults(default_values):
    assert default_values["sidecar"]["upstream"] == {
        "enabled": False,
        "url": "http://127.0.0.1:8081/health",
        "intervalSeconds": 2,
        "misses": 3,
    }
    assert default_values["sidecar"]["canary"] == {
        "enabled": False,
        "url": "http://127.0.0.1:8000/health",
        "method": "GET",
        "body": "",
        "expect": "200-299",
        "timeoutSeconds": 3,
        "waitSeconds": 10,
        "endpoint": "",
        "failures": 3,
    }
    defaults = settings.Settings()
    assert (defaults.upstream_interval, defaults.upstream_misses) == (2.0, 3)
    assert (defaults.canary_method, defaults.canary_expect) == ("GET", ((200, 299),))
    assert (defaults.canary_timeout, defaults.canary_wait, defaults.canary_failures) == (3, 10, 3)


# --- mirror mode -------------------------------------------------------------------------------


def test_upstream_on_sets_the_sidecars_variables(render_objects):
    sidecar_env = env(container(render_objects(UPSTREAM_ON), SIDECAR))
    assert {k: sidecar_env[k] for k in UPSTREAM_VARIABLES} == {
        "DYN_SIDECAR_UPSTREAM_STATUS_URL": "http://127.0.0.1:8081/health",
        "DYN_SIDECAR_UPSTREAM_INTERVAL": "2",
        "DYN_SIDECAR_UPSTREAM_MISSES": "3",
    }
    assert set(CANARY_VARIABLES) & set(sidecar_env) == set()
    assert sidecar_env["DYN_SYSTEM_PORT"] == "9090"


def test_upstream_on_runs_the_workers_status_server_on_the_inner_port(render_objects):
    assert env(container(render_objects(UPSTREAM_ON), WORKER)) == {
        "DYN_SIDECAR_SOCKET": "/var/run/dynamo/health.sock",
        "DYN_SYSTEM_ENABLED": "true",
        "DYN_SYSTEM_PORT": "8081",
    }


FRONTEND_MIRROR = {
    "sidecar": {
        "mode": "frontend",
        "upstream": {"enabled": True, "url": "http://127.0.0.1:8000/health"},
    }
}


def test_upstream_in_frontend_mode_mirrors_the_frontends_own_health_path(render_objects):
    sidecar_env = env(container(render_objects(FRONTEND_MIRROR), SIDECAR))
    loaded = settings.load({k: v for k, v in sidecar_env.items() if isinstance(v, str)})
    assert (loaded.mode, loaded.upstream_status_url) == (
        settings.Mode.FRONTEND,
        "http://127.0.0.1:8000/health",
    )


def test_upstream_in_frontend_mode_leaves_the_frontends_environment_alone(render_objects):
    # A frontend serves its own health path on its HTTP port: no status server to start.
    assert env(container(render_objects(FRONTEND_MIRROR), WORKER)) == {
        "DYN_SIDECAR_SOCKET": "/var/run/dynamo/health.sock",
    }


def test_upstream_in_frontend_mode_may_set_what_worker_mode_would_set(render_objects):
    values = merged(
        FRONTEND_MIRROR, {"worker": {"env": [{"name": "DYN_SYSTEM_PORT", "value": "9"}]}}
    )
    assert env(container(render_objects(values), WORKER))["DYN_SYSTEM_PORT"] == "9"


@pytest.mark.parametrize("shape", ["documented", "dynamo-1.6.1"])
def test_frontend_shape_reaches_the_sidecar_in_frontend_mode(render_objects, shape):
    values = {"sidecar": {"mode": "frontend", "frontendShape": shape}}
    sidecar_env = env(container(render_objects(values), SIDECAR))
    assert sidecar_env["DYN_SIDECAR_FRONTEND_SHAPE"] == shape
    loaded = settings.load({k: v for k, v in sidecar_env.items() if isinstance(v, str)})
    assert loaded.frontend_shape.value == shape


def test_frontend_shape_is_not_rendered_in_worker_mode(default_objects):
    assert "DYN_SIDECAR_FRONTEND_SHAPE" not in env(container(default_objects, SIDECAR))


def test_upstream_values_follow_into_both_containers(render_objects):
    objs = render_objects(
        {
            "sidecar": {
                "upstream": {
                    "enabled": True,
                    "url": "http://localhost:7001/status",
                    "intervalSeconds": 0.5,
                    "misses": 10,
                }
            },
            "worker": {"env": [{"name": "HF_HOME", "value": "/models"}]},
        }
    )
    sidecar_env = env(container(objs, SIDECAR))
    assert {k: sidecar_env[k] for k in UPSTREAM_VARIABLES} == {
        "DYN_SIDECAR_UPSTREAM_STATUS_URL": "http://localhost:7001/status",
        "DYN_SIDECAR_UPSTREAM_INTERVAL": "0.5",
        "DYN_SIDECAR_UPSTREAM_MISSES": "10",
    }
    assert env(container(objs, WORKER)) == {
        "DYN_SIDECAR_SOCKET": "/var/run/dynamo/health.sock",
        "DYN_SYSTEM_ENABLED": "true",
        "DYN_SYSTEM_PORT": "7001",
        "DYN_SYSTEM_HEALTH_PATH": "/status",
        "HF_HOME": "/models",
    }


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("http://127.0.0.1/health", "80"),
        ("https://127.0.0.1/health", "443"),
        ("http://[::1]:8081/health", "8081"),
        ("http://localhost:65535/health?verbose=1", "65535"),
    ],
)
def test_upstream_inner_port_is_the_urls_port(render_objects, url, port):
    objs = render_objects({"sidecar": {"upstream": {"enabled": True, "url": url}}})
    worker_env = env(container(objs, WORKER))
    assert worker_env["DYN_SYSTEM_PORT"] == port
    assert "DYN_SYSTEM_HEALTH_PATH" not in worker_env


def test_upstream_works_with_the_native_sidecar(render_objects):
    objs = render_objects(merged(UPSTREAM_ON, {"sidecar": {"native": True}}))
    assert "DYN_SIDECAR_UPSTREAM_STATUS_URL" in env(container(objs, SIDECAR))
    assert env(container(objs, WORKER))["DYN_SYSTEM_PORT"] == "8081"


# --- canaries ----------------------------------------------------------------------------------


def test_canary_on_sets_the_sidecars_variables_without_empty_ones(render_objects):
    objs = render_objects(CANARY_ON)
    sidecar_env = env(container(objs, SIDECAR))
    assert {k: sidecar_env[k] for k in CANARY_VARIABLES if k in sidecar_env} == {
        "DYN_SIDECAR_CANARY_URL": "http://127.0.0.1:8000/health",
        "DYN_SIDECAR_CANARY_METHOD": "GET",
        "DYN_SIDECAR_CANARY_EXPECT": "200-299",
        "DYN_SIDECAR_CANARY_TIMEOUT": "3",
        "DYN_SIDECAR_CANARY_WAIT": "10",
        "DYN_SIDECAR_CANARY_FAILURES": "3",
    }
    assert set(UPSTREAM_VARIABLES) & set(sidecar_env) == set()
    assert env(container(objs, WORKER)) == {"DYN_SIDECAR_SOCKET": "/var/run/dynamo/health.sock"}


def test_canary_values_follow_into_the_sidecar(render_objects):
    body = '{"model": "m", "prompt": "hi", "max_tokens": 1}'
    objs = render_objects(
        {
            "sidecar": {
                "canary": {
                    "enabled": True,
                    "url": "https://model.internal:8443/v1/completions",
                    "method": "POST",
                    "body": body,
                    "expect": "200,204",
                    "timeoutSeconds": 2.5,
                    "waitSeconds": 0,
                    "endpoint": "generate",
                    "failures": 5,
                }
            }
        }
    )
    sidecar_env = env(container(objs, SIDECAR))
    assert {k: sidecar_env[k] for k in CANARY_VARIABLES} == {
        "DYN_SIDECAR_CANARY_URL": "https://model.internal:8443/v1/completions",
        "DYN_SIDECAR_CANARY_METHOD": "POST",
        "DYN_SIDECAR_CANARY_BODY": body,
        "DYN_SIDECAR_CANARY_EXPECT": "200,204",
        "DYN_SIDECAR_CANARY_TIMEOUT": "2.5",
        "DYN_SIDECAR_CANARY_WAIT": "0",
        "DYN_SIDECAR_CANARY_ENDPOINT": "generate",
        "DYN_SIDECAR_CANARY_FAILURES": "5",
    }
    assert "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS" not in sidecar_env


def test_both_modes_together(render_objects):
    objs = render_objects(merged(UPSTREAM_ON, CANARY_ON))
    sidecar_env = env(container(objs, SIDECAR))
    assert set(UPSTREAM_VARIABLES) <= set(sidecar_env)
    assert set(CANARY_VARIABLES) - {
        "DYN_SIDECAR_CANARY_BODY",
        "DYN_SIDECAR_CANARY_ENDPOINT",
    } <= set(sidecar_env)


# --- the sidecar accepts what the chart renders ------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        UPSTREAM_ON,
        CANARY_ON,
        merged(UPSTREAM_ON, CANARY_ON),
        {
            "sidecar": {
                "upstream": {"enabled": True, "url": "http://[::1]:7000", "intervalSeconds": 0.1},
                "canary": {
                    "enabled": True,
                    "url": "http://user@localhost:8000/v1/completions?x=1",
                    "method": "PUT",
                    "body": "[1, 2]",
                    "expect": " 200 - 204 ,500",
                    "endpoint": "clear_kv_blocks",
                    "timeoutSeconds": 86400,
                    "waitSeconds": 0.25,
                    "failures": 1000,
                },
            }
        },
        *readme_scenarios().values(),
    ],
    ids=["upstream", "canary", "both", "edges", *readme_scenarios()],
)
def test_sidecar_settings_accept_the_rendered_environment(render_objects, values):
    sidecar_env = env(container(render_objects(values), SIDECAR))
    loaded = settings.load({k: v for k, v in sidecar_env.items() if isinstance(v, str)})
    upstream = values["sidecar"].get("upstream")
    canary = values["sidecar"].get("canary")
    assert loaded.upstream_status_url == (
        upstream.get("url", "http://127.0.0.1:8081/health") if upstream else None
    )
    assert loaded.canary_url == (
        canary.get("url", "http://127.0.0.1:8000/health") if canary else None
    )
    if canary:
        endpoints = values.get("system", {}).get("endpoints", [])
        assert loaded.canary_endpoint == (canary.get("endpoint") or endpoints[0])


# --- what the sidecar would refuse: the schema -------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"sidecar": {"upstream": {"enabled": "yes"}}},
            "- at '/sidecar/upstream/enabled': got string, want boolean",
        ),
        (
            {"sidecar": {"upstream": {"url": "ftp://127.0.0.1/health"}}},
            "- at '/sidecar/upstream/url': 'ftp://127.0.0.1/health' does not match pattern ",
        ),
        (
            {"sidecar": {"upstream": {"url": "http:///health"}}},
            "- at '/sidecar/upstream/url': 'http:///health' does not match pattern ",
        ),
        (
            {"sidecar": {"canary": {"url": "127.0.0.1:8000/health"}}},
            "- at '/sidecar/canary/url': '127.0.0.1:8000/health' does not match pattern ",
        ),
        (
            {"sidecar": {"canary": {"url": "http://127.0.0.1:80a/health"}}},
            "- at '/sidecar/canary/url': 'http://127.0.0.1:80a/health' does not match pattern ",
        ),
        (
            {"sidecar": {"upstream": {"intervalSeconds": 0}}},
            "- at '/sidecar/upstream/intervalSeconds': exclusiveMinimum: got 0, want 0",
        ),
        (
            {"sidecar": {"upstream": {"intervalSeconds": "2"}}},
            "- at '/sidecar/upstream/intervalSeconds': got string, want number",
        ),
        (
            {"sidecar": {"upstream": {"misses": 0}}},
            "- at '/sidecar/upstream/misses': minimum: got 0, want 1",
        ),
        (
            {"sidecar": {"upstream": {"misses": 1.5}}},
            "- at '/sidecar/upstream/misses': got number, want integer",
        ),
        (
            {"sidecar": {"canary": {"method": "DELETE"}}},
            "- at '/sidecar/canary/method': value must be one of 'GET', 'POST', 'PUT'",
        ),
        (
            {"sidecar": {"canary": {"expect": "2xx"}}},
            "- at '/sidecar/canary/expect': '2xx' does not match pattern ",
        ),
        (
            {"sidecar": {"canary": {"expect": "600"}}},
            "- at '/sidecar/canary/expect': '600' does not match pattern ",
        ),
        (
            {"sidecar": {"canary": {"expect": "200,"}}},
            "- at '/sidecar/canary/expect': '200,' does not match pattern ",
        ),
        (
            {"sidecar": {"canary": {"timeoutSeconds": -1}}},
            "- at '/sidecar/canary/timeoutSeconds': exclusiveMinimum: got -1, want 0",
        ),
        (
            {"sidecar": {"canary": {"timeoutSeconds": 86401}}},
            "- at '/sidecar/canary/timeoutSeconds': maximum: got 86,401, want 86,400",
        ),
        (
            {"sidecar": {"canary": {"waitSeconds": -0.5}}},
            "- at '/sidecar/canary/waitSeconds': minimum: got -0.5, want 0",
        ),
        (
            {"sidecar": {"canary": {"failures": 1001}}},
            "- at '/sidecar/canary/failures': maximum: got 1,001, want 1,000",
        ),
        (
            {"sidecar": {"canary": {"endpoint": "gen erate"}}},
            "- at '/sidecar/canary/endpoint': 'gen erate' does not match pattern "
            "'^([A-Za-z0-9_.-]{1,128})?$'",
        ),
        (
            {"sidecar": {"canary": {"body": {"prompt": "hi"}}}},
            "- at '/sidecar/canary/body': got object, want string",
        ),
        (
            {"sidecar": {"canary": {"retries": 2}}},
            "- at '/sidecar/canary': additional properties 'retries' not allowed",
        ),
    ],
)
def test_schema_refuses_what_the_sidecar_would_refuse(chart, values, message):
    assert schema_error(chart, values).startswith(f"dynamo-health-sidecar:\n{message}")


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("DYN_SIDECAR_UPSTREAM_STATUS_URL", "ftp://127.0.0.1/health"),
        ("DYN_SIDECAR_UPSTREAM_STATUS_URL", "http:///health"),
        ("DYN_SIDECAR_CANARY_URL", "http://127.0.0.1:80a/health"),
        ("DYN_SIDECAR_UPSTREAM_INTERVAL", "0"),
        ("DYN_SIDECAR_UPSTREAM_MISSES", "0"),
        ("DYN_SIDECAR_CANARY_METHOD", "DELETE"),
        ("DYN_SIDECAR_CANARY_EXPECT", "2xx"),
        ("DYN_SIDECAR_CANARY_EXPECT", "600"),
        ("DYN_SIDECAR_CANARY_EXPECT", "200,"),
        ("DYN_SIDECAR_CANARY_TIMEOUT", "86401"),
        ("DYN_SIDECAR_CANARY_FAILURES", "1001"),
        ("DYN_SIDECAR_CANARY_ENDPOINT", "gen erate"),
    ],
)
def test_the_sidecar_refuses_what_the_schema_refuses(variable, text):
    # The other half of the schema cases above: the sidecar itself refuses the same texts.
    base = {"DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate"}
    if variable.startswith("DYN_SIDECAR_CANARY") and variable != "DYN_SIDECAR_CANARY_URL":
        base["DYN_SIDECAR_CANARY_URL"] = "http://127.0.0.1:8000/health"
    with pytest.raises(settings.SettingsError, match=f"^{variable}="):
        settings.load({**base, variable: text})


# --- what the sidecar would refuse: the chart's checks -----------------------------------------


@pytest.mark.parametrize(
    ("values", "line"),
    [
        (
            merged(CANARY_ON, {"sidecar": {"mode": "frontend"}}),
            "- sidecar.canary.enabled needs sidecar.mode worker: a canary holds a worker's "
            "endpoint, and a frontend has none",
        ),
        (
            {"sidecar": {"frontendShape": "dynamo-1.6.1"}},
            "- sidecar.frontendShape dynamo-1.6.1 needs sidecar.mode frontend: a worker's bodies "
            "have one shape",
        ),
        (
            {"sidecar": {"canary": {"enabled": True}}},
            "- sidecar.canary.endpoint and system.endpoints are both empty: a canary needs an "
            "endpoint to hold notready; set one of them",
        ),
        (
            merged(CANARY_ON, {"sidecar": {"canary": {"body": '{"prompt": "hi"}'}}}),
            "- sidecar.canary.body needs sidecar.canary.method POST or PUT: a GET has no body",
        ),
        (
            merged(CANARY_ON, {"sidecar": {"canary": {"method": "POST", "body": "{prompt: hi}"}}}),
            "- sidecar.canary.body is not JSON (invalid character 'p' looking for beginning of "
            "object key string): {prompt: hi}",
        ),
        (
            merged(CANARY_ON, {"sidecar": {"canary": {"method": "POST", "body": "NaN"}}}),
            "- sidecar.canary.body is not JSON (invalid character 'N' looking for beginning of "
            "value): NaN",
        ),
        (
            merged(CANARY_ON, {"sidecar": {"canary": {"expect": "200,299-200"}}}),
            "- sidecar.canary.expect 200,299-200 has the range 299-200: its end must not be "
            "below its start",
        ),
        (
            merged(CANARY_ON, {"sidecar": {"canary": {"url": "http://127.0.0.1:0/health"}}}),
            "- sidecar.canary.url http://127.0.0.1:0/health has port 0: expected a port from 1 "
            "to 65535",
        ),
        (
            {"sidecar": {"upstream": {"enabled": True, "url": "http://127.0.0.1:65536/health"}}},
            "- sidecar.upstream.url http://127.0.0.1:65536/health has port 65536: expected a "
            "port from 1 to 65535",
        ),
        (
            {"sidecar": {"upstream": {"enabled": True, "url": "http://127.0.0.1:9090/health"}}},
            "- sidecar.upstream.url http://127.0.0.1:9090/health uses port 9090, which is "
            "system.port, the sidecar's probe port: give the worker's status server another port",
        ),
        (
            {
                "system": {"port": 80},
                "sidecar": {"upstream": {"enabled": True, "url": "http://localhost/health"}},
            },
            "- sidecar.upstream.url http://localhost/health uses port 80, which is system.port, "
            "the sidecar's probe port: give the worker's status server another port",
        ),
        (
            {"sidecar": {"upstream": {"enabled": True, "url": "http://10.0.0.7:8081/health"}}},
            "- sidecar.upstream.url http://10.0.0.7:8081/health must name the pod itself "
            "(127.0.0.1, localhost or [::1]): the chart runs the worker's status server on its "
            "port",
        ),
        (
            merged(UPSTREAM_ON, {"worker": {"env": [{"name": "DYN_SYSTEM_PORT", "value": "9"}]}}),
            "- worker.env sets DYN_SYSTEM_PORT, which sidecar.upstream.enabled sets from "
            "sidecar.upstream.url: remove it",
        ),
    ],
)
def test_chart_refuses_what_the_sidecar_would_refuse_with_one_line(chart, values, line):
    assert error_lines(render_error(chart, values)) == [line]


def test_chart_reports_every_active_check_mistake_at_once(chart):
    values = {
        "sidecar": {
            "mode": "frontend",
            "upstream": {"enabled": True, "url": "http://127.0.0.1:9090/health"},
            "canary": {"enabled": True, "body": "{}"},
        }
    }
    assert error_lines(render_error(chart, values)) == [
        "- sidecar.canary.enabled needs sidecar.mode worker: a canary holds a worker's "
        "endpoint, and a frontend has none",
        "- sidecar.upstream.url http://127.0.0.1:9090/health uses port 9090, which is "
        "system.port, the sidecar's probe port: give the worker's status server another port",
        "- sidecar.canary.endpoint and system.endpoints are both empty: a canary needs an "
        "endpoint to hold notready; set one of them",
        "- sidecar.canary.body needs sidecar.canary.method POST or PUT: a GET has no body",
    ]


@pytest.mark.parametrize(
    "values",
    [
        {"sidecar": {"mode": "frontend", "canary": {"body": "{x", "expect": "299-200"}}},
        {"sidecar": {"upstream": {"url": "http://10.0.0.7:9090/health"}}},
    ],
)
def test_disabled_checks_are_not_validated(render_objects, values):
    assert render_objects(values)


@pytest.mark.parametrize("body", ["null", "[1]", "1", '"x"', "{}", "   "])
def test_any_json_body_is_accepted_and_blank_is_none(render_objects, body):
    values = merged(CANARY_ON, {"sidecar": {"canary": {"method": "POST", "body": body}}})
    sidecar_env = env(container(render_objects(values), SIDECAR))
    assert sidecar_env.get("DYN_SIDECAR_CANARY_BODY") == (body if body.strip() else None)


# --- the chart README's worked examples --------------------------------------------------------


def test_readme_has_the_three_examples():
    vllm, completion, dynamo = readme_examples()
    assert vllm["sidecar"]["canary"]["url"].endswith("/health")
    assert completion["sidecar"]["canary"]["url"].endswith("/v1/completions")
    assert completion["sidecar"]["canary"]["method"] == "POST"
    assert dynamo["worker"]["command"] == ["python3", "-m", "dynamo.vllm"]
    assert dynamo["sidecar"]["upstream"]["enabled"] is True


@pytest.mark.parametrize("name", sorted(readme_scenarios()))
def test_readme_example_renders_and_is_valid_for_every_kubernetes_version(render_objects, name):
    objs = render_objects(readme_scenarios()[name])
    errors = []
    for version in kubernetes_versions():
        for obj in objs:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = ".".join(str(p) for p in error.path)
                errors.append(f"{version} {obj['kind']} {where}: {error.message}")
    assert errors == []


def test_readme_vllm_example_canaries_generate_on_its_port(render_objects):
    objs = render_objects(readme_scenarios()["vllm-completion"])
    sidecar_env = env(container(objs, SIDECAR))
    assert sidecar_env["DYN_SIDECAR_CANARY_URL"] == "http://127.0.0.1:8000/v1/completions"
    assert sidecar_env["DYN_SIDECAR_CANARY_METHOD"] == "POST"
    assert sidecar_env["DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS"] == '["generate"]'
    ports = [p["containerPort"] for p in container(objs, WORKER)["ports"]]
    assert 8000 in ports


def test_readme_dynamo_example_mirrors_the_inner_port(render_objects):
    objs = render_objects(readme_scenarios()["dynamo-mirror"])
    worker_env = env(container(objs, WORKER))
    assert worker_env["DYN_SYSTEM_ENABLED"] == "true"
    assert worker_env["DYN_SYSTEM_PORT"] == "8081"
    sidecar_env = env(container(objs, SIDECAR))
    assert sidecar_env["DYN_SIDECAR_UPSTREAM_STATUS_URL"] == "http://127.0.0.1:8081/health"
    assert sidecar_env["DYN_SYSTEM_PORT"] == "9090"
