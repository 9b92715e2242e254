"""`signal` and `status` as a shell runs them, against a real sidecar."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from conftest import Sidecar


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DYN_")}
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_signal_ready_makes_the_health_path_answer_200(sidecar: Sidecar) -> None:
    result = run("signal", "ready", "generate", "--socket", str(sidecar.socket_path))
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "generate: ready (worker ready)\n",
        "",
    )
    assert sidecar.probe("/health").status_code == 200


def test_signal_notready_withdraws_the_endpoint(sidecar: Sidecar) -> None:
    sidecar.control("POST", "/v1/endpoints/generate/ready")
    result = run("signal", "notready", "generate", "--socket", str(sidecar.socket_path))
    assert result.returncode == 0
    assert sidecar.probe("/health").status_code == 503


def test_signal_socket_defaults_to_the_variable(sidecar: Sidecar) -> None:
    result = run(
        "signal", "ready", "generate", env={"DYN_SIDECAR_SOCKET": str(sidecar.socket_path)}
    )
    assert result.returncode == 0
    assert sidecar.probe("/health").status_code == 200


def test_signal_heartbeat_with_a_pid_is_recorded(sidecar: Sidecar) -> None:
    result = run("signal", "heartbeat", "--pid", "4242", "--socket", str(sidecar.socket_path))
    assert (result.returncode, result.stdout) == (0, "heartbeat: worker life 1\n")
    assert sidecar.control("GET", "/v1/worker").json()["pid"] == 4242


def test_signal_refused_name_exits_2_with_one_line(sidecar: Sidecar) -> None:
    result = run("signal", "ready", "gen erate", "--socket", str(sidecar.socket_path))
    assert result.returncode == 2
    assert result.stderr == (
        "dynamo-health-sidecar: the sidecar refused PUT /v1/endpoints/gen%20erate with 422: "
        'endpoint name "gen erate" is invalid: names are 1 to 128 characters of A-Z a-z 0-9 _ . -\n'
    )


def test_signal_without_a_sidecar_exits_1_with_one_line(tmp_path: object) -> None:
    result = run("signal", "ready", "generate", "--socket", "/tmp/no-such-sidecar.sock")
    assert result.returncode == 1
    assert result.stderr == (
        "dynamo-health-sidecar: no sidecar at /tmp/no-such-sidecar.sock: "
        "[Errno 2] No such file or directory\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["signal", "ready"], "signal ready needs an endpoint, e.g. signal ready generate"),
        (["signal", "heartbeat", "generate"], "signal heartbeat takes no endpoint"),
    ],
)
def test_signal_usage_mistake_exits_2(args: list[str], message: str) -> None:
    result = run(*args, "--socket", "/tmp/x.sock")
    assert result.returncode == 2
    assert result.stderr == f"dynamo-health-sidecar: {message} (see dynamo-health-sidecar --help)\n"


def test_signal_unknown_action_exits_2_with_one_line() -> None:
    result = run("signal", "busy", "generate")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "invalid choice: 'busy'" in result.stderr


def test_status_of_a_not_ready_worker_exits_3_with_a_table(sidecar: Sidecar) -> None:
    result = run("status", "--socket", str(sidecar.socket_path))
    assert result.returncode == 3
    lines = result.stdout.splitlines()
    assert lines[0] == "status           notready"
    assert lines[1] == "life             1 (alive)"
    assert lines[2] == "live             no: the worker has not been ready yet in this life"
    assert "ENDPOINT         STATUS    FOR       CHANGES" in lines
    assert any(line.startswith("generate         notready") for line in lines)


def test_status_of_a_ready_worker_exits_0(sidecar: Sidecar) -> None:
    sidecar.control("POST", "/v1/endpoints/generate/ready")
    result = run("status", "--socket", str(sidecar.socket_path))
    assert result.returncode == 0
    assert result.stdout.splitlines()[:3] == [
        "status           ready",
        "life             1 (alive)",
        "live             yes",
    ]


def test_status_json_has_the_health_body_and_the_worker(sidecar: Sidecar) -> None:
    sidecar.control("POST", "/v1/heartbeat", json={"pid": 77})
    result = run("status", "--json", "--socket", str(sidecar.socket_path))
    document = json.loads(result.stdout)
    assert document["health"]["endpoints"] == {"generate": "notready"}
    assert document["worker"]["pid"] == 77
    assert document["worker"]["endpoints"]["generate"]["transitions"] == 0


def test_status_of_a_frontend_exits_0_when_healthy(run_sidecar: Callable[..., Sidecar]) -> None:
    sidecar = run_sidecar({"DYN_SIDECAR_MODE": "frontend"})
    assert run("status", "--socket", str(sidecar.socket_path)).returncode == 3
    sidecar.control(
        "POST",
        "/v1/instances",
        json={
            "namespace": "dynamo",
            "component": "backend",
            "endpoint": "generate",
            "instance_id": 1,
            "transport": {},
        },
    )
    result = run("status", "--socket", str(sidecar.socket_path))
    assert result.returncode == 0
    assert "instances        1" in result.stdout.splitlines()


def test_status_without_a_sidecar_exits_1_with_one_line() -> None:
    result = run("status", "--socket", "/tmp/no-such-sidecar.sock")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stdout == ""
