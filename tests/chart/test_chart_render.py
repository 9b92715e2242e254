"""What the chart renders: the worker's probes, the sidecar, every value that changes structure."""

from __future__ import annotations

import json

import helm_python as helm
import pytest
from chart_render import by_kind, container, deployment, env, notes, pod_spec
from kubelet import Kind, resolve_port

WORKER = "worker"
SIDECAR = "health-sidecar"
PORT_NAME = "dyn-system"
NOT_YET = (
    "DYN_SIDECAR_NOTIFY_SOCKET",
    "DYN_SIDECAR_WATCH_PROCESS",
    "DYN_SIDECAR_HEARTBEAT_TIMEOUT",
)


def all_containers(objs):
    spec = pod_spec(objs)
    return [*spec.get("initContainers", []), *spec["containers"]]


# --- the worker's probes ---------------------------------------------------------------------


def test_chart_renders_only_a_deployment_by_default(default_objects):
    assert [obj["kind"] for obj in default_objects] == ["Deployment"]


@pytest.mark.parametrize(
    ("kind", "path"),
    [(Kind.STARTUP, "/live"), (Kind.LIVENESS, "/live"), (Kind.READINESS, "/health")],
)
def test_worker_probe_gets_its_path_on_the_named_port(default_objects, kind, path):
    probe = container(default_objects, WORKER)[kind.value]
    assert probe["httpGet"] == {"path": path, "port": PORT_NAME, "scheme": "HTTP"}


@pytest.mark.parametrize("kind", list(Kind))
def test_worker_probe_port_name_resolves_in_the_worker_container(default_objects, kind):
    worker = container(default_objects, WORKER)
    assert resolve_port(worker[kind.value]["httpGet"]["port"], worker) == 9090


def test_startup_probe_default_allows_at_least_ten_minutes(default_objects):
    probe = container(default_objects, WORKER)["startupProbe"]
    allowed = probe["initialDelaySeconds"] + probe["failureThreshold"] * probe["periodSeconds"]
    assert allowed >= 600


def test_liveness_probe_defaults_never_restart_on_one_slow_answer(default_objects):
    probe = container(default_objects, WORKER)["livenessProbe"]
    assert (probe["periodSeconds"], probe["timeoutSeconds"], probe["failureThreshold"]) == (5, 4, 3)


def test_readiness_probe_defaults_match_dynamo_operator(default_objects):
    probe = container(default_objects, WORKER)["readinessProbe"]
    assert (probe["periodSeconds"], probe["timeoutSeconds"], probe["failureThreshold"]) == (
        10,
        4,
        3,
    )


@pytest.mark.parametrize("kind", list(Kind))
def test_worker_probe_renders_every_timing_field_given(render_objects, kind):
    key = {Kind.STARTUP: "startup", Kind.LIVENESS: "liveness", Kind.READINESS: "readiness"}[kind]
    timing = {
        "initialDelaySeconds": 7,
        "periodSeconds": 11,
        "timeoutSeconds": 3,
        "successThreshold": 1,
        "failureThreshold": 1000000,
    }
    if kind is not Kind.READINESS:
        timing["terminationGracePeriodSeconds"] = 42
    probe = container(render_objects({"probes": {key: timing}}), WORKER)[kind.value]
    assert {k: v for k, v in probe.items() if k != "httpGet"} == timing


@pytest.mark.parametrize("kind", list(Kind))
def test_worker_probe_disabled_is_removed(render_objects, kind):
    key = {Kind.STARTUP: "startup", Kind.LIVENESS: "liveness", Kind.READINESS: "readiness"}[kind]
    worker = container(render_objects({"probes": {key: {"enabled": False}}}), WORKER)
    assert kind.value not in worker
    assert all(other.value in worker for other in Kind if other is not kind)


def test_system_port_changes_env_declared_port_and_every_probe(render_objects):
    objs = render_objects({"system": {"port": 8081}})
    worker, sidecar = container(objs, WORKER), container(objs, SIDECAR)
    assert env(sidecar)["DYN_SYSTEM_PORT"] == "8081"
    assert [resolve_port(worker[k.value]["httpGet"]["port"], worker) for k in Kind] == [8081] * 3
    assert [sidecar[k.value]["httpGet"]["port"] for k in Kind] == [8081] * 3


def test_system_paths_change_env_and_every_worker_probe(render_objects):
    objs = render_objects({"system": {"healthPath": "/v1/healthz", "livePath": "/v1/livez"}})
    worker, sidecar = container(objs, WORKER), container(objs, SIDECAR)
    assert env(sidecar)["DYN_SYSTEM_HEALTH_PATH"] == "/v1/healthz"
    assert env(sidecar)["DYN_SYSTEM_LIVE_PATH"] == "/v1/livez"
    assert [worker[k.value]["httpGet"]["path"] for k in Kind] == [
        "/v1/livez",
        "/v1/livez",
        "/v1/healthz",
    ]


# --- the sidecar -----------------------------------------------------------------------------


def test_sidecar_env_comes_from_the_default_values(default_objects):
    assert env(container(default_objects, SIDECAR)) == {
        "DYN_SYSTEM_PORT": "9090",
        "DYN_SYSTEM_HEALTH_PATH": "/health",
        "DYN_SYSTEM_LIVE_PATH": "/live",
        "DYN_SYSTEM_STARTING_HEALTH_STATUS": "notready",
        "DYN_SIDECAR_MODE": "worker",
        "DYN_SIDECAR_SOCKET": "/var/run/dynamo/health.sock",
        "DYN_SIDECAR_LIVENESS": "started",
        "DYN_SIDECAR_DRAIN_SECONDS": "5",
        "DYN_SIDECAR_LOG_FORMAT": "text",
        "DYN_SIDECAR_LOG_LEVEL": "info",
        "DYN_SIDECAR_KUBE": "off",
    }


def test_sidecar_env_leaves_later_release_variables_unset_by_default(default_objects):
    assert not set(NOT_YET) & set(env(container(default_objects, SIDECAR)))


def test_sidecar_env_renders_endpoints_as_compact_json(render_objects):
    objs = render_objects({"system": {"endpoints": ["generate", "clear_kv_blocks"]}})
    variable = env(container(objs, SIDECAR))["DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS"]
    assert variable == '["generate","clear_kv_blocks"]'
    assert json.loads(variable) == ["generate", "clear_kv_blocks"]


def test_sidecar_env_renders_fractional_drain_seconds(render_objects):
    objs = render_objects({"sidecar": {"drainSeconds": 2.5}})
    assert env(container(objs, SIDECAR))["DYN_SIDECAR_DRAIN_SECONDS"] == "2.5"


def test_sidecar_runs_the_serve_subcommand(default_objects):
    sidecar = container(default_objects, SIDECAR)
    assert sidecar["args"] == ["serve"]
    assert "command" not in sidecar


def test_sidecar_is_hardened(default_objects):
    assert container(default_objects, SIDECAR)["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_sidecar_has_small_requests_and_limits(default_objects):
    assert container(default_objects, SIDECAR)["resources"] == {
        "requests": {"cpu": "20m", "memory": "64Mi"},
        "limits": {"cpu": "200m", "memory": "128Mi"},
    }


@pytest.mark.parametrize("kind", list(Kind))
def test_sidecar_probe_checks_the_sidecar_itself(default_objects, kind):
    probe = container(default_objects, SIDECAR)[kind.value]
    assert probe["httpGet"] == {"path": "/sidecar/live", "port": 9090, "scheme": "HTTP"}


def test_sidecar_is_a_regular_container_by_default(default_objects):
    spec = pod_spec(default_objects)
    assert "initContainers" not in spec
    assert [c["name"] for c in spec["containers"]] == [WORKER, SIDECAR]
    assert "restartPolicy" not in container(default_objects, SIDECAR)


def test_sidecar_native_renders_an_init_container_that_restarts_always(render_objects):
    spec = pod_spec(render_objects({"sidecar": {"native": True}}))
    assert [(c["name"], c.get("restartPolicy")) for c in spec["initContainers"]] == [
        (SIDECAR, "Always")
    ]
    assert [c["name"] for c in spec["containers"]] == [WORKER]


def test_sidecar_native_comes_before_extra_init_containers(render_objects):
    extra = {"name": "fetch-model", "image": "busybox:1.36", "command": ["true"]}
    spec = pod_spec(render_objects({"sidecar": {"native": True}, "initContainers": [extra]}))
    assert [c["name"] for c in spec["initContainers"]] == [SIDECAR, "fetch-model"]


@pytest.mark.parametrize("native", [False, True])
def test_socket_volume_is_in_memory_and_mounted_in_both_containers(render_objects, native):
    objs = render_objects({"sidecar": {"native": native}})
    (volume,) = [v for v in pod_spec(objs)["volumes"] if v["name"] == "dynamo-socket"]
    assert volume["emptyDir"]["medium"] == "Memory"
    for name in (WORKER, SIDECAR):
        mounts = {m["name"]: m["mountPath"] for m in container(objs, name)["volumeMounts"]}
        assert mounts["dynamo-socket"] == "/var/run/dynamo"


def test_socket_path_moves_the_mount_and_both_env_variables(render_objects):
    objs = render_objects({"sidecar": {"socketPath": "/run/sock/worker.sock"}})
    for name in (WORKER, SIDECAR):
        assert env(container(objs, name))["DYN_SIDECAR_SOCKET"] == "/run/sock/worker.sock"
        mounts = {m["name"]: m["mountPath"] for m in container(objs, name)["volumeMounts"]}
        assert mounts["dynamo-socket"] == "/run/sock"


def test_pod_fs_group_lets_the_sidecar_user_write_the_socket_volume(default_objects):
    spec = pod_spec(default_objects)
    sidecar = container(default_objects, SIDECAR)
    assert spec["securityContext"]["fsGroup"] == sidecar["securityContext"]["runAsGroup"] == 65532


@pytest.mark.parametrize("native", [False, True])
def test_no_container_port_is_declared_twice_in_the_pod(render_objects, native):
    # The API server warns about a containerPort/protocol declared in two containers.
    objs = render_objects({"sidecar": {"native": native}})
    ports = [
        (p["containerPort"], p.get("protocol", "TCP"))
        for c in all_containers(objs)
        for p in c.get("ports", [])
    ]
    assert len(ports) == len(set(ports))


# --- values that change structure ------------------------------------------------------------


def test_service_is_absent_by_default(default_objects):
    assert by_kind(default_objects, "Service") == []


def test_service_targets_the_worker_port_when_enabled(render_objects):
    objs = render_objects(
        {
            "service": {"enabled": True, "port": 80, "targetPort": "http"},
            "worker": {"ports": [{"name": "http", "containerPort": 8000}]},
        }
    )
    (service,) = by_kind(objs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "worker", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    assert (
        service["spec"]["selector"].items()
        <= deployment(objs)["spec"]["template"]["metadata"]["labels"].items()
    )
    worker_ports = {p["name"]: p["containerPort"] for p in container(objs, WORKER)["ports"]}
    assert worker_ports == {PORT_NAME: 9090, "http": 8000}


def test_service_account_token_is_not_mounted_by_default(default_objects):
    spec = pod_spec(default_objects)
    assert spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec


def test_kube_reporting_renders_a_service_account_role_and_binding(render_objects):
    objs = render_objects({"sidecar": {"kubeReporting": {"enabled": True}}})
    assert sorted(obj["kind"] for obj in objs) == [
        "Deployment",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    spec = pod_spec(objs)
    assert spec["serviceAccountName"] == "rel-dynamo-health-sidecar"
    assert spec["automountServiceAccountToken"] is True
    (binding,) = by_kind(objs, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rel-dynamo-health-sidecar", "namespace": "ns"}
    ]


def test_kube_reporting_role_grants_only_events_and_pod_status(render_objects):
    (role,) = by_kind(render_objects({"sidecar": {"kubeReporting": {"enabled": True}}}), "Role")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["get", "patch"]},
    ]


def test_kube_reporting_sets_kube_on_and_the_downward_api(render_objects):
    objs = render_objects({"sidecar": {"kubeReporting": {"enabled": True}}})
    variables = env(container(objs, SIDECAR))
    assert variables["DYN_SIDECAR_KUBE"] == "on"
    assert {
        name: variables[name]["fieldRef"]["fieldPath"]
        for name in ("POD_NAME", "POD_NAMESPACE", "POD_UID")
    } == {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "POD_UID": "metadata.uid",
    }


def test_kube_reporting_binds_an_existing_service_account(render_objects):
    objs = render_objects(
        {"sidecar": {"kubeReporting": {"enabled": True}}, "serviceAccount": {"name": "llm"}}
    )
    assert by_kind(objs, "ServiceAccount") == []
    assert pod_spec(objs)["serviceAccountName"] == "llm"
    (binding,) = by_kind(objs, "RoleBinding")
    assert binding["subjects"][0]["name"] == "llm"


def test_process_watch_shares_the_process_namespace_and_sets_the_pattern(render_objects):
    objs = render_objects({"sidecar": {"processWatch": {"enabled": True, "pattern": "vllm"}}})
    assert pod_spec(objs)["shareProcessNamespace"] is True
    assert env(container(objs, SIDECAR))["DYN_SIDECAR_WATCH_PROCESS"] == "vllm"


def test_process_namespace_is_not_shared_by_default(default_objects):
    assert "shareProcessNamespace" not in pod_spec(default_objects)


@pytest.mark.parametrize(
    ("values", "variable", "expected"),
    [
        (
            {"heartbeat": {"enabled": True, "timeoutSeconds": 90}},
            "DYN_SIDECAR_HEARTBEAT_TIMEOUT",
            "90",
        ),
        ({"notify": {"enabled": True}}, "DYN_SIDECAR_NOTIFY_SOCKET", "/var/run/dynamo/notify.sock"),
        ({"stateFile": {"enabled": False}}, "DYN_SIDECAR_STATE_FILE", "off"),
        (
            {"stateFile": {"path": "/var/run/dynamo/s.json"}},
            "DYN_SIDECAR_STATE_FILE",
            "/var/run/dynamo/s.json",
        ),
    ],
)
def test_optional_value_sets_its_variable(render_objects, values, variable, expected):
    assert env(container(render_objects({"sidecar": values}), SIDECAR))[variable] == expected


def test_notify_points_the_worker_notify_socket_at_the_sidecar(render_objects):
    objs = render_objects({"sidecar": {"notify": {"enabled": True}}})
    assert env(container(objs, WORKER))["NOTIFY_SOCKET"] == "/var/run/dynamo/notify.sock"


def test_worker_gets_the_socket_path(default_objects):
    assert env(container(default_objects, WORKER)) == {
        "DYN_SIDECAR_SOCKET": "/var/run/dynamo/health.sock"
    }


def test_worker_gpus_are_added_to_its_limits(render_objects):
    objs = render_objects(
        {
            "worker": {
                "gpus": 2,
                "resources": {"limits": {"memory": "80Gi"}, "requests": {"cpu": "8"}},
            }
        }
    )
    assert container(objs, WORKER)["resources"] == {
        "limits": {"memory": "80Gi", "nvidia.com/gpu": 2},
        "requests": {"cpu": "8"},
    }


def test_worker_has_no_resources_by_default(default_objects):
    assert "resources" not in container(default_objects, WORKER)


def test_worker_image_command_args_and_env_are_the_users(render_objects):
    objs = render_objects(
        {
            "worker": {
                "image": {
                    "repository": "registry.example/vllm",
                    "tag": "0.9.2",
                    "pullPolicy": "Always",
                },
                "command": ["python3", "-m", "dynamo.vllm"],
                "args": ["--model", "Qwen/Qwen3-0.6B"],
                "env": [{"name": "HF_HOME", "value": "/models"}],
                "envFrom": [{"secretRef": {"name": "hf-token"}}],
            }
        }
    )
    worker = container(objs, WORKER)
    assert (worker["image"], worker["imagePullPolicy"]) == ("registry.example/vllm:0.9.2", "Always")
    assert worker["command"] == ["python3", "-m", "dynamo.vllm"]
    assert worker["args"] == ["--model", "Qwen/Qwen3-0.6B"]
    assert env(worker) == {
        "DYN_SIDECAR_SOCKET": "/var/run/dynamo/health.sock",
        "HF_HOME": "/models",
    }
    assert worker["envFrom"] == [{"secretRef": {"name": "hf-token"}}]


def test_worker_empty_command_and_args_use_the_image_defaults(render_objects):
    worker = container(render_objects({"worker": {"command": [], "args": []}}), WORKER)
    assert "command" not in worker and "args" not in worker


def test_scheduling_values_reach_the_pod(render_objects):
    values = {
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}
                    ]
                }
            }
        },
        "priorityClassName": "inference",
        "imagePullSecrets": [{"name": "regcred"}],
    }
    spec = pod_spec(render_objects(values))
    assert {key: spec[key] for key in values} == values


def test_extra_volumes_and_mounts_reach_the_worker(render_objects):
    objs = render_objects(
        {
            "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}],
            "worker": {
                "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}]
            },
        }
    )
    assert [v["name"] for v in pod_spec(objs)["volumes"]] == ["dynamo-socket", "models"]
    assert container(objs, WORKER)["volumeMounts"][1] == {
        "name": "models",
        "mountPath": "/models",
        "readOnly": True,
    }


def test_replicas_and_recreate_strategy_reach_the_deployment(render_objects):
    spec = deployment(render_objects({"replicas": 3, "strategy": {"type": "Recreate"}}))["spec"]
    assert (spec["replicas"], spec["strategy"]) == (3, {"type": "Recreate"})


def test_rolling_update_accepts_percentages(render_objects):
    values = {"strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}}
    strategy = deployment(render_objects(values))["spec"]["strategy"]
    assert strategy["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": 0}


def test_termination_grace_period_is_rendered(render_objects):
    assert (
        pod_spec(render_objects({"terminationGracePeriodSeconds": 120}))[
            "terminationGracePeriodSeconds"
        ]
        == 120
    )


def test_pod_labels_cannot_replace_the_selector_labels(render_objects):
    objs = render_objects(
        {
            "podLabels": {"app.kubernetes.io/name": "other", "team": "llm"},
            "podAnnotations": {"a": "b"},
        }
    )
    template = deployment(objs)["spec"]["template"]["metadata"]
    assert template["labels"]["app.kubernetes.io/name"] == "dynamo-health-sidecar"
    assert template["labels"]["team"] == "llm"
    assert template["annotations"] == {"a": "b"}


def test_names_are_cut_to_63_characters(render_objects):
    release = "llm-" + "x" * 49  # 53 characters, Helm's longest release name
    objs = render_objects({"sidecar": {"kubeReporting": {"enabled": True}}}, name=release)
    names = {obj["metadata"]["name"] for obj in objs}
    assert names == {(release + "-dynamo-health-sidecar")[:63]}


def test_image_digest_replaces_the_tag(render_objects):
    digest = "sha256:" + "ab" * 32
    objs = render_objects({"sidecar": {"image": {"digest": digest}}})
    assert container(objs, SIDECAR)["image"] == f"dynamo-health-sidecar@{digest}"


def test_sidecar_image_tag_defaults_to_the_app_version(chart, default_objects):
    assert container(default_objects, SIDECAR)["image"] == (
        f"dynamo-health-sidecar:{chart.metadata['appVersion']}"
    )


def test_example_worker_runs_the_sidecar_image_of_this_release(chart, default_objects):
    assert (
        container(default_objects, WORKER)["image"] == container(default_objects, SIDECAR)["image"]
    )


def test_example_worker_holds_a_session_and_reports_generate_ready(default_objects):
    script = container(default_objects, WORKER)["args"][0]
    compile(script, "example-worker", "exec")
    assert b"/v1/session" in script.encode() and b"/v1/endpoints/generate" in script.encode()


# --- consistency checks the schema cannot make -----------------------------------------------


def render_error(chart, values) -> str:
    with pytest.raises(helm.HelmRenderError) as caught:
        chart.render(values, name="rel", namespace="ns")
    return str(caught.value)


def test_grace_period_not_above_drain_time_is_refused(chart):
    message = render_error(
        chart, {"terminationGracePeriodSeconds": 5, "sidecar": {"drainSeconds": 5}}
    )
    assert (
        "- terminationGracePeriodSeconds (5) must be greater than sidecar.drainSeconds (5): "
        "the drain happens inside the grace period"
    ) in message


@pytest.mark.parametrize("path", ["/metrics", "/sidecar/live"])
def test_path_served_by_the_sidecar_itself_is_refused(chart, path):
    message = render_error(chart, {"system": {"healthPath": path}})
    assert (
        f"- system.healthPath {path} is served by the sidecar itself; choose another path"
        in message
    )


def test_live_path_equal_to_health_path_is_refused(chart):
    message = render_error(chart, {"system": {"livePath": "/health"}})
    assert "- system.livePath and system.healthPath are both /health: they must differ" in message


def test_service_target_port_must_name_a_worker_port(chart):
    message = render_error(chart, {"service": {"enabled": True}})
    assert (
        "- service.targetPort http is not the name of a port in worker.ports (names: none)"
        in message
    )


def test_process_watch_without_pattern_is_refused(chart):
    message = render_error(chart, {"sidecar": {"processWatch": {"enabled": True}}})
    assert "- sidecar.processWatch.pattern is empty" in message


def test_notify_socket_outside_the_shared_directory_is_refused(chart):
    message = render_error(
        chart, {"sidecar": {"notify": {"enabled": True, "socketPath": "/tmp/notify.sock"}}}
    )
    assert "- sidecar.notify.socketPath (/tmp/notify.sock) must be in /var/run/dynamo" in message


def test_worker_port_clashing_with_the_probe_port_is_refused(chart):
    message = render_error(chart, {"worker": {"ports": [{"name": "http", "containerPort": 9090}]}})
    assert (
        "- worker.ports http uses port 9090, which is system.port, the sidecar's probe port"
        in message
    )


def test_every_inconsistency_is_reported_at_once(chart):
    message = render_error(
        chart,
        {
            "terminationGracePeriodSeconds": 1,
            "system": {"livePath": "/metrics"},
            "service": {"enabled": True},
        },
    )
    assert message.count("\n- ") == 3


# --- NOTES.txt -------------------------------------------------------------------------------


def test_notes_give_paste_able_kubectl_and_curl_lines(chart):
    text = notes(chart)
    assert (
        "kubectl --namespace ns get pods -l "
        "app.kubernetes.io/name=dynamo-health-sidecar,app.kubernetes.io/instance=rel --watch"
    ) in text
    assert 'kubectl --namespace ns port-forward "pod/$POD" 9090:9090 &' in text
    assert "curl -i http://127.0.0.1:9090/health" in text
    assert "curl -i http://127.0.0.1:9090/live" in text
    assert "/v1/status" in text
    assert "The startup probe gives the model 1800 s to load" in text


def test_notes_follow_the_port_and_paths(chart):
    text = notes(chart, {"system": {"port": 8081, "healthPath": "/hz"}})
    assert 'port-forward "pod/$POD" 8081:8081 &' in text
    assert "curl -i http://127.0.0.1:8081/hz" in text


def test_notes_warn_when_liveness_runs_without_startup(chart):
    assert "WARNING: probes.startup is disabled" in notes(
        chart, {"probes": {"startup": {"enabled": False}}}
    )


def test_notes_say_where_the_events_are_when_reporting_is_on(chart):
    text = notes(chart, {"sidecar": {"kubeReporting": {"enabled": True}}})
    assert "reports events and the condition dynamo-health-sidecar.io/worker-ready" in text


def test_notes_do_not_warn_about_the_heartbeat(chart):
    assert "later release" not in notes(chart, {"sidecar": {"heartbeat": {"enabled": True}}})


def test_state_file_is_left_to_its_default_beside_the_socket(default_objects):
    assert "DYN_SIDECAR_STATE_FILE" not in env(container(default_objects, SIDECAR))


def test_notes_say_the_default_worker_is_an_example(chart):
    assert "the worker is the chart's example worker" in notes(chart)


def test_worker_has_no_prestop_hook_by_default(default_objects):
    assert "lifecycle" not in container(default_objects, WORKER)


def test_worker_prestop_sleep_keeps_it_serving_before_its_sigterm(render_objects):
    worker = container(render_objects({"worker": {"preStopSleepSeconds": 15}}), WORKER)
    assert worker["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "15"]}}}


def test_grace_period_not_above_the_prestop_sleep_is_refused(chart):
    values = {"terminationGracePeriodSeconds": 30, "worker": {"preStopSleepSeconds": 30}}
    assert (
        "- terminationGracePeriodSeconds (30) must be greater than worker.preStopSleepSeconds "
        "(30): the preStop hook runs inside the grace period"
    ) in render_error(chart, values)
