"""Frontend mode's two shapes on a real sidecar (docs/protocol.md section 3.6): the documented
one by default, Dynamo 1.6.1's with `DYN_SIDECAR_FRONTEND_SHAPE=dynamo-1.6.1`, compared with
what the real 1.6.1 frontend sends when it can be installed here."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Sidecar, wait_until
from dynamo_real import Exchange, exchange
from upstreams import FRONTEND_EMPTY, FRONTEND_TWO

RunSidecar = Callable[..., Sidecar]
SHAPE_1_6_1 = {
    "DYN_SIDECAR_MODE": "frontend",
    "DYN_SIDECAR_FRONTEND_SHAPE": "dynamo-1.6.1",
    "DYN_SIDECAR_STATE_FILE": "off",
}
# Paths and methods whose answers the real frontend's are compared with.
REFUSED = [
    ("GET", "/nope"),
    ("GET", "/health/"),
    ("GET", "/HEALTH"),
    ("GET", "//health"),
    ("GET", "/nope?verbose=1"),
    ("POST", "/health"),
    ("PUT", "/live"),
]


def ask(sidecar: Sidecar, method: str, path: str) -> Exchange:
    return exchange(sidecar.port, method, path)


def headers_of(answer: Exchange) -> dict[str, str]:
    """The headers both servers send with their meaning; `date` changes, uvicorn adds none else."""
    return {k.lower(): v for k, v in answer.headers if k.lower() != "date"}


@pytest.fixture
def shaped(run_sidecar: RunSidecar) -> Sidecar:
    return run_sidecar(SHAPE_1_6_1)


def test_frontend_shape_1_6_1_health_before_instances_is_healthy_with_empty_lists(
    shaped: Sidecar,
) -> None:
    answer = ask(shaped, "GET", "/health")
    assert (answer.status, answer.body) == (200, FRONTEND_EMPTY)
    assert headers_of(answer) == {"content-type": "application/json", "content-length": "50"}


def test_frontend_shape_1_6_1_serves_posted_real_records_back_byte_for_byte(
    shaped: Sidecar,
) -> None:
    for record in json.loads(FRONTEND_TWO)["instances"]:
        assert shaped.control("POST", "/v1/instances", json=record).status_code == 201
    assert ask(shaped, "GET", "/health").body == FRONTEND_TWO


def test_frontend_shape_1_6_1_unknown_path_is_dynamos_json_404(shaped: Sidecar) -> None:
    answer = ask(shaped, "GET", "/nope?verbose=1")
    assert answer.status == 404
    assert answer.body == b'{"message":"Route not found: GET /nope","type":"Not Found","code":404}'
    assert headers_of(answer) == {"content-type": "application/json", "content-length": "70"}


def test_frontend_shape_1_6_1_404_names_the_path_as_sent(shaped: Sidecar) -> None:
    assert json.loads(ask(shaped, "GET", "//health").body)["message"] == (
        "Route not found: GET //health"
    )


def test_frontend_shape_1_6_1_wrong_method_is_an_empty_405_with_allow(shaped: Sidecar) -> None:
    answer = ask(shaped, "POST", "/health")
    assert (answer.status, answer.body) == (405, b"")
    assert headers_of(answer) == {"allow": "GET,HEAD", "content-length": "0"}


def test_frontend_shape_1_6_1_refusals_are_counted_like_any_answer(shaped: Sidecar) -> None:
    ask(shaped, "GET", "/nope")
    metrics = ask(shaped, "GET", "/metrics").body.decode()
    assert 'dynamo_sidecar_probe_requests_total{code="404",path="other"} 1.0' in metrics


def test_frontend_shape_documented_is_the_default_with_the_sidecars_own_404(
    run_sidecar: RunSidecar,
) -> None:
    sidecar = run_sidecar({"DYN_SIDECAR_MODE": "frontend", "DYN_SIDECAR_STATE_FILE": "off"})
    assert json.loads(ask(sidecar, "GET", "/health").body)["status"] == "unhealthy"
    assert "error" in json.loads(ask(sidecar, "GET", "/nope").body)


def test_frontend_shape_1_6_1_answers_as_the_real_dynamo_frontend(
    run_sidecar: RunSidecar, tmp_path: Path
) -> None:
    """The real frontend and a 1.6.1-shaped sidecar given the instances the frontend lists:
    the same bytes on `/health` and `/live`, the same refusals."""
    from dynamo_real import dynamo_python, real_frontend, real_worker, why_unavailable

    python = dynamo_python()
    if python is None:
        pytest.skip(why_unavailable())
    sidecar = run_sidecar(SHAPE_1_6_1)
    discovery = tmp_path / "kv"
    endpoints = ("generate", "clear_kv_blocks")
    with real_frontend(python, discovery) as dynamo:
        for method, path in [("GET", "/health"), ("GET", "/live"), *REFUSED]:
            real, ours = exchange(dynamo.port, method, path), ask(sidecar, method, path)
            assert (ours.status, ours.body) == (real.status, real.body), (method, path)
            assert headers_of(ours) == headers_of(real), (method, path)
        with (
            real_worker(python, discovery, "ns", "backend-x", endpoints),
            real_worker(python, discovery, "ns", "backend", endpoints),
        ):
            assert wait_until(
                lambda: (
                    len(json.loads(exchange(dynamo.port, "GET", "/health").body)["instances"]) == 4
                ),
                timeout=10.0,
            )
            real_body = exchange(dynamo.port, "GET", "/health").body
            for record in reversed(json.loads(real_body)["instances"]):
                assert sidecar.control("POST", "/v1/instances", json=record).status_code == 201
            assert ask(sidecar, "GET", "/health").body == real_body


def test_frontend_live_metric_and_view_agree_with_the_live_path(shaped: Sidecar) -> None:
    assert ask(shaped, "GET", "/live").status == 200
    metrics = ask(shaped, "GET", "/metrics").body.decode()
    assert "dynamo_sidecar_live 1.0" in metrics
    assert shaped.control("GET", "/v1/worker").json()["live"] is True
