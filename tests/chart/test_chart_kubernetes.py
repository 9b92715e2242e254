"""Every rendering is a valid set of Kubernetes objects, from 1.29 to the newest version that
kubernetes-validate ships, and follows the API server's rules that a JSON schema cannot express."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
import yaml
from chart_render import CHART_README, kubernetes_versions, pod_spec


def readme_example() -> dict:
    """The values of the chart README's worked example, so the README is rendered and checked."""
    text = CHART_README.read_text()
    section = text[text.index("## Seeing the worker die or hang") :]
    block = section[
        section.index("```yaml") + len("```yaml") : section.index(
            "```", section.index("```yaml") + 7
        )
    ]
    return yaml.safe_load(block)


# Every value that changes the structure of what is rendered, one rendering each.
SCENARIOS = {
    "defaults": {},
    "native-sidecar": {"sidecar": {"native": True}},
    "native-sidecar-with-init-containers": {
        "sidecar": {"native": True},
        "initContainers": [{"name": "fetch-model", "image": "busybox:1.36", "command": ["true"]}],
    },
    "service": {
        "service": {"enabled": True, "type": "LoadBalancer", "annotations": {"a": "b"}},
        "worker": {"ports": [{"name": "http", "containerPort": 8000}]},
    },
    "kube-reporting": {"sidecar": {"kubeReporting": {"enabled": True}}},
    "kube-reporting-existing-account": {
        "sidecar": {"kubeReporting": {"enabled": True}},
        "serviceAccount": {"name": "llm", "automountToken": True},
    },
    "fault-features": {
        "sidecar": {
            "processWatch": {"enabled": True, "pattern": "python.*worker"},
            "heartbeat": {"enabled": True, "timeoutSeconds": 30},
            "notify": {"enabled": True},
            "stateFile": {"enabled": False},
        },
        "worker": {"preStopSleepSeconds": 10},
    },
    "no-probes": {
        "probes": {k: {"enabled": False} for k in ("startup", "liveness", "readiness")},
        "sidecar": {
            "probes": {k: {"enabled": False} for k in ("startup", "liveness", "readiness")}
        },
    },
    "probe-grace-periods": {
        "probes": {
            "startup": {"terminationGracePeriodSeconds": 10},
            "liveness": {"terminationGracePeriodSeconds": 10},
        }
    },
    "gpu-worker": {
        "worker": {
            "image": {"repository": "nvcr.io/nvidia/ai-dynamo/vllm-runtime", "tag": "0.4.1"},
            "command": ["python3", "-m", "dynamo.vllm"],
            "args": ["--model", "Qwen/Qwen3-0.6B"],
            "gpus": 1,
            "resources": {"requests": {"cpu": "4", "memory": "32Gi"}, "limits": {"memory": "64Gi"}},
            "env": [
                {"name": "HF_HOME", "value": "/models"},
                {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
            ],
            "envFrom": [{"configMapRef": {"name": "worker-config"}}],
            "volumeMounts": [{"name": "models", "mountPath": "/models"}],
            "securityContext": {"runAsUser": 1000, "capabilities": {"add": ["IPC_LOCK"]}},
        },
        "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}],
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {
                                "matchLabels": {"app.kubernetes.io/name": "dynamo-health-sidecar"}
                            },
                        },
                    }
                ]
            }
        },
        "imagePullSecrets": [{"name": "ngc"}],
        "priorityClassName": "inference",
        "podLabels": {"team": "llm"},
        "podAnnotations": {"prometheus.io/scrape": "true"},
    },
    "recreate-and-replicas": {"replicas": 4, "strategy": {"type": "Recreate"}},
    "custom-system": {
        "system": {
            "port": 8081,
            "healthPath": "/v1/healthz",
            "livePath": "/v1/livez",
            "endpoints": ["generate", "clear_kv_blocks"],
            "startingHealthStatus": "ready",
        },
        "sidecar": {
            "mode": "frontend",
            "liveness": "health",
            "drainSeconds": 12.5,
            "socketPath": "/run/dynamo-sock/h.sock",
            "log": {"format": "json", "level": "debug"},
            "image": {"digest": "sha256:" + "0" * 64},
        },
        "terminationGracePeriodSeconds": 30,
    },
    "long-names": {"fullnameOverride": "x" * 63, "sidecar": {"kubeReporting": {"enabled": True}}},
    "readme-fault-example": readme_example(),
    "active-checks": {
        "system": {"endpoints": ["generate"]},
        "sidecar": {
            "upstream": {"enabled": True, "url": "http://127.0.0.1:8081/health"},
            "canary": {
                "enabled": True,
                "url": "http://127.0.0.1:8000/v1/completions",
                "method": "POST",
                "body": '{"model": "m", "prompt": "hi", "max_tokens": 1}',
            },
        },
        "worker": {"ports": [{"name": "http", "containerPort": 8000}]},
    },
}

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request, render_objects):
    return request.param, render_objects(SCENARIOS[request.param])


def test_kubernetes_versions_run_from_1_29_to_the_newest_shipped():
    versions = kubernetes_versions()
    newest = kubernetes_validate.utils.latest_version()
    assert versions[0] == "1.29.0"
    assert versions[-1] == newest


def test_kubernetes_validate_strict_mode_rejects_an_unknown_field():
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"prots": []},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, "1.29.0", strict=True)


def test_rendering_is_valid_for_every_kubernetes_version(scenario):
    _name, objs = scenario
    errors = []
    for version in kubernetes_versions():
        for obj in objs:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = ".".join(str(p) for p in error.path)
                errors.append(f"{version} {obj['kind']} {where}: {error.message}")
    assert errors == []


def test_rendering_names_are_dns_labels(scenario):
    _name, objs = scenario
    spec = pod_spec(objs)
    names = [obj["metadata"]["name"] for obj in objs]
    names += [c["name"] for c in [*spec.get("initContainers", []), *spec["containers"]]]
    names += [v["name"] for v in spec["volumes"]]
    assert [n for n in names if len(n) > 63 or not DNS_LABEL.match(n)] == []


def test_rendering_container_names_are_unique(scenario):
    _name, objs = scenario
    spec = pod_spec(objs)
    names = [c["name"] for c in [*spec.get("initContainers", []), *spec["containers"]]]
    assert len(names) == len(set(names))


def test_rendering_port_names_are_iana_service_names(scenario):
    _name, objs = scenario
    spec = pod_spec(objs)
    names = [p["name"] for c in spec["containers"] for p in c.get("ports", [])]
    assert [n for n in names if len(n) > 15 or not IANA_SVC_NAME.match(n)] == []


def test_rendering_mounts_only_volumes_of_the_pod(scenario):
    _name, objs = scenario
    spec = pod_spec(objs)
    volumes = {v["name"] for v in spec["volumes"]}
    mounted = {
        m["name"]
        for c in spec["containers"] + spec.get("initContainers", [])
        for m in c.get("volumeMounts", [])
    }
    assert mounted <= volumes


def test_rendering_restarting_probes_need_one_success(scenario):
    # The API server refuses successThreshold other than 1 for startup and liveness probes.
    _name, objs = scenario
    spec = pod_spec(objs)
    thresholds = [
        c[kind].get("successThreshold", 1)
        for c in [*spec.get("initContainers", []), *spec["containers"]]
        for kind in ("startupProbe", "livenessProbe")
        if kind in c
    ]
    assert set(thresholds) <= {1}


def test_rendering_env_names_are_unique_per_container(scenario):
    _name, objs = scenario
    spec = pod_spec(objs)
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        names = [e["name"] for e in c.get("env", [])]
        assert len(names) == len(set(names)), c["name"]


def test_rendering_probes_only_on_containers_that_may_have_them(scenario):
    # Only regular containers and restartable (native sidecar) init containers may have probes.
    _name, objs = scenario
    for c in pod_spec(objs).get("initContainers", []):
        if c.get("restartPolicy") != "Always":
            assert not {"startupProbe", "livenessProbe", "readinessProbe"} & set(c), c["name"]
