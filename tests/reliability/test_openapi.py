"""The OpenAPI document of the worker's socket (`sidecar/openapi.json`), checked with
schemathesis against a running sidecar over its real Unix socket.

Every generated request (positive and negative, schemathesis' examples, coverage and
fuzzing phases) must get a documented answer: a documented status code and content type,
and a body matching the documented schema; methods the document does not list must be
405 with `Allow`. The held `POST /v1/session` is read up to its first line (the documented
body), then closed, as a worker's client does. Names `.` and `..` are left out: requests
(urllib3) removes them from the URL as dot segments before sending, so the sidecar would
see another path; they are sent over raw sockets in test_fuzz.py instead.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Sidecar, free_port, start_sidecar
from starlette.routing import Route

from .conftest import FIGURES, import_time_scale
from .helpers import OPENAPI, control

pytest.importorskip("schemathesis", reason="schemathesis is not installed")

import requests
import schemathesis
from requests.adapters import HTTPAdapter
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

pytestmark = pytest.mark.reliability

BASE_URL = "http://sidecar"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    unsupported_method,
]
DOT_SEGMENTS = (".", "..")
# What answers differently in the other modes than in worker mode.
OTHERWISE = {"frontend": ("/v1/status", "/v1/instances"), "active-checks": ("/v1/worker",)}
MODES: dict[Path, str] = {}


# -- requests over the Unix socket ------------------------------------------------------------


class UnixConnection(HTTPConnection):
    def __init__(self, *args: Any, socket_path: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        timeout = self.timeout if isinstance(self.timeout, (int, float)) else None
        sock.settimeout(timeout)
        sock.connect(self.socket_path)
        return sock


class UnixPool(HTTPConnectionPool):
    ConnectionCls = UnixConnection


class UnixAdapter(HTTPAdapter):
    """Sends every request of the session to the sidecar's Unix socket."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__()
        self.pool = UnixPool("sidecar", socket_path=str(socket_path), maxsize=4)

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> HTTPConnectionPool:
        return self.pool

    def get_connection(self, *args: Any, **kwargs: Any) -> HTTPConnectionPool:
        return self.pool

    def close(self) -> None:
        self.pool.close()
        super().close()


def unix_session(socket_path: Path) -> requests.Session:
    session = requests.Session()
    session.mount(BASE_URL, UnixAdapter(socket_path))
    return session


# The held session's answer is NDJSON: its first line is what the document describes.
@schemathesis.deserializer("application/x-ndjson")
def first_ndjson_line(ctx: Any, response: Any) -> Any:
    return json.loads(response.content.split(b"\n", 1)[0])


def send_session(case: Any, session: requests.Session) -> requests.Response:
    """`POST /v1/session`: read the answer up to its first line, then hang up."""
    kwargs = case.as_transport_kwargs(base_url=BASE_URL)
    kwargs.pop("timeout", None)
    response = session.request(**kwargs, stream=True, timeout=5)
    if (
        response.status_code == 200
        and response.headers.get("content-type") == "application/x-ndjson"
    ):
        response._content = response.raw.readline(4096)
        response.close()
    else:
        response.content  # noqa: B018 - read the whole (finite) answer
    return response


# -- the sidecar and the schema -----------------------------------------------------------------


@pytest.fixture(scope="module", params=["worker", "frontend", "active-checks"])
def api_sidecar(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sidecar]:
    """worker and frontend mode; and a worker with mirror mode and canaries on, both aimed
    at a closed loopback port (they fail, and `GET /v1/worker` shows them)."""
    mode = request.param
    env = {"DYN_SIDECAR_DRAIN_SECONDS": "0", "DYN_SIDECAR_MODE": mode}
    if mode != "frontend":
        env["DYN_SIDECAR_MODE"] = "worker"
        env["DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS"] = '["generate"]'
    if mode == "active-checks":
        closed = free_port()
        env["DYN_SIDECAR_UPSTREAM_STATUS_URL"] = f"http://127.0.0.1:{closed}/health"
        env["DYN_SIDECAR_UPSTREAM_INTERVAL"] = "0.2"
        env["DYN_SIDECAR_CANARY_URL"] = f"http://127.0.0.1:{closed}/v1/models"
        env["DYN_SIDECAR_CANARY_WAIT"] = "0.2"
    sc = start_sidecar(tmp_path_factory.mktemp(f"openapi-{mode}"), env)
    MODES[sc.socket_path] = mode
    yield sc
    sc.process.kill()
    sc.process.wait(timeout=10)


SENT: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def count_requests() -> Iterator[None]:
    """How many requests schemathesis sent, by answer code, for the results table."""
    yield
    if SENT:
        FIGURES.append(
            {
                "test": "test_openapi_every_generated_request_gets_a_documented_answer",
                "what": "requests sent, by answer code",
                "value": dict(sorted(SENT.items())),
                "bound": "every one documented",
                "version": "long" if import_time_scale().long else "short",
            }
        )


@pytest.fixture(scope="module")
def uds_session(api_sidecar: Sidecar) -> Iterator[requests.Session]:
    session = unix_session(api_sidecar.socket_path)
    yield session
    session.close()


# Loaded when the module is imported (schemathesis' lazy `from_fixture` does not run on
# pytest 9), so the number of examples is taken from `--run-long` then.
schema = schemathesis.openapi.from_path(str(OPENAPI))
schema.config.update(base_url=BASE_URL, request_timeout=5)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=import_time_scale().openapi_examples,
    database="none",
)


@schema.parametrize()
def test_openapi_every_generated_request_gets_a_documented_answer(
    case: Any, uds_session: requests.Session, api_sidecar: Sidecar
) -> None:
    if case.path_parameters and case.path_parameters.get("name") in DOT_SEGMENTS:
        return
    mode = MODES[api_sidecar.socket_path]
    if mode != "worker" and not case.operation.path.startswith(OTHERWISE[mode]):
        return  # answered alike in every mode: checked once, in worker mode
    if case.operation.path == "/v1/session" and case.method.upper() == "POST":
        response = send_session(case, uds_session)
    else:
        response = case.call(session=uds_session)
    SENT[str(response.status_code)] += 1
    case.validate_response(response, checks=CHECKS)
    assert api_sidecar.process.poll() is None


# -- the document itself ------------------------------------------------------------------------


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(OPENAPI.read_text())
    return loaded


def documented_routes() -> set[tuple[str, str]]:
    routes = set()
    for path, item in document()["paths"].items():
        for method in item:
            if method in ("get", "put", "post", "delete", "patch", "head", "options"):
                routes.add((method.upper(), path))
    return routes


def served_routes() -> set[tuple[str, str]]:
    import asyncio
    import time

    from sidecar.core.health import HealthState
    from sidecar.core.records import Status
    from sidecar.core.verdict import Verdicts
    from sidecar.inputs.worker_api import WorkerApi, build_control_app
    from sidecar.settings import Settings

    state = HealthState(required=(), starting=Status.NOTREADY, started_at=time.monotonic())
    app = build_control_app(WorkerApi(Settings(), state, Verdicts(state), asyncio.Event()))
    routes = set()
    for route in app.routes:
        assert isinstance(route, Route)
        for method in route.methods or ():
            routes.add((method, route.path))
    return routes


def test_openapi_documents_every_route_and_only_those() -> None:
    assert documented_routes() == served_routes()


def test_openapi_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1")
    loaded = schemathesis.openapi.from_path(str(OPENAPI))
    operations = [result.ok() for result in loaded.get_all_operations()]
    assert len(operations) == len(documented_routes())
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for code, answer in operation["responses"].items():
                if code.startswith(("4", "5")):
                    target = answer.get("$ref", "").rsplit("/", 1)[-1]
                    content = (
                        doc["components"]["responses"][target]["content"]
                        if target
                        else answer["content"]
                    )
                    assert content == {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    }, (method, path, code)


def test_openapi_document_is_served_as_it_is_kept(tmp_path: Path) -> None:
    sc = start_sidecar(tmp_path, {"DYN_SIDECAR_DRAIN_SECONDS": "0"})
    try:
        response = control(sc.socket_path, "GET", "/v1/openapi.json")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == document()
    finally:
        sc.process.kill()
        sc.process.wait(timeout=10)
