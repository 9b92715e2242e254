"""Finding the pod and the API server (sidecar/kube/discovery.py), the checks of the
Kubernetes settings (sidecar/kube/rules.py) and whether reporting runs (sidecar/kube/cluster.py):
the Downward API variables, the service account, the overrides and the line a user sees for
each bad one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kube_pod import POD, POD_ENV, SERVICE_ENV, service_account

from sidecar.kube.cluster import Discovery, discover
from sidecar.kube.discovery import find_in_cluster, refusal
from sidecar.kube.rules import (
    DEFAULT_CONDITION,
    check_api_url,
    check_condition_type,
    check_service_account_dir,
)
from sidecar.settings import SettingsError, load


def test_kube_find_in_cluster_is_complete_with_the_downward_api_and_a_service_account(
    tmp_path: Path,
) -> None:
    directory = service_account(tmp_path)
    found = find_in_cluster({**POD_ENV, **SERVICE_ENV}, directory)
    assert found.complete
    assert found.pod == POD
    assert found.api_url == "https://10.96.0.1:443"
    assert (found.token_path, found.ca_path) == (directory / "token", directory / "ca.crt")


def test_kube_find_in_cluster_names_everything_missing_in_the_refusal_line(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "nothing"
    found = find_in_cluster({"POD_NAME": "p", "POD_UID": ""}, directory)
    assert not found.complete
    assert found.pod is None
    assert refusal("DYN_SIDECAR_KUBE", "on", found) == (
        "DYN_SIDECAR_KUBE='on' needs the pod's Downward API variables, its service account and "
        "the kubernetes package, "
        f"but POD_NAMESPACE, POD_UID, KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT, "
        f"{directory}/token and {directory}/ca.crt are missing: set them (the chart does with "
        "sidecar.kubeReporting.enabled) or use auto or off"
    )


def test_kube_find_in_cluster_without_a_service_account_token_is_incomplete(
    tmp_path: Path,
) -> None:
    directory = service_account(tmp_path)
    (directory / "token").unlink()
    found = find_in_cluster({**POD_ENV, **SERVICE_ENV}, directory)
    assert found.pod == POD
    assert found.missing == (str(directory / "token"),)
    assert found.describe_missing() == f"{directory}/token is missing"


def test_kube_find_in_cluster_without_the_kubernetes_package_is_incomplete(
    tmp_path: Path,
) -> None:
    environ = {**POD_ENV, **SERVICE_ENV}
    found = find_in_cluster(environ, service_account(tmp_path), installed=lambda: False)
    assert found.missing == (
        "the kubernetes Python package (pip install 'dynamo-health-sidecar[kube]')",
    )


def test_kube_find_in_cluster_brackets_an_ipv6_service_host(tmp_path: Path) -> None:
    environ = {**POD_ENV, "KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    assert find_in_cluster(environ, service_account(tmp_path)).api_url == "https://[fd00::1]:443"


@pytest.mark.parametrize(
    ("port", "shown"),
    [("https", "'https'"), ("\u00b2", "'\u00b2'"), ("9" * 5000, repr("9" * 40))],
    ids=["a name", "a superscript digit", "5000 digits"],
)
def test_kube_find_in_cluster_refuses_a_service_port_that_is_not_a_port(
    tmp_path: Path, port: str, shown: str
) -> None:
    environ = {**POD_ENV, **SERVICE_ENV, "KUBERNETES_SERVICE_PORT": port}
    found = find_in_cluster(environ, service_account(tmp_path))
    assert found.missing == (f"a valid KUBERNETES_SERVICE_PORT (not {shown})",)


def test_kube_find_in_cluster_with_an_http_url_needs_no_service_variables_nor_ca(
    tmp_path: Path,
) -> None:
    directory = service_account(tmp_path, ca=False)
    found = find_in_cluster(POD_ENV, directory, api_url="http://127.0.0.1:8001")
    assert found.complete
    assert found.api_url == "http://127.0.0.1:8001"


@pytest.mark.parametrize(
    "url", ["https://10.96.0.1:443", "http://127.0.0.1:8001/", "https://[fd00::1]", "https://k8s"]
)
def test_kube_check_api_url_accepts_a_server_url(url: str) -> None:
    assert check_api_url("DYN_SIDECAR_KUBE_API_URL", url) is None


@pytest.mark.parametrize(
    "url",
    [
        "10.96.0.1:443",
        "ftp://10.96.0.1",
        "https://",
        "https://10.96.0.1:99999",
        "https://10.96.0.1/api",
        "https://u:p@10.96.0.1",
        "https://10.96.0.1?x=1",
        "https://10.96.0.1 ",
    ],
)
def test_kube_check_api_url_refuses_what_is_not_a_server_url(url: str) -> None:
    assert check_api_url("DYN_SIDECAR_KUBE_API_URL", url) == (
        f"DYN_SIDECAR_KUBE_API_URL={url!r} is invalid: it must be the http:// or https:// URL "
        "of the API server, with a host and no path, query or credentials, such as "
        "https://10.96.0.1:443"
    )


def test_kube_check_service_account_dir_wants_an_absolute_path() -> None:
    assert check_service_account_dir("--kube-service-account-dir", "/var/run/sa") is None
    assert check_service_account_dir("--kube-service-account-dir", "sa") == (
        "--kube-service-account-dir='sa' is invalid: it must be the absolute path of the "
        "directory holding the service account's token and ca.crt, such as "
        "/var/run/secrets/kubernetes.io/serviceaccount"
    )


@pytest.mark.parametrize(
    "name", [DEFAULT_CONDITION, "WorkerReady", "example.com/ready", "a.b-c.io/x_y.z-1"]
)
def test_kube_check_condition_type_accepts_a_qualified_name(name: str) -> None:
    assert check_condition_type("DYN_SIDECAR_KUBE_CONDITION", name) is None


@pytest.mark.parametrize(
    "name",
    ["", "/ready", "Example.com/ready", "example.com/", "a/b/c", "-ready", "x" * 64, "a b"],
)
def test_kube_check_condition_type_refuses_what_is_not_a_qualified_name(name: str) -> None:
    assert check_condition_type("DYN_SIDECAR_KUBE_CONDITION", name) == (
        f"DYN_SIDECAR_KUBE_CONDITION={name!r} is invalid: it must be a Kubernetes qualified "
        "name: an optional DNS subdomain and '/', then 1 to 63 letters, digits, '-', '_' or '.' "
        "that begin and end with a letter or digit, such as dynamo-health-sidecar.io/worker-ready"
    )


def test_kube_check_condition_type_refuses_the_kubelets_own_conditions() -> None:
    assert check_condition_type("DYN_SIDECAR_KUBE_CONDITION", "Ready") == (
        "DYN_SIDECAR_KUBE_CONDITION='Ready' is invalid: that condition is the kubelet's own; "
        "use a type of your own domain, such as dynamo-health-sidecar.io/worker-ready"
    )


def test_kube_importing_the_package_and_finding_the_cluster_do_not_import_kubernetes() -> None:
    code = (
        "import sys, sidecar.kube.api, sidecar.kube.reporter, sidecar.kube.discovery as d\n"
        "assert d.find_in_cluster({}).missing\n"  # looks for the package, no import
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'urllib3')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.strip() == "[]"


# -- whether reporting runs: decided at startup, after the settings ----------------------

KUBE_ON = (
    "needs the pod's Downward API variables, its service account and the kubernetes package, "
    "but POD_NAME, POD_NAMESPACE, POD_UID, KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT, "
    "/var/run/secrets/kubernetes.io/serviceaccount/token and "
    "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt are missing: set them (the chart does "
    "with sidecar.kubeReporting.enabled) or use auto or off"
)


def refusal_of(environ: dict[str, str], flags: dict[str, str | None] | None = None) -> str:
    with pytest.raises(SettingsError) as caught:
        discover(load(environ, flags), environ)
    return str(caught.value)


@pytest.mark.parametrize("text", ["on", "ON", " On "])
def test_kube_on_without_the_cluster_is_refused_showing_the_value_as_given(text: str) -> None:
    assert refusal_of({"DYN_SIDECAR_KUBE": text}) == f"DYN_SIDECAR_KUBE={text!r} {KUBE_ON}"


def test_kube_on_flag_refused_naming_the_flag() -> None:
    assert refusal_of({"DYN_SIDECAR_KUBE": "off"}, {"kube": "on"}) == f"--kube='on' {KUBE_ON}"


def test_kube_on_with_everything_there_reports_to_that_cluster(tmp_path: Path) -> None:
    environ = {
        **POD_ENV,
        **SERVICE_ENV,
        "DYN_SIDECAR_KUBE": "on",
        "DYN_SIDECAR_KUBE_SERVICE_ACCOUNT_DIR": str(service_account(tmp_path)),
    }
    found = discover(load(environ), environ, installed=lambda: True)
    assert found.cluster is not None and found.cluster.pod == POD
    assert found.off_reason == ""


def test_kube_auto_inside_a_cluster_says_what_it_lacks(tmp_path: Path) -> None:
    environ = {
        **SERVICE_ENV,
        "DYN_SIDECAR_KUBE_SERVICE_ACCOUNT_DIR": str(service_account(tmp_path)),
    }
    assert discover(load(environ), environ, installed=lambda: True) == Discovery(
        None, "POD_NAME, POD_NAMESPACE and POD_UID are missing"
    )


def test_kube_auto_outside_a_cluster_is_off_without_a_reason() -> None:
    assert discover(load({}), {}) == Discovery(None, "")


def test_kube_off_looks_for_nothing() -> None:
    def installed() -> bool:
        raise AssertionError("off must not look for the kubernetes package")

    assert discover(load({"DYN_SIDECAR_KUBE": "off"}), {}, installed) == Discovery(None, "")
