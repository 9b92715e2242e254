"""Client-side load for the benchmark, in the Python standard library alone.

Imported by the bench's measurement modules for what they measure in the bench's own
process, and run as a separate process for the signal driver and the fake API server:

    python bench/load.py signals --socket S --rate 2000 --seconds 10
    python bench/load.py fake-kube --port P

Every request here is raw HTTP/1.1 on a plain socket, so the client adds as little as
possible to what is measured. Probes on TCP look like the kubelet's (docs/protocol.md section 7):
a new connection per probe, `User-Agent: kube-probe/1.31`, `Accept: */*`.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import resource
import socket
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

TIMEOUT = 5.0
PROBE_HEADERS = "User-Agent: kube-probe/1.31\r\nAccept: */*\r\nConnection: close\r\n"


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max of samples (same unit out as in), nearest rank."""
    if not samples:
        return {}
    ordered = sorted(samples)
    n = len(ordered)

    def rank(p: float) -> float:
        return ordered[min(n - 1, max(0, int(p / 100 * n + 0.5) - 1))]

    return {
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "p99.9": rank(99.9),
        "max": ordered[-1],
        "count": n,
    }


def _read_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _status_of(response: bytes) -> int:
    # b"HTTP/1.1 200 OK\r\n..."
    if not response.startswith(b"HTTP/1."):
        raise OSError(f"not an HTTP response: {response[:40]!r}")
    return int(response[9:12])


def _body_of(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


def probe(port: int, path: str = "/health", timeout: float = TIMEOUT) -> tuple[int, bytes]:
    """One kubelet-like probe on a new TCP connection: (status, body)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(("127.0.0.1", port))
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{PROBE_HEADERS}\r\n".encode()
        )
        response = _read_all(sock)
    finally:
        sock.close()
    return _status_of(response), _body_of(response)


def _unix_request_bytes(method: str, target: str, body: bytes | None, close: bool) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: sidecar\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    elif method in ("POST", "PUT"):
        head += "Content-Length: 0\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + (body or b"")


def unix_request(
    path: str, method: str, target: str, body: bytes | None = None, timeout: float = TIMEOUT
) -> tuple[int, bytes]:
    """One request on a new connection to the worker's socket, as the project's client
    does: (status, body)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(_unix_request_bytes(method, target, body, close=True))
        response = _read_all(sock)
    finally:
        sock.close()
    return _status_of(response), _body_of(response)


class UnixKeepAlive:
    """One kept-alive HTTP/1.1 connection to the worker's socket, for bulk registration."""

    def __init__(self, path: str, timeout: float = TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buffer = b""

    def request(self, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One request on the kept connection; the answer read by its Content-Length."""
        self.sock.sendall(_unix_request_bytes(method, target, body, close=False))
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buffer) < length:
            self._fill()
        body_bytes, self.buffer = self.buffer[:length], self.buffer[length:]
        return _status_of(head), body_bytes

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise OSError("the sidecar closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def register_endpoints(path: str, names: Sequence[str]) -> float:
    """Mark every endpoint ready; returns the seconds it took."""
    began = time.perf_counter()
    connection = UnixKeepAlive(path)
    try:
        for name in names:
            status, body = connection.request("POST", f"/v1/endpoints/{name}/ready")
            if status != 200:
                raise RuntimeError(f"endpoint {name}: {status} {body[:200]!r}")
    finally:
        connection.close()
    return time.perf_counter() - began


def instance_body(n: int) -> bytes:
    """A frontend instance the way Dynamo registers one (its ids are 64-bit)."""
    instance_id = 7_587_888_160_958_628_000 + n
    return json.dumps(
        {
            "namespace": "dynamo",
            "component": "backend",
            "endpoint": "generate",
            "instance_id": instance_id,
            "transport": {"nats_tcp": f"dynamo_backend.generate-{instance_id:x}"},
        }
    ).encode()


def register_instances(path: str, count: int, connections: int = 2) -> float:
    """Register `count` instances over a few kept-alive connections; returns the seconds."""
    began = time.perf_counter()
    errors: list[str] = []

    def work(first: int) -> None:
        try:
            connection = UnixKeepAlive(path)
        except OSError as exc:
            errors.append(f"instance worker {first}: {exc}")
            return
        try:
            for n in range(first, count, connections):
                status, body = connection.request("POST", "/v1/instances", instance_body(n))
                if status not in (200, 201):
                    errors.append(f"instance {n}: {status} {body[:200]!r}")
                    return
        except OSError as exc:
            errors.append(f"instance worker {first}: {exc}")
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(errors[0])
    return time.perf_counter() - began


def signal_to_visible(path: str, port: int, iterations: int, endpoint: str) -> dict[str, Any]:
    """Flip a required endpoint between ready and notready, `iterations` times. Each time:
    send the signal on a new connection to the worker's socket and, without waiting for its
    answer, probe the health path on new TCP connections until a probe shows the new code.
    The figure is the time from the signal's send to the end of that probe; the signal's
    own round trip and the number of probes it took are recorded beside it."""
    visible: list[float] = []
    round_trips: list[float] = []
    probes_needed: list[int] = []
    for i in range(iterations):
        ready = i % 2 == 0
        want = 200 if ready else 503
        target = f"/v1/endpoints/{endpoint}/{'ready' if ready else 'notready'}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        try:
            began = time.perf_counter()
            sock.connect(path)
            sock.sendall(_unix_request_bytes("POST", target, None, close=True))
            tries = 0
            while True:
                tries += 1
                code, _ = probe(port)
                if code == want:
                    break
                if time.perf_counter() - began > TIMEOUT:
                    raise RuntimeError(f"the probe never showed {want} after {target}")
            seen = time.perf_counter()
            answer = _read_all(sock)
            answered = time.perf_counter()
        finally:
            sock.close()
        if _status_of(answer) != 200:
            raise RuntimeError(f"{target}: {answer[:200]!r}")
        visible.append((seen - began) * 1e6)
        round_trips.append((answered - began) * 1e6)
        probes_needed.append(tries)
    return {
        "iterations": iterations,
        "visible_us": percentiles(visible),
        "signal_and_probe_us_note": "signal sent, then probes on new connections until seen",
        "signal_round_trip_us": percentiles(round_trips),
        "probes_needed_max": max(probes_needed),
        "probes_needed_mean": sum(probes_needed) / len(probes_needed),
    }


def exec_probe(argv: Sequence[str], runs: int) -> dict[str, Any]:
    """The exec probe users write instead of a sidecar: a new process per probe. CPU per
    probe is the children's user+system time (fork's child side, exec, the dynamic loader,
    the program) over `runs`; the parent's spawning cost is recorded apart."""
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    before_self = resource.getrusage(resource.RUSAGE_SELF)
    walls: list[float] = []
    codes: dict[int, int] = {}
    for _ in range(runs):
        began = time.perf_counter()
        pid = os.posix_spawnp(argv[0], list(argv), os.environ)
        _, status = os.waitpid(pid, 0)
        walls.append((time.perf_counter() - began) * 1e6)
        code = os.waitstatus_to_exitcode(status)
        codes[code] = codes.get(code, 0) + 1
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    after_self = resource.getrusage(resource.RUSAGE_SELF)
    child_cpu = (after_children.ru_utime - before_children.ru_utime) + (
        after_children.ru_stime - before_children.ru_stime
    )
    parent_cpu = (after_self.ru_utime - before_self.ru_utime) + (
        after_self.ru_stime - before_self.ru_stime
    )
    return {
        "argv": list(argv),
        "runs": runs,
        "exit_codes": {str(k): v for k, v in codes.items()},
        "cpu_us_per_probe": child_cpu / runs * 1e6,
        "parent_cpu_us_per_probe": parent_cpu / runs * 1e6,
        "wall_us": percentiles(walls),
        "wall_us_mean": sum(walls) / len(walls),
    }


def drive_signals(
    path: str, rate: float, seconds: float, endpoint: str, threads: int
) -> dict[str, Any]:
    """Signals at a paced `rate` for `seconds`: `threads` threads, each on its own schedule
    (rate/threads a second, phases spread), each signal on a new connection as the project's
    client sends it, alternating ready and notready on `endpoint` (not a required one)."""
    per_thread = rate / threads
    interval = 1.0 / per_thread
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[int] = [0] * threads
    first_error: list[str] = []
    began = time.perf_counter() + 0.05
    deadline = began + seconds

    def work(index: int) -> None:
        next_at = began + index * interval / threads
        flip = index % 2 == 0
        mine = latencies[index]
        while next_at < deadline:
            wait = next_at - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            target = f"/v1/endpoints/{endpoint}/{'ready' if flip else 'notready'}"
            flip = not flip
            start = time.perf_counter()
            try:
                status, body = unix_request(path, "POST", target)
                if status != 200:
                    raise OSError(f"{status} {body[:200]!r}")
            except OSError as exc:
                errors[index] += 1
                if not first_error:
                    first_error.append(str(exc))
            else:
                mine.append((time.perf_counter() - start) * 1e6)
            next_at += interval

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    done = [x for mine in latencies for x in mine]
    return {
        "target_rate": rate,
        "seconds": elapsed,
        "signals": len(done),
        "errors": sum(errors),
        "first_error": first_error[0] if first_error else None,
        "achieved_rate": len(done) / elapsed,
        "latency_us": percentiles(done),
    }


NOT_FOUND = {"kind": "Status", "code": 404, "reason": "NotFound"}


class FakeKube:
    """The fake API server's state: one pod (its conditions kept as patched) and a count
    of every call, by kind."""

    def __init__(self, namespace: str, pod: str, uid: str) -> None:
        self.name = pod
        self.prefix = f"/api/v1/namespaces/{namespace}"
        self.pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "namespace": namespace, "uid": uid, "resourceVersion": "1"},
            "status": {"phase": "Running", "conditions": []},
        }
        self.calls: dict[str, int] = {}
        self.version = 1
        self.lock = threading.Lock()  # the server answers each call in its own thread

    def count(self, what: str) -> None:
        with self.lock:
            self.calls[what] = self.calls.get(what, 0) + 1
            self.version += 1

    def create_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """The event as created: named (as the API server names one) and versioned."""
        self.count("create event")
        metadata = event.setdefault("metadata", {})
        metadata.setdefault("name", f"{self.name}.{uuid.uuid4().hex[:16]}")
        metadata["resourceVersion"] = str(self.version)
        return event

    def patch_status(self, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge the patch's conditions by type, as a strategic merge patch does."""
        self.count("patch pod status")
        with self.lock:
            conditions = self.pod["status"]["conditions"]
            for new in patch.get("status", {}).get("conditions", []):
                conditions[:] = [c for c in conditions if c.get("type") != new.get("type")]
                conditions.append(new)
        return self.pod


class FakeKubeHandler(http.server.BaseHTTPRequestHandler):
    """The four calls of the sidecar's reporting, and `GET /bench/calls`; 404 otherwise."""

    protocol_version = "HTTP/1.1"  # the reporter keeps its connection
    api: FakeKube  # set by serve_fake_kube

    def log_message(self, format: str, *args: Any) -> None:
        return  # a line per call would only fill the run directory's log

    def _answer(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else {}

    def do_GET(self) -> None:
        api = self.api
        if self.path == "/bench/calls":
            self._answer(200, api.calls)
        elif self.path == f"{api.prefix}/pods/{api.name}/status":
            api.count("read pod status")
            self._answer(200, api.pod)
        else:
            self._answer(404, NOT_FOUND)

    def do_POST(self) -> None:
        if self.path != f"{self.api.prefix}/events":
            self._answer(404, NOT_FOUND)
            return
        self._answer(201, self.api.create_event(self._body()))

    def do_PATCH(self) -> None:
        api = self.api
        patch = self._body()
        if self.path.startswith(f"{api.prefix}/events/"):
            api.count("patch event")
            self._answer(200, patch)
        elif self.path == f"{api.prefix}/pods/{api.name}/status":
            self._answer(200, api.patch_status(patch))
        else:
            self._answer(404, NOT_FOUND)


def serve_fake_kube(port: int, namespace: str, pod: str, uid: str) -> None:
    """A minimal Kubernetes API server on 127.0.0.1:`port`, plain HTTP, for the calls the
    sidecar's reporting makes (core/v1 events: create and patch; the pod's status: read and
    patch). It accepts every call, keeps the pod's conditions and counts the calls
    (`GET /bench/calls`), so the sidecar's memory with reporting on can be measured without
    a cluster. Not a validating fake: the project's tests have one."""

    class Handler(FakeKubeHandler):
        api = FakeKube(namespace, pod, uid)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"fake API server on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    """`signals` (the driver's report as JSON on stdout) or `fake-kube` (serves forever)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    signals = commands.add_parser("signals", help="drive paced signals on the worker's socket")
    signals.add_argument("--socket", required=True)
    signals.add_argument("--rate", type=float, default=2000.0)
    signals.add_argument("--seconds", type=float, default=10.0)
    signals.add_argument("--endpoint", default="aux")
    signals.add_argument("--threads", type=int, default=4)
    kube = commands.add_parser("fake-kube", help="a minimal Kubernetes API server (HTTP)")
    kube.add_argument("--port", type=int, required=True)
    kube.add_argument("--namespace", default="bench")
    kube.add_argument("--pod", default="bench-worker-0")
    kube.add_argument("--uid", default="00000000-0000-4000-8000-000000000000")
    args = parser.parse_args(argv)
    if args.command == "fake-kube":
        serve_fake_kube(args.port, args.namespace, args.pod, args.uid)
    if args.command == "signals":
        result = drive_signals(args.socket, args.rate, args.seconds, args.endpoint, args.threads)
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
