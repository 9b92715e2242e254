"""The test kubelet prober (kubelet.py) against a tiny real HTTP server; no sidecar needed."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from chart_render import container
from kubelet import (
    ContainerProber,
    HttpGet,
    Kind,
    Outcome,
    PortNotFound,
    Probe,
    ProbeWorker,
    Result,
    http_probe,
    resolve_port,
)


class Server:
    """Answers each path with a status (and an optional delay or Location); records requests."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, float, str | None]] = {}
        self.requests: list[tuple[str, dict[str, str], int]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive on: reusing a connection would be possible

            def do_GET(self) -> None:
                owner.requests.append((self.path, dict(self.headers), self.client_address[1]))
                status, delay, location = owner.routes.get(self.path, (404, 0.0, None))
                time.sleep(delay)
                body = b'{"status": "ready"}'
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that timed out and left: expected here

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def answer(
        self, path: str, status: int, *, delay: float = 0.0, location: str | None = None
    ) -> None:
        self.routes[path] = (status, delay, location)

    def paths(self) -> list[str]:
        return [path for path, _headers, _port in self.requests]


@pytest.fixture
def server():
    running = Server()
    running.thread.start()
    yield running
    running.httpd.shutdown()
    running.httpd.server_close()


def get(server: Server, path: str) -> HttpGet:
    return HttpGet(host="127.0.0.1", port=server.port, path=path)


def worker_container(port: int | str, **probes: dict) -> dict:
    return {"name": "worker", "ports": [{"name": "dyn-system", "containerPort": port}], **probes}


def http_get_probe(path: str, **timing: int) -> dict:
    return {"httpGet": {"path": path, "port": "dyn-system"}, **timing}


# --- one HTTP probe --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 204, 302, 399])
def test_http_probe_succeeds_from_200_to_399(server, status):
    server.answer("/x", status)
    assert http_probe(get(server, "/x"), 1.0).result is Result.SUCCESS


@pytest.mark.parametrize("status", [199, 400, 404, 500, 503])
def test_http_probe_fails_outside_200_to_399(server, status):
    server.answer("/x", status)
    outcome = http_probe(get(server, "/x"), 1.0)
    assert outcome == Outcome(Result.FAILURE, f"HTTP probe failed with statuscode: {status}")


def test_http_probe_sends_the_kubelet_headers(server):
    server.answer("/x", 200)
    http_probe(get(server, "/x"), 1.0)
    ((_path, headers, _port),) = server.requests
    assert headers["User-Agent"] == "kube-probe/1.31"
    assert headers["Accept"] == "*/*"


def test_http_probe_opens_a_new_connection_per_probe(server):
    server.answer("/x", 200)
    for _ in range(3):
        http_probe(get(server, "/x"), 1.0)
    assert len({client_port for _p, _h, client_port in server.requests}) == 3


def test_http_probe_slower_than_the_timeout_fails(server):
    server.answer("/slow", 200, delay=0.5)
    started = time.monotonic()
    outcome = http_probe(get(server, "/slow"), 0.1)
    assert outcome.result is Result.FAILURE
    assert time.monotonic() - started < 0.4


def test_http_probe_refused_connection_fails():
    with socket.socket() as probe_port:
        probe_port.bind(("127.0.0.1", 0))
        port = probe_port.getsockname()[1]
    assert http_probe(HttpGet("127.0.0.1", port, "/x"), 1.0).result is Result.FAILURE


def test_http_probe_follows_a_redirect_to_the_same_host(server):
    server.answer("/old", 302, location="/new")
    server.answer("/new", 503)
    assert http_probe(get(server, "/old"), 1.0).result is Result.FAILURE
    assert server.paths() == ["/old", "/new"]


def test_http_probe_does_not_follow_a_redirect_to_another_host(server):
    server.answer("/old", 302, location="http://elsewhere.invalid/new")
    assert http_probe(get(server, "/old"), 1.0).result is Result.SUCCESS
    assert server.paths() == ["/old"]


def test_http_probe_gives_up_after_ten_redirects(server):
    server.answer("/loop", 302, location="/loop")
    assert http_probe(get(server, "/loop"), 2.0).result is Result.FAILURE
    assert len(server.requests) == 11


# --- ports and probe specs -------------------------------------------------------------------


def test_resolve_port_finds_a_name_in_the_probes_own_container():
    assert resolve_port("dyn-system", worker_container(9090)) == 9090


def test_resolve_port_refuses_a_name_its_container_does_not_declare():
    with pytest.raises(PortNotFound):
        resolve_port("dyn-system", {"name": "worker", "ports": []})


def test_probe_from_container_applies_kubernetes_defaults():
    spec = worker_container(
        9090, livenessProbe={"httpGet": {"path": "/live", "port": "dyn-system"}}
    )
    probe = Probe.from_container(spec, Kind.LIVENESS)
    assert (probe.period, probe.timeout, probe.success_threshold, probe.failure_threshold) == (
        10,
        1,
        1,
        3,
    )


def test_probe_from_container_divides_seconds_by_the_time_scale():
    spec = worker_container(
        9090, startupProbe=http_get_probe("/live", periodSeconds=10, timeoutSeconds=5)
    )
    probe = Probe.from_container(spec, Kind.STARTUP, time_scale=100)
    assert (probe.period, probe.timeout, probe.failure_threshold) == (0.1, 0.05, 3)


def test_probe_from_rendered_chart_targets_the_sidecar_port(default_objects):
    probe = Probe.from_container(container(default_objects, "worker"), Kind.READINESS)
    assert (probe.action.port, probe.action.path) == (9090, "/health")


# --- thresholds: "last result + run length" --------------------------------------------------


def scripted(*results: Result):
    remaining = list(results)
    return lambda _action, _timeout: Outcome(remaining.pop(0), "")


def probe_of(kind: Kind, success: int = 1, failure: int = 3, delay: float = 0) -> Probe:
    return Probe(kind, HttpGet("127.0.0.1", 1, "/"), delay, 1, 1, success, failure)


def test_probe_worker_publishes_a_failure_only_after_the_failure_threshold():
    worker = ProbeWorker(
        probe_of(Kind.READINESS), scripted(*[Result.SUCCESS] + [Result.FAILURE] * 3)
    )
    published = []
    for _ in range(4):
        worker.do_probe(100, started=True)
        published.append(worker.result)
    assert published == [Result.SUCCESS, Result.SUCCESS, Result.SUCCESS, Result.FAILURE]


def test_probe_worker_success_restarts_the_failure_run():
    results = [Result.FAILURE, Result.FAILURE, Result.SUCCESS, Result.FAILURE, Result.FAILURE]
    worker = ProbeWorker(probe_of(Kind.LIVENESS), scripted(*results))
    for _ in results:
        worker.do_probe(100, started=True)
    assert (worker.result, worker.on_hold) == (Result.SUCCESS, False)


def test_probe_worker_needs_success_threshold_successes_to_become_ready():
    worker = ProbeWorker(
        probe_of(Kind.READINESS, success=2), scripted(Result.SUCCESS, Result.SUCCESS)
    )
    worker.do_probe(100, started=True)
    assert worker.result is Result.FAILURE
    worker.do_probe(100, started=True)
    assert worker.result is Result.SUCCESS


@pytest.mark.parametrize(
    ("kind", "initial"),
    [
        (Kind.STARTUP, Result.UNKNOWN),
        (Kind.LIVENESS, Result.SUCCESS),
        (Kind.READINESS, Result.FAILURE),
    ],
)
def test_probe_worker_starts_from_the_kubelet_initial_result(kind, initial):
    assert ProbeWorker(probe_of(kind)).result is initial


def test_probe_worker_waits_for_the_initial_delay():
    worker = ProbeWorker(probe_of(Kind.READINESS, delay=5), scripted(Result.SUCCESS))
    worker.do_probe(4.9, started=True)
    assert worker.attempts == []
    worker.do_probe(5, started=True)
    assert worker.result is Result.SUCCESS


def test_probe_worker_holds_after_a_published_liveness_failure():
    worker = ProbeWorker(probe_of(Kind.LIVENESS, failure=1), scripted(Result.FAILURE))
    worker.do_probe(100, started=True)
    worker.do_probe(100, started=True)  # on hold: no second attempt
    assert (worker.on_hold, len(worker.attempts)) == (True, 1)


# --- a container's three probes --------------------------------------------------------------


def three_probes(port: int, failure: int = 3) -> dict:
    return worker_container(
        port,
        startupProbe=http_get_probe("/startup", periodSeconds=1, failureThreshold=failure),
        livenessProbe=http_get_probe("/live", periodSeconds=1, failureThreshold=failure),
        readinessProbe=http_get_probe("/ready", periodSeconds=1, failureThreshold=failure),
    )


def run(prober: ContainerProber, seconds: int) -> None:
    for now in range(seconds):
        prober.step(float(now))


def test_container_prober_runs_only_startup_until_it_succeeds(server):
    server.answer("/startup", 503)
    prober = ContainerProber(three_probes(server.port, failure=100), now=0)
    run(prober, 5)
    assert set(server.paths()) == {"/startup"}
    assert (prober.started, prober.ready, prober.restarts) == (False, False, 0)


def test_container_prober_restarts_after_startup_failure_threshold(server):
    server.answer("/startup", 503)
    restarted = []
    prober = ContainerProber(
        three_probes(server.port), now=0, on_restart=lambda: restarted.append(1)
    )
    run(prober, 3)
    assert (prober.restarts, restarted) == (1, [1])
    assert [e.what for e in prober.events] == ["restart"]
    assert prober.events[0].detail == "HTTP probe failed with statuscode: 503"


def test_container_prober_becomes_ready_after_startup_then_readiness(server):
    for path in ("/startup", "/live", "/ready"):
        server.answer(path, 200)
    prober = ContainerProber(three_probes(server.port), now=0)
    events = prober.step(0)
    assert [e.what for e in events] == ["started", "ready"]
    assert server.paths() == ["/startup", "/live", "/ready"]


def test_container_prober_stops_startup_probes_once_started(server):
    for path in ("/startup", "/live", "/ready"):
        server.answer(path, 200)
    prober = ContainerProber(three_probes(server.port), now=0)
    run(prober, 4)
    assert server.paths().count("/startup") == 1


def test_container_prober_keeps_a_busy_container_that_is_not_ready(server):
    for path in ("/startup", "/live"):
        server.answer(path, 200)
    server.answer("/ready", 503)
    prober = ContainerProber(three_probes(server.port), now=0)
    run(prober, 10)
    assert (prober.started, prober.ready, prober.restarts) == (True, False, 0)


def test_container_prober_restarts_on_liveness_failure_and_starts_over(server):
    for path in ("/startup", "/live", "/ready"):
        server.answer(path, 200)
    prober = ContainerProber(three_probes(server.port), now=0)
    prober.step(0)
    server.answer("/live", 503)
    server.answer("/startup", 503)
    run(prober, 4)
    assert [e.what for e in prober.events] == ["started", "ready", "restart", "not ready"]
    assert (prober.started, prober.ready, prober.restarts) == (False, False, 1)


def test_container_prober_follows_the_rendered_chart_probes(server, render_objects):
    worker = container(render_objects({"system": {"port": server.port}}), "worker")
    server.answer("/live", 503)
    server.answer("/health", 503)
    prober = ContainerProber(worker, now=0)
    for now in range(0, 600, 10):  # ten minutes of loading: not started, never restarted
        prober.step(float(now))
    assert (prober.started, prober.restarts) == (False, 0)
    server.answer("/live", 200)
    server.answer("/health", 200)
    prober.step(600.0)
    assert (prober.started, prober.ready) == (True, True)
    server.answer("/live", 503)
    for now in range(605, 620, 5):  # three liveness failures, 5 s apart
        prober.step(float(now))
    assert prober.restarts == 1


def test_container_prober_run_steps_on_the_real_clock(server):
    for path in ("/startup", "/live", "/ready"):
        server.answer(path, 200)
    prober = ContainerProber(three_probes(server.port), now=time.monotonic(), time_scale=100)
    assert prober.run(lambda p: p.ready, timeout=2.0)
