"""The probe port of a real sidecar process, as the kubelet and Dynamo's clients see it."""

from __future__ import annotations

import contextlib
import json
import re
import resource
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Sidecar, wait_until


def raw_get(sidecar: Sidecar, path: str, method: str = "GET") -> bytes:
    """The exact bytes of one answer, on a new connection, as `kube-probe` asks."""
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{sidecar.port}\r\n"
        "User-Agent: kube-probe/1.31\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as conn:
        conn.sendall(request.encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def split(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status_line, headers, body


def without_uptime(body: bytes) -> bytes:
    return re.sub(rb'"uptime":\{"nanos":\d+,"secs":\d+\}', b'"uptime":{}', body)


def test_probe_health_before_endpoints_are_served_is_dynamos_503(sidecar: Sidecar) -> None:
    status_line, headers, body = split(raw_get(sidecar, "/health"))
    assert status_line == "HTTP/1.1 503 Service Unavailable"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert without_uptime(body) == (
        b'{"endpoints":{"generate":"notready"},"status":"notready","uptime":{}}'
    )


def test_probe_health_after_endpoints_are_served_is_dynamos_200(sidecar: Sidecar) -> None:
    for name in ("generate", "clear_kv_blocks", "load_metrics"):
        sidecar.control("POST", f"/v1/endpoints/{name}/ready")
    status_line, _, body = split(raw_get(sidecar, "/health"))
    assert status_line == "HTTP/1.1 200 OK"
    assert without_uptime(body) == (
        b'{"endpoints":{"clear_kv_blocks":"ready","generate":"ready","load_metrics":"ready"},'
        b'"status":"ready","uptime":{}}'
    )


def test_probe_ready_path_answers_like_the_health_path(sidecar: Sidecar) -> None:
    assert sidecar.probe("/ready").status_code == 503
    sidecar.control("POST", "/v1/endpoints/generate/ready")
    ready, health = sidecar.probe("/ready"), sidecar.probe("/health")
    assert ready.status_code == health.status_code == 200
    assert without_uptime(ready.content) == without_uptime(health.content)


def test_probe_live_waits_for_the_first_ready_then_holds_while_busy(sidecar: Sidecar) -> None:
    assert sidecar.probe("/live").status_code == 503
    sidecar.control("POST", "/v1/endpoints/generate/ready")
    assert sidecar.probe("/live").json()["live"] is True
    sidecar.control("POST", "/v1/endpoints/generate/notready")
    assert sidecar.probe("/health").status_code == 503
    assert sidecar.probe("/live").status_code == 200


def test_probe_head_answers_the_code_and_length_without_a_body(sidecar: Sidecar) -> None:
    status_line, headers, body = split(raw_get(sidecar, "/health", "HEAD"))
    assert status_line == "HTTP/1.1 503 Service Unavailable"
    assert int(headers["content-length"]) > 0
    assert body == b""


def test_probe_unknown_path_is_404_json_naming_every_path_served(sidecar: Sidecar) -> None:
    status_line, headers, body = split(raw_get(sidecar, "/nope"))
    assert status_line == "HTTP/1.1 404 Not Found"
    assert headers["content-type"] == "application/json"
    assert body == (
        b'{"error":"no such path; the probe port serves '
        b'/health, /live, /metrics, /ready, /sidecar/live"}'
    )


def test_probe_wrong_method_is_405_json_with_a_sorted_allow(sidecar: Sidecar) -> None:
    status_line, headers, body = split(raw_get(sidecar, "/health", "POST"))
    assert status_line == "HTTP/1.1 405 Method Not Allowed"
    assert (headers["allow"], headers["content-type"]) == ("GET, HEAD", "application/json")
    assert body == b'{"error":"POST is not allowed: the probe port is read-only (GET, HEAD)"}'


def test_probe_starting_status_ready_answers_200_before_anything_is_announced(
    run_sidecar: Callable[..., Sidecar],
) -> None:
    sidecar = run_sidecar(
        {
            "DYN_SYSTEM_STARTING_HEALTH_STATUS": "ready",
            "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "[generate]",
        }
    )
    response = sidecar.probe("/health")
    assert response.status_code == 200
    assert response.json()["endpoints"] == {"generate": "ready"}


def test_probe_custom_paths_replace_the_defaults(run_sidecar: Callable[..., Sidecar]) -> None:
    sidecar = run_sidecar(
        {"DYN_SYSTEM_HEALTH_PATH": "/custom/health", "DYN_SYSTEM_LIVE_PATH": "/custom/live"}
    )
    assert sidecar.probe("/custom/health").json()["status"] == "notready"
    assert "live" in sidecar.probe("/custom/live").json()
    assert sidecar.probe("/health").status_code == 404
    assert sidecar.probe("/live").status_code == 404
    assert sidecar.probe("/ready").status_code == 503


def test_probe_flag_wins_over_the_variable(run_sidecar: Callable[..., Sidecar]) -> None:
    sidecar = run_sidecar({"DYN_SYSTEM_HEALTH_PATH": "/from-env"}, ["--health-path", "/from-flag"])
    assert sidecar.probe("/from-flag").status_code == 503
    assert sidecar.probe("/from-env").status_code == 404


def test_probe_frontend_live_and_health_before_instances(
    run_sidecar: Callable[..., Sidecar],
) -> None:
    sidecar = run_sidecar({"DYN_SIDECAR_MODE": "frontend"})
    live = raw_get(sidecar, "/live")
    assert split(live)[0] == "HTTP/1.1 200 OK"
    assert split(live)[2] == b'{"message":"Service is live","status":"live"}'
    status_line, headers, body = split(raw_get(sidecar, "/health"))
    assert status_line == "HTTP/1.1 200 OK"
    assert headers["content-length"] == "72"
    assert body == b'{"instances":[],"message":"No endpoints available","status":"unhealthy"}'


def test_probe_frontend_health_after_instances_is_dynamos_609_bytes(
    run_sidecar: Callable[..., Sidecar],
) -> None:
    sidecar = run_sidecar({"DYN_SIDECAR_MODE": "frontend"})
    for endpoint in ("generate", "clear_kv_blocks", "load_metrics"):
        sidecar.control(
            "POST",
            "/v1/instances",
            json={
                "namespace": "dynamo",
                "component": "backend",
                "endpoint": endpoint,
                "instance_id": 7587888160958628000,
                "transport": {"nats_tcp": f"dynamo_backend.{endpoint}-694d98147d54be25"},
            },
        )
    status_line, headers, body = split(raw_get(sidecar, "/health"))
    assert status_line == "HTTP/1.1 200 OK"
    assert headers["content-length"] == "609"
    assert json.loads(body)["endpoints"] == ["dyn://dynamo.backend.generate"]
    assert json.loads(body)["status"] == "healthy"


def test_probe_sidecar_own_live_path_answers_while_the_worker_is_not_ready(
    sidecar: Sidecar,
) -> None:
    response = sidecar.probe("/sidecar/live")
    assert (response.status_code, response.content) == (200, b'{"status":"live"}')


def test_probe_metrics_show_endpoints_status_transitions_and_requests(sidecar: Sidecar) -> None:
    sidecar.probe("/health")
    sidecar.control("POST", "/v1/endpoints/generate/ready")
    sidecar.probe("/health")
    sidecar.probe("/wp-login.php")
    text = sidecar.probe("/metrics").text
    for line in (
        'dynamo_sidecar_endpoint_ready{endpoint="generate"} 1.0',
        'dynamo_sidecar_endpoint_transitions_total{endpoint="generate"} 1.0',
        "dynamo_sidecar_ready 1.0",
        "dynamo_sidecar_live 1.0",
        'dynamo_sidecar_probe_requests_total{code="503",path="/health"} 1.0',
        'dynamo_sidecar_probe_requests_total{code="200",path="/health"} 1.0',
        'dynamo_sidecar_probe_requests_total{code="404",path="other"} 1.0',
    ):
        assert line in text.splitlines()
    assert re.search(r"^dynamo_component_uptime_seconds \d+\.\d+", text, re.M)
    assert "_created" not in text


def test_probe_sigterm_drains_health_keeps_live_then_exits_zero(
    run_sidecar: Callable[..., Sidecar],
) -> None:
    sidecar = run_sidecar(
        {"DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate", "DYN_SIDECAR_DRAIN_SECONDS": "1.5"}
    )
    sidecar.control("POST", "/v1/endpoints/generate/ready")
    sidecar.process.send_signal(signal.SIGTERM)
    assert wait_until(lambda: sidecar.probe("/health").status_code == 503, timeout=1.0)
    assert sidecar.probe("/health").json()["draining"] is True
    assert sidecar.probe("/ready").status_code == 503
    assert sidecar.probe("/live").status_code == 200
    assert sidecar.process.poll() is None
    assert sidecar.process.wait(timeout=5) == 0
    assert not sidecar.socket_path.exists()
    assert "sidecar: serving -> draining" in sidecar.logs()


def test_probe_open_file_soft_limit_is_raised_to_the_hard_limit(
    run_sidecar: Callable[..., Sidecar],
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        sidecar = run_sidecar()  # inherits the low soft limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    limits = Path(f"/proc/{sidecar.process.pid}/limits").read_text()
    (line,) = [line for line in limits.splitlines() if line.startswith("Max open files")]
    soft_now, hard_now = line.split()[3:5]
    assert soft_now == hard_now, line
    assert hard == resource.RLIM_INFINITY or int(soft_now) == hard


@pytest.mark.parametrize("habit", [signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2])
def test_probe_habit_signal_is_logged_and_changes_nothing(
    run_sidecar: Callable[..., Sidecar], habit: signal.Signals
) -> None:
    sidecar = run_sidecar(
        {"DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate", "DYN_SIDECAR_DRAIN_SECONDS": "0"}
    )
    sidecar.control("POST", "/v1/endpoints/generate/ready")
    sidecar.process.send_signal(habit)
    line = f"ignoring {habit.name}: the sidecar has nothing to reload; SIGTERM drains and stops it"
    assert wait_until(lambda: line in sidecar.logs(), timeout=2.0)
    assert sidecar.process.poll() is None
    assert sidecar.probe("/health").status_code == 200
    sidecar.process.send_signal(signal.SIGTERM)
    assert sidecar.process.wait(timeout=5) == 0


def test_probe_second_signal_ends_the_drain_at_once(run_sidecar: Callable[..., Sidecar]) -> None:
    sidecar = run_sidecar({"DYN_SIDECAR_DRAIN_SECONDS": "60"})
    sidecar.process.send_signal(signal.SIGTERM)
    assert wait_until(lambda: sidecar.probe("/health").status_code == 503, timeout=1.0)
    sidecar.process.send_signal(signal.SIGINT)
    assert sidecar.process.wait(timeout=5) == 0
    assert "draining: a second signal; exiting now" in sidecar.logs()


def test_probe_signals_during_the_teardown_keep_exit_code_0(
    run_sidecar: Callable[..., Sidecar],
) -> None:
    """SIGTERM after SIGTERM until the process is gone: however late one lands, after the
    drain and during the teardown, the exit is clean."""
    sidecar = run_sidecar({"DYN_SIDECAR_DRAIN_SECONDS": "0"})
    sidecar.process.send_signal(signal.SIGTERM)
    while sidecar.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            sidecar.process.send_signal(signal.SIGTERM)
        time.sleep(0.001)
    assert sidecar.process.returncode == 0
