"""The chart with Kubernetes reporting on: valid objects, a minimal namespaced Role bound to the
pod's ServiceAccount, the token mounted only then, and the pod's identity by the Downward API."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from chart_render import by_kind, container, env, kubernetes_versions, pod_spec

ON = {"sidecar": {"kubeReporting": {"enabled": True}}}
ON_WITH_ACCOUNT = {**ON, "serviceAccount": {"name": "llm", "automountToken": False}}
RBAC_KINDS = ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "ServiceAccount")


def sidecar_env(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return env(container(objs, "health-sidecar"))


@pytest.mark.parametrize("values", [ON, ON_WITH_ACCOUNT], ids=["own-account", "named-account"])
def test_chart_kube_objects_are_valid_for_every_kubernetes_version(
    render_objects: Any, values: dict[str, Any]
) -> None:
    objs = render_objects(values)
    errors = []
    for version in kubernetes_versions():
        for obj in objs:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = ".".join(str(p) for p in error.path)
                errors.append(f"{version} {obj['kind']} {where}: {error.message}")
    assert errors == []


def test_chart_kube_role_grants_exactly_events_and_the_pods_status(render_objects: Any) -> None:
    (role,) = by_kind(render_objects(ON), "Role")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        ("", "events", "create"),
        ("", "events", "patch"),
        ("", "pods/status", "get"),
        ("", "pods/status", "patch"),
    }


def test_chart_kube_rbac_has_no_wildcard_and_nothing_cluster_wide(render_objects: Any) -> None:
    objs = render_objects(ON)
    assert by_kind(objs, "ClusterRole") == by_kind(objs, "ClusterRoleBinding") == []
    (role,) = by_kind(objs, "Role")
    for rule in role["rules"]:
        for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in item for item in rule.get(key, [])), (key, rule)
        assert set(rule) <= {"apiGroups", "resources", "verbs"}


def test_chart_kube_role_binding_binds_the_role_to_the_pods_service_account(
    render_objects: Any,
) -> None:
    objs = render_objects(ON, name="rel", namespace="inference")
    (role,) = by_kind(objs, "Role")
    (binding,) = by_kind(objs, "RoleBinding")
    (account,) = by_kind(objs, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "inference"}
    ]
    assert pod_spec(objs)["serviceAccountName"] == account["metadata"]["name"]


def test_chart_kube_binds_a_named_service_account_without_making_one(render_objects: Any) -> None:
    objs = render_objects(ON_WITH_ACCOUNT, namespace="inference")
    assert by_kind(objs, "ServiceAccount") == []
    (binding,) = by_kind(objs, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "llm", "namespace": "inference"}
    ]
    assert pod_spec(objs)["serviceAccountName"] == "llm"


@pytest.mark.parametrize(
    ("values", "mounted"),
    [({}, False), (ON, True), (ON_WITH_ACCOUNT, True)],
    ids=["off", "on", "on-with-named-account"],
)
def test_chart_kube_mounts_the_token_only_when_reporting_is_on(
    render_objects: Any, values: dict[str, Any], mounted: bool
) -> None:
    objs = render_objects(values)
    assert pod_spec(objs)["automountServiceAccountToken"] is mounted
    # The chart's own ServiceAccount does not mount its token anywhere else by default.
    for account in by_kind(objs, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


def test_chart_kube_gives_the_sidecar_its_pods_identity_by_the_downward_api(
    render_objects: Any,
) -> None:
    variables = sidecar_env(render_objects(ON))
    assert variables["DYN_SIDECAR_KUBE"] == "on"
    assert {name: variables.get(name) for name in ("POD_NAME", "POD_NAMESPACE", "POD_UID")} == {
        "POD_NAME": {"fieldRef": {"fieldPath": "metadata.name"}},
        "POD_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        "POD_UID": {"fieldRef": {"fieldPath": "metadata.uid"}},
    }


def test_chart_kube_off_renders_no_rbac_no_identity_and_kube_off(render_objects: Any) -> None:
    objs = render_objects({})
    assert [o["kind"] for o in objs if o["kind"] in RBAC_KINDS] == []
    variables = sidecar_env(objs)
    assert variables["DYN_SIDECAR_KUBE"] == "off"
    assert not {"POD_NAME", "POD_NAMESPACE", "POD_UID"} & set(variables)
    assert "serviceAccountName" not in pod_spec(objs)


def test_chart_kube_readiness_gate_is_a_value_off_by_default(
    default_values: dict[str, Any],
) -> None:
    assert default_values["sidecar"]["kubeReporting"]["readinessGate"] is False


def test_chart_kube_readiness_gate_waits_for_the_sidecars_condition(
    render_objects: Any, default_values: dict[str, Any]
) -> None:
    values = {"sidecar": {"kubeReporting": {"enabled": True, "readinessGate": True}}}
    objs = render_objects(values)
    condition = default_values["sidecar"]["kubeReporting"]["conditionType"]
    assert pod_spec(objs)["readinessGates"] == [{"conditionType": condition}]
    assert sidecar_env(objs)["DYN_SIDECAR_KUBE_CONDITION"] == condition
    assert "readinessGates" not in pod_spec(render_objects(ON))


def test_chart_kube_readiness_gate_without_reporting_is_refused(
    render_objects: Any, default_values: dict[str, Any]
) -> None:
    with pytest.raises(Exception, match=r"readinessGate needs sidecar\.kubeReporting\.enabled"):
        render_objects({"sidecar": {"kubeReporting": {"readinessGate": True}}})
