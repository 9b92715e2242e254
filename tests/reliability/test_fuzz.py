"""Hypothesis through the real process, for each parser the sidecar owns.

The parsers' own property tests (tests/test_settings.py, test_notify.py, test_statefile.py)
call them in-process; these send the same kind of input the way it arrives in a pod:
- socket bodies: arbitrary bytes, arbitrary JSON and nearly valid objects, with arbitrary
  path parameters (sent raw, so `.` and `..` arrive as they are), to every route that
  writes, over the real Unix socket. The answer is always a code the OpenAPI document lists
  for the route, JSON, `{"error": "..."}` exactly when refused, and a refused request
  changes nothing the worker, the kubelet or an operator can see;
- datagrams: arbitrary bytes and KEY=VALUE lines through a real sidecar's sd_notify
  socket: each one counted, the malformed ones (README: over 4,096 bytes, a NUL, not UTF-8,
  a line that is not KEY=VALUE) counted as such and changing nothing;
- settings: arbitrary text for a variable, short or as long as Linux lets a process be given
  (128 KiB), with bytes that are not UTF-8, through the real command line: exit 2 with one
  line naming the variable, or a sidecar that starts and stops cleanly;
- the state file: arbitrary bytes or a saved state with one field changed, read by a real
  sidecar at start: restored, or ignored with a warning; never a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import Sidecar, free_port, short_socket_path, start_sidecar, wait_until
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidecar.settings import NAME_PATTERN, OPTIONS

from .conftest import Record, Scale
from .helpers import JSON_TYPE, OPENAPI, metric, metrics, parse_headers, visible_state

pytestmark = pytest.mark.reliability

MAX_BODY = 64 * 1024
FUZZ_SETTINGS = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}


def documented_codes() -> dict[tuple[str, str], set[int]]:
    document = json.loads(OPENAPI.read_text())
    return {
        (method.upper(), path): {int(code) for code in operation["responses"]}
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


DOCUMENTED = documented_codes()


# -- raw HTTP over the worker's socket --------------------------------------------------------


def exchange(
    socket_path: Path, request: bytes, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection; the answer's code, headers and body. A held session
    is read up to its first line, then the connection is closed (the worker hangs up)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        # A refusal may come before the body was read: the answer is there all the same.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        data = b""
        while True:
            head, found, rest = data.partition(b"\r\n\r\n")
            if found:
                headers = parse_headers(head)
                if "content-length" in headers and len(rest) >= int(headers["content-length"]):
                    return status_of(head), headers, rest[: int(headers["content-length"])]
                if headers.get("transfer-encoding") == "chunked":
                    size, _, chunk = rest.partition(b"\r\n")
                    if size and len(chunk) >= int(size, 16):
                        return status_of(head), headers, chunk[: int(size, 16)]
            chunk_in = sock.recv(65536)
            if not chunk_in:
                raise AssertionError(f"the sidecar hung up: {data[:300]!r}")
            data += chunk_in


def worker_view(sc: Sidecar) -> dict[str, Any]:
    view: dict[str, Any] = json.loads(
        exchange(sc.socket_path, http_request("GET", "/v1/worker", None, False))[2]
    )
    return view


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def http_request(method: str, target: str, body: bytes | None, chunked: bool) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: sidecar", "Connection: close"]
    if body is None:
        return ("\r\n".join(lines) + "\r\n\r\n").encode()
    lines.append("Content-Type: application/json")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        payload = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 4096]), body[i : i + 4096])
            for i in range(0, len(body), 4096)
        )
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload + b"0\r\n\r\n"
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- what is sent -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
names = st.from_regex(NAME_PATTERN, fullmatch=True)
path_names = st.one_of(
    names,
    st.sampled_from(
        [".", "..", "a" * 128, "a" * 129, "gen/erate", "", "%", "café", "generate\n", "a b"]
    ),
    st.text(max_size=40),
)
instance_ids = st.one_of(
    st.integers(min_value=0, max_value=2**64 - 1).map(str),
    st.integers(min_value=-5, max_value=2**70).map(str),
    st.sampled_from(["7", "0", "007", "1" * 21, "0x7", "", "abc"]),
    st.text(max_size=25),
)


def nearly(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with some of the route's fields, valid or not, and sometimes a stranger."""
    return st.fixed_dictionaries({}, optional={**fields, "extra": json_values})


instance_fields = {
    "namespace": st.one_of(names, json_values),
    "component": st.one_of(names, json_values),
    "endpoint": st.one_of(st.just("generate"), names, json_values),
    "instance_id": st.one_of(st.integers(min_value=0, max_value=2**64 - 1), json_values),
    "transport": st.one_of(st.just({"nats_tcp": "x"}), json_values),
    "model": st.one_of(st.booleans(), json_values),
}
pid_fields = {"pid": st.one_of(st.integers(min_value=-5, max_value=2**32), json_values)}
status_fields = {"status": st.one_of(st.sampled_from(["ready", "notready"]), json_values)}
ROUTES: dict[str, tuple[str, str, st.SearchStrategy[Any]]] = {
    "put-endpoint": ("PUT", "/v1/endpoints/{name}", nearly(status_fields)),
    "post-ready": ("POST", "/v1/endpoints/{name}/ready", json_values),
    "post-notready": ("POST", "/v1/endpoints/{name}/notready", json_values),
    "post-instance": ("POST", "/v1/instances", nearly(instance_fields)),
    "delete-instance": ("DELETE", "/v1/instances/{instance_id}", json_values),
    "heartbeat": ("POST", "/v1/heartbeat", nearly(pid_fields)),
    "session": ("POST", "/v1/session", nearly(pid_fields)),
}


def bodies(objects: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes | None]:
    return st.one_of(
        st.none(),
        st.just(b""),
        st.binary(max_size=300),
        json_values.map(lambda value: json.dumps(value).encode()),
        objects.map(lambda value: json.dumps(value).encode()),
        objects.map(lambda value: json.dumps(value).encode() + b" " * (MAX_BODY + 1)),
        st.sampled_from(
            [b"NaN", b'{"status": Infinity}', b"[" * 5000, b"\xff\xfe", b'{"pid": 1}' * 2]
        ),
    )


# -- socket bodies ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Sidecar]]:
    """A worker-mode and a frontend-mode sidecar, shared by the examples of this module."""
    started: dict[str, Sidecar] = {}
    for mode in ("worker", "frontend"):
        env = {"DYN_SIDECAR_DRAIN_SECONDS": "0", "DYN_SIDECAR_MODE": mode}
        if mode == "worker":
            env["DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS"] = '["generate"]'
        started[mode] = start_sidecar(tmp_path_factory.mktemp(f"fuzz-{mode}"), env)
    yield started
    for sc in started.values():
        sc.process.kill()
        sc.process.wait(timeout=10)


@pytest.mark.parametrize("route", list(ROUTES))
def test_fuzz_socket_bodies_get_documented_answers_and_refusals_change_nothing(
    route: str, fuzzed: dict[str, Sidecar], scale: Scale, figure: Record
) -> None:
    method, template, objects = ROUTES[route]
    codes = DOCUMENTED[(method, template)] | {404}
    sc = fuzzed["frontend" if "instance" in route else "worker"]
    seen: dict[int, int] = {}

    @settings(max_examples=scale.socket_examples, **FUZZ_SETTINGS)  # type: ignore[arg-type]
    @given(
        body=bodies(objects),
        name=path_names,
        instance_id=instance_ids,
        chunked=st.booleans(),
    )
    def run(body: bytes | None, name: str, instance_id: str, chunked: bool) -> None:
        target = template.format(name=quote(name, safe=""), instance_id=quote(instance_id, safe=""))
        before = visible_state(sc.socket_path, sc.port)
        code, headers, answer = exchange(
            sc.socket_path, http_request(method, target, body, chunked)
        )
        seen[code] = seen.get(code, 0) + 1
        assert code in codes, (code, target, body)
        if code >= 400:
            assert headers["content-type"] == JSON_TYPE
            error = json.loads(answer)
            assert set(error) == {"error"} and isinstance(error["error"], str) and error["error"]
            assert visible_state(sc.socket_path, sc.port) == before, (code, error)
        else:
            expected_type = "application/x-ndjson" if route == "session" else JSON_TYPE
            assert headers["content-type"] == expected_type
            assert isinstance(json.loads(answer), dict)
            if route == "session":
                # The session was closed on answering: its life ends a moment later.
                assert wait_until(lambda: worker_view(sc)["sessions"] == 0, 5.0)
        assert sc.process.poll() is None

    run()
    figure(f"{method} {template}: answers by code", dict(sorted(seen.items())))


def test_fuzz_refusal_at_capacity_changes_nothing(run_sidecar: Any) -> None:
    from sidecar.client import UnixHTTPConnection

    sc = run_sidecar({"DYN_SIDECAR_HEARTBEAT_TIMEOUT": "60", "DYN_SIDECAR_DRAIN_SECONDS": "0"})
    connection = UnixHTTPConnection(str(sc.socket_path), timeout=5.0)
    try:
        for n in range(4096):
            connection.request("POST", f"/v1/endpoints/e{n}/ready")
            answer = connection.getresponse()
            answer.read()
            assert answer.status == 200
        connection.request("POST", "/v1/heartbeat")
        connection.getresponse().read()
        before = worker_view(sc)
        time.sleep(1.0)
        connection.request("POST", "/v1/endpoints/one-too-many/ready")
        answer = connection.getresponse()
        assert answer.status == 422, answer.read()
        answer.read()
    finally:
        connection.close()
    after = worker_view(sc)
    # One second later, the deadline is one second nearer, unless the refusal moved it.
    moved = after["heartbeat_deadline_seconds"] - (before["heartbeat_deadline_seconds"] - 1.0)
    assert moved < 0.5, f"the refused request moved the heartbeat deadline by {moved:.1f}s"


# -- datagrams --------------------------------------------------------------------------------

KEYS = st.sampled_from(
    ["READY", "STOPPING", "WATCHDOG", "STATUS", "MAINPID", "WATCHDOG_USEC", "RELOADING", "X_1"]
)
VALUES = st.one_of(
    st.sampled_from(["1", "0", "", "123", "-1", "a=b", "2147483648"]), st.text(max_size=30)
)
LINES = st.one_of(st.tuples(KEYS, VALUES).map("=".join), st.text(max_size=20))
DATAGRAMS = st.one_of(
    st.binary(max_size=600),
    st.binary(min_size=4090, max_size=4102),
    st.lists(LINES, max_size=6).map(
        lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")
    ),
)
KEY = re.compile(r"[A-Z0-9_]+")


def assignments(data: bytes) -> dict[str, str] | None:
    """The README's rule, written again: None for a malformed datagram, else its keys."""
    if len(data) > 4096 or b"\0" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    found: dict[str, str] = {}
    for line in text.split("\n"):
        if not line:
            continue
        key, equals, value = line.partition("=")
        if not equals or not KEY.fullmatch(key):
            return None
        found[key] = value
    return found


def test_fuzz_datagrams_through_a_real_notify_socket(
    run_sidecar: Any, scale: Scale, figure: Record
) -> None:
    notify = short_socket_path().with_name("notify.sock")
    sc = run_sidecar(
        {
            "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": '["generate"]',
            "DYN_SIDECAR_DRAIN_SECONDS": "0",
            "DYN_SIDECAR_NOTIFY_SOCKET": str(notify),
        }
    )
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    counts = {"malformed": 0, "well-formed": 0}

    def counters() -> tuple[float, float]:
        samples = metrics(sc.port)
        return (
            metric(samples, "dynamo_sidecar_notify_datagrams_total"),
            metric(samples, "dynamo_sidecar_notify_malformed_datagrams_total"),
        )

    @settings(max_examples=scale.datagram_examples, **FUZZ_SETTINGS)  # type: ignore[arg-type]
    @given(data=DATAGRAMS)
    def run(data: bytes) -> None:
        received, malformed = counters()
        before = visible_state(sc.socket_path, sc.port)
        sender.sendto(data, str(notify))
        assert wait_until(lambda: counters()[0] == received + 1, 5.0)
        expected = assignments(data)
        assert counters()[1] == malformed + (expected is None)
        after = visible_state(sc.socket_path, sc.port)
        if expected is None:
            counts["malformed"] += 1
            assert after == before
            return
        counts["well-formed"] += 1
        if expected.get("STOPPING") == "1":
            assert after["status"]["status"] == "notready"
        elif expected.get("READY") == "1":
            assert after["status"]["status"] == "ready"
        if "STATUS" in expected:
            assert after["worker"]["status_text"] == (expected["STATUS"] or None)
        assert sc.process.poll() is None

    with sender:
        run()
    figure(
        "datagrams sent: malformed/well-formed", f"{counts['malformed']}/{counts['well-formed']}"
    )


# -- settings through the real command line --------------------------------------------------

# Variables whose valid values have no effect outside the sidecar's process (no file, no
# socket path, no URL to contact): any text may be tried for them.
FUZZED_VARIABLES = [
    option.variable
    for option in OPTIONS
    if option.variable
    in {
        "DYN_SYSTEM_ENABLED",
        "DYN_SYSTEM_PORT",
        "DYN_SYSTEM_STARTING_HEALTH_STATUS",
        "DYN_SYSTEM_HEALTH_PATH",
        "DYN_SYSTEM_LIVE_PATH",
        "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS",
        "DYN_SIDECAR_MODE",
        "DYN_SIDECAR_FRONTEND_SHAPE",
        "DYN_SIDECAR_HOST",
        "DYN_SIDECAR_DRAIN_SECONDS",
        "DYN_SIDECAR_WATCH_PROCESS",
        "DYN_SIDECAR_HEARTBEAT_TIMEOUT",
        "DYN_SIDECAR_LIVENESS",
        "DYN_SIDECAR_KUBE",
        "DYN_SIDECAR_LOG_FORMAT",
        "DYN_SIDECAR_LOG_LEVEL",
    }
]
PROG = "dynamo-health-sidecar"
# Linux's MAX_ARG_STRLEN is 128 KiB for one NAME=value string with its NUL.
LONGEST_VALUE = 128 * 1024 - 64
# Repeated up to LONGEST_VALUE: nesting, digits past int()'s limit, a byte that is not UTF-8.
LONG_PIECES = ["[", "(", "9", "-", "/", "a", " ", "\n", "\udcff", "é", "{", "\\"]


def environment_text() -> st.SearchStrategy[str]:
    """Text an environment variable can hold: no NUL, encodable as the OS encodes it, any
    bytes (os.environ decodes those that are not UTF-8 to lone surrogates), and up to the
    longest value a process can be given."""

    def encodable(text: str) -> bool:
        try:
            os.fsencode(text)
        except UnicodeEncodeError:
            return False
        return "\0" not in text

    return st.one_of(
        st.text(max_size=40),
        st.binary(max_size=40).map(lambda data: data.decode("utf-8", "surrogateescape")),
        st.sampled_from(
            ["1", "-1", "0", "65536", "true", "yes", "ready", "Ready", "[generate]", "0.5", "1e3"]
        ),
        st.builds(
            lambda piece, size: piece * (size // len(piece)),
            st.sampled_from(LONG_PIECES),
            st.integers(min_value=1, max_value=LONGEST_VALUE),
        ),
    ).filter(encodable)


def run_serve(tmp_path: Path, variable: str, text: str) -> tuple[int, str, bool]:
    """`serve` with one variable set to `text`: the exit code, stderr, and whether it served."""
    port = free_port()
    socket_path = short_socket_path()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DYN_", "KUBERNETES_"))}
    env.update(
        {
            "DYN_SYSTEM_PORT": str(port),
            "DYN_SIDECAR_HOST": "127.0.0.1",
            "DYN_SIDECAR_SOCKET": str(socket_path),
            "DYN_SIDECAR_DRAIN_SECONDS": "0",
            variable: text,
        }
    )
    with subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as process:
        served = wait_until(lambda: process.poll() is not None or socket_path.exists(), 15.0)
        served = process.poll() is None and served
        second = False
        if served:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                # A long DYN_SIDECAR_DRAIN_SECONDS: a second signal ends the drain. (Should it
                # land after the drain, during the final teardown, Python's default handler
                # is back and the exit is -SIGTERM: accepted.)
                second = True
                process.send_signal(signal.SIGTERM)
        try:
            _, err = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        code = process.returncode
        return (
            (0 if second and code == -signal.SIGTERM else code),
            err.decode(errors="replace"),
            served,
        )


def test_fuzz_settings_through_the_real_command_line(
    tmp_path: Path, scale: Scale, figure: Record
) -> None:
    outcomes = {"refused (exit 2)": 0, "could not start (exit 1)": 0, "served, then stopped": 0}

    @settings(max_examples=scale.cli_examples, **FUZZ_SETTINGS)  # type: ignore[arg-type]
    @given(variable=st.sampled_from(FUZZED_VARIABLES), text=environment_text())
    def run(variable: str, text: str) -> None:
        code, err, served = run_serve(tmp_path, variable, text)
        lines = err.splitlines()
        if served:
            outcomes["served, then stopped"] += 1
            assert code == 0, err
            return
        assert len(lines) == 1, err[-2000:]
        if code == 2:
            outcomes["refused (exit 2)"] += 1
            assert lines[0].startswith(f"{PROG}: {variable}="), err[-2000:]
            assert len(lines[0]) < 2000, "the value is shown shortened"
        else:
            outcomes["could not start (exit 1)"] += 1
            assert code == 1 and lines[0].startswith(f"{PROG}: "), (code, err)

    run()
    figure("settings tried through the CLI", outcomes)


@pytest.mark.parametrize("how", ["variable", "flag"])
def test_fuzz_settings_socket_path_of_a_dot_is_refused_in_one_line(
    how: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DYN_", "KUBERNETES_"))}
    env["DYN_SYSTEM_PORT"] = str(free_port())
    args = [sys.executable, "-m", "sidecar", "serve"]
    if how == "variable":
        env["DYN_SIDECAR_SOCKET"] = "/."
        name = "DYN_SIDECAR_SOCKET"
    else:
        args += ["--socket", "/."]
        name = "--socket"
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(f"{PROG}: {name}=")


@pytest.mark.parametrize("how", ["variable", "flag"])
def test_fuzz_settings_long_service_account_dir_is_refused_in_one_line(how: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DYN_", "KUBERNETES_"))}
    env["DYN_SYSTEM_PORT"] = str(free_port())
    env["DYN_SIDECAR_SOCKET"] = str(short_socket_path())
    long_dir = "/x" + "a" * 300
    # A name the system could never look up (ENAMETOOLONG) is refused as the setting's value,
    # before reporting would look for the token in it.
    args = [sys.executable, "-m", "sidecar", "serve", "--kube", "on"]
    if how == "variable":
        env["DYN_SIDECAR_KUBE_SERVICE_ACCOUNT_DIR"] = long_dir
        name = "DYN_SIDECAR_KUBE_SERVICE_ACCOUNT_DIR"
    else:
        args += ["--kube-service-account-dir", long_dir]
        name = "--kube-service-account-dir"
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=30)
    assert "Traceback" not in done.stderr, done.stderr[-1500:]
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr[-1500:]
    assert done.stderr.startswith(f"{PROG}: {name}=")
    assert done.stderr.endswith("is invalid: each name in a path is at most 255 bytes\n")


@pytest.mark.parametrize("variable", ["DYN_SIDECAR_UPSTREAM_STATUS_URL", "DYN_SIDECAR_CANARY_URL"])
def test_fuzz_settings_url_with_a_stray_bracket_is_refused_in_one_line(variable: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DYN_", "KUBERNETES_"))}
    env.update(
        {
            "DYN_SYSTEM_PORT": str(free_port()),
            "DYN_SIDECAR_SOCKET": str(short_socket_path()),
            "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate",
            variable: "http://[::1/health",
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr[-1500:]
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(f"{PROG}: {variable}=")


# -- the state file read by a real sidecar -----------------------------------------------------

SAVED = {
    "format": 1,
    "written_at": 1700000000.0,
    "life": {
        "number": 3,
        "alive": True,
        "ever_ready": True,
        "pid": None,
        "end_reason": "",
        "heartbeats": False,
        "declared": None,
        "status_text": "serving",
    },
    "endpoints": {"generate": "ready"},
    "instances": [],
}
STATE_FIELDS = ["format", "written_at", "life", "endpoints", "instances"]
LIFE_FIELDS = list(SAVED["life"])  # type: ignore[arg-type]


@st.composite
def state_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "top", "life", "saved"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    document = json.loads(json.dumps(SAVED))
    if kind == "saved":
        return json.dumps(document).encode()
    value = draw(json_values)
    if kind == "top":
        document[draw(st.sampled_from(STATE_FIELDS))] = value
    else:
        document["life"][draw(st.sampled_from(LIFE_FIELDS))] = value
    return json.dumps(document).encode()


def test_fuzz_state_file_read_by_a_real_sidecar(
    tmp_path: Path, scale: Scale, figure: Record
) -> None:
    outcomes = {"restored": 0, "ignored with a warning": 0}

    @settings(max_examples=scale.state_file_examples, **FUZZ_SETTINGS)  # type: ignore[arg-type]
    @given(data=state_files())
    @example(data=json.dumps(SAVED).encode())
    @example(data=json.dumps({**SAVED, "life": {**SAVED["life"], "alive": False}}).encode())  # type: ignore[dict-item]
    @example(data=b'{"format": 1')
    def run(data: bytes) -> None:
        state = short_socket_path().with_name("state.json")
        state.write_bytes(data)
        sc = start_sidecar(
            tmp_path,
            {
                "DYN_SIDECAR_DRAIN_SECONDS": "0",
                "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": '["generate"]',
                "DYN_SIDECAR_STATE_FILE": str(state),
            },
        )
        try:
            worker = worker_view(sc)
            if "ignoring the state file" in sc.logs():
                outcomes["ignored with a warning"] += 1
                assert (
                    worker["life"] == 1 and worker["endpoints"]["generate"]["status"] == "notready"
                )
            else:
                outcomes["restored"] += 1
                document = json.loads(data)
                assert worker["life"] == document["life"]["number"]
                assert worker["alive"] == document["life"]["alive"]
            assert sc.stop() == 0
        finally:
            if sc.process.poll() is None:
                sc.process.kill()

    run()
    figure("state files read at start", outcomes)
