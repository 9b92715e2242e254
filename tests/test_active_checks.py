"""Mirror mode and canaries in a real sidecar, against real stand-in upstreams."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from conftest import Sidecar, wait_until
from upstreams import ModelServer, StatusServer, model_server, status_server


@pytest.fixture
def dynamo_worker() -> Iterator[StatusServer]:
    with status_server("notready") as server:
        yield server


@pytest.fixture
def model() -> Iterator[ModelServer]:
    with model_server("ok") as server:
        yield server


def test_mirror_copies_a_dynamo_workers_status_server(
    run_sidecar: Callable[..., Sidecar], dynamo_worker: StatusServer
) -> None:
    sidecar = run_sidecar(
        {
            "DYN_SIDECAR_UPSTREAM_STATUS_URL": dynamo_worker.url + "/health",
            "DYN_SIDECAR_UPSTREAM_INTERVAL": "0.1",
            "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate",
        }
    )
    assert wait_until(lambda: sidecar.control("GET", "/v1/worker").json()["upstream"]["polls"] > 0)
    assert sidecar.probe("/health").json()["endpoints"] == {"generate": "notready"}
    dynamo_worker.set("ready")
    assert wait_until(lambda: sidecar.probe("/health").status_code == 200, timeout=2.0)
    assert sidecar.probe("/health").json()["endpoints"] == {
        "clear_kv_blocks": "ready",
        "generate": "ready",
        "load_metrics": "ready",
    }
    assert sidecar.probe("/live").status_code == 200
    assert "dynamo_sidecar_upstream_polls_total" in sidecar.probe("/metrics").text


def test_mirror_of_an_unreachable_status_server_ends_the_life_after_its_misses(
    run_sidecar: Callable[..., Sidecar], dynamo_worker: StatusServer
) -> None:
    dynamo_worker.set("ready")
    sidecar = run_sidecar(
        {
            "DYN_SIDECAR_UPSTREAM_STATUS_URL": dynamo_worker.url + "/health",
            "DYN_SIDECAR_UPSTREAM_INTERVAL": "0.1",
            "DYN_SIDECAR_UPSTREAM_MISSES": "3",
        }
    )
    assert wait_until(lambda: sidecar.probe("/live").status_code == 200, timeout=2.0)
    dynamo_worker.set("down")
    began = time.monotonic()
    assert wait_until(lambda: sidecar.probe("/live").status_code == 503, timeout=3.0)
    # Three polls 0.1 s apart, each refused at once, and a margin for a noisy machine.
    assert time.monotonic() - began < 0.3 + 1.0
    assert "did not answer 3 times" in sidecar.probe("/live").json()["reason"]
    dynamo_worker.set("ready")
    assert wait_until(lambda: sidecar.probe("/live").status_code == 200, timeout=3.0)
    assert sidecar.control("GET", "/v1/worker").json()["life"] == 2


def test_canary_holds_a_frozen_worker_notready_and_restores_it(
    run_sidecar: Callable[..., Sidecar], model: ModelServer
) -> None:
    sidecar = run_sidecar(
        {
            "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate",
            "DYN_SIDECAR_CANARY_URL": model.url + "/v1/completions",
            "DYN_SIDECAR_CANARY_METHOD": "POST",
            "DYN_SIDECAR_CANARY_BODY": '{"model": "m", "prompt": "hi", "max_tokens": 1}',
            "DYN_SIDECAR_CANARY_TIMEOUT": "0.3",
            "DYN_SIDECAR_CANARY_WAIT": "0.2",
            "DYN_SIDECAR_CANARY_FAILURES": "2",
        }
    )
    sidecar.control("POST", "/v1/endpoints/generate/ready")
    assert wait_until(lambda: model.count >= 1, timeout=2.0)
    assert sidecar.probe("/health").status_code == 200
    model.set("freeze")
    assert wait_until(lambda: sidecar.probe("/health").status_code == 503, timeout=3.0)
    canary = sidecar.control("GET", "/v1/worker").json()["canary"]
    assert canary["holding"] is True
    assert canary["last_reason"] == "no complete answer within 0.3s"
    assert sidecar.probe("/live").status_code == 200
    assert "generate: ready -> notready" in sidecar.logs()
    model.set("ok")
    assert wait_until(lambda: sidecar.probe("/health").status_code == 200, timeout=3.0)
    assert "canary passed" in sidecar.logs()


def test_canary_never_runs_before_the_worker_is_ready(
    run_sidecar: Callable[..., Sidecar], model: ModelServer
) -> None:
    sidecar = run_sidecar(
        {
            "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate",
            "DYN_SIDECAR_CANARY_URL": model.url + "/health",
            "DYN_SIDECAR_CANARY_WAIT": "0.1",
        }
    )
    time.sleep(0.6)
    assert model.count == 0
    assert sidecar.probe("/health").status_code == 503
