"""Unit tests of `sidecar.settings.load`: defaults, good values, exact error lines, flags.

docs/protocol.md sections 1.2 and 2: every setting is a variable and a flag, the flag wins,
an empty variable counts as unset, and a bad value raises `SettingsError` whose `str()` is the
one line the user sees, naming the variable or flag, the value (shortened) and what is allowed.
Dynamo's own variables are read as Dynamo 1.6.1 reads them, but where the protocol document
says why not.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.core.health import Liveness, Status
from sidecar.core.verdict import FrontendShape
from sidecar.kube.cluster import discover
from sidecar.settings import (
    DEFAULT_SOCKET,
    NAME_PATTERN,
    OPTIONS,
    SHOWN_MAX,
    STATE_FILE_NAME_MAX,
    SUN_PATH_MAX,
    Kube,
    LogFormat,
    LogLevel,
    Mode,
    Settings,
    SettingsError,
    load,
    shown,
)

ENDPOINTS = "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS"
VARIABLES = [option.variable for option in OPTIONS]
FLAGS = {option.variable: option.flag for option in OPTIONS if option.flag}
FIELDS = {option.variable: option.field for option in OPTIONS}

# The "what is allowed" halves of the error lines, written out once.
OFF = "turns the probe server off, and a sidecar that serves no probes is a misconfiguration: "
PORT_RULE = "is invalid: expected a port from 1 to 65535"
ANY_PORT = "asks for any free port, which no probe can find: use a port from 1 to 65535"
LOWERCASE_STATUS = "is invalid: expected ready or notready, in lowercase as Dynamo reads it"
LOWERCASE_TRUE = "is invalid: expected true, in lowercase as Dynamo reads it"
HOST_RULE = "is invalid: expected an IP address, such as 0.0.0.0, :: or 127.0.0.1"
PATH_RULE = (
    "is invalid: expected a URL path that starts with / and has at most 1024 characters of "
    "letters, digits and - . _ ~ ! $ & ' ( ) * + , ; = : @ /, and no segment that starts with "
    ": or * (Dynamo refuses those)"
)
LIVE_CLASH = "is invalid: the live path must differ from the health path and from /ready"
NAMES_RULE = (
    "is invalid: endpoint names are 1 to 128 characters of A-Z a-z 0-9 _ . -, given as "
    '["generate"], [generate] or generate,clear_kv_blocks'
)
SOCKET_LENGTH = f"is invalid: a Unix socket path is at most {SUN_PATH_MAX} bytes"
SOCKET_FILE = "is invalid: expected an absolute file path for the Unix socket"
URL_RULE = "is invalid: expected an http:// or https:// URL with a host"
COUNT_RULE = "is invalid: expected a whole number from 1 to 1000"
EXPECT_RULE = "is invalid: expected status codes from 100 to 599, such as 200-299 or 200,204"
TIMEOUT_RULE = "is invalid: expected a number of seconds above 0 and up to 86400, such as 30 or 2.5"
SECONDS_RULE = "is invalid: expected a number of seconds from 0 to 86400, such as 5 or 2.5"


def error_of(environ: dict[str, str], flags: dict[str, str | None] | None = None) -> str:
    with pytest.raises(SettingsError) as caught:
        load(environ, flags)
    return str(caught.value)


def socket_path_of(length: int) -> str:
    """An absolute path of exactly `length` bytes."""
    return "/tmp/" + "s" * (length - len("/tmp/"))


# --- the set of variables --------------------------------------------------------------


def test_options_cover_every_contract_variable() -> None:
    contract = {
        "DYN_SYSTEM_ENABLED",
        "DYN_SYSTEM_PORT",
        "DYN_SYSTEM_STARTING_HEALTH_STATUS",
        "DYN_SYSTEM_HEALTH_PATH",
        "DYN_SYSTEM_LIVE_PATH",
        ENDPOINTS,
        "DYN_SIDECAR_MODE",
        "DYN_SIDECAR_SOCKET",
        "DYN_SIDECAR_NOTIFY_SOCKET",
        "DYN_SIDECAR_STATE_FILE",
        "DYN_SIDECAR_WATCH_PROCESS",
        "DYN_SIDECAR_HEARTBEAT_TIMEOUT",
        "DYN_SIDECAR_DRAIN_SECONDS",
        "DYN_SIDECAR_KUBE",
        "DYN_SIDECAR_LIVENESS",
        "DYN_SIDECAR_LOG_FORMAT",
    }
    assert contract <= set(VARIABLES)


def test_options_variables_and_flags_are_unique() -> None:
    assert len(set(VARIABLES)) == len(VARIABLES)
    assert len(set(FLAGS.values())) == len(FLAGS)


def test_options_every_setting_but_enabled_has_a_flag() -> None:
    assert [o.variable for o in OPTIONS if not o.flag] == ["DYN_SYSTEM_ENABLED"]


def test_settings_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        load({}).port = 1  # type: ignore[misc]


# --- defaults and empty values ---------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("port", 9090),
        ("host", ""),
        ("starting_status", Status.NOTREADY),
        ("health_path", "/health"),
        ("live_path", "/live"),
        ("required_endpoints", ()),
        ("mode", Mode.WORKER),
        ("socket_path", Path(DEFAULT_SOCKET)),
        ("drain_seconds", 5.0),
        ("liveness", Liveness.STARTED),
        ("kube", Kube.AUTO),
        ("log_format", LogFormat.TEXT),
        ("log_level", LogLevel.INFO),
    ],
)
def test_load_default_when_unset(field: str, expected: object) -> None:
    assert getattr(load({}), field) == expected


def test_load_defaults_equal_settings_defaults() -> None:
    assert load({}) == Settings()
    assert load({}, {}) == Settings()
    assert load({}, None) == Settings()


def test_socket_default_is_contract_path() -> None:
    assert DEFAULT_SOCKET == "/var/run/dynamo/health.sock"


@pytest.mark.parametrize("variable", VARIABLES)
def test_load_empty_variable_counts_as_unset(variable: str) -> None:
    assert load({variable: ""}) == Settings()


def test_load_ignores_unrelated_variables() -> None:
    assert load({"DYN_OTHER": "x", "PORT": "1", "dyn_system_port": "x"}) == Settings()


@pytest.mark.parametrize("variable", list(FLAGS))
def test_load_none_flag_falls_back_to_variable(variable: str) -> None:
    field = FIELDS[variable]
    environ = {variable: GOOD_VALUES[variable][0][0], **CONTEXT.get(variable, {})}
    assert load(environ, {field: None}) == load(environ)


# --- good values, per variable ---------------------------------------------------------

# variable -> the other variables it needs to be valid at all
CONTEXT: dict[str, dict[str, str]] = {
    "DYN_SIDECAR_CANARY_URL": {ENDPOINTS: "generate"},
    "DYN_SIDECAR_CANARY_BODY": {"DYN_SIDECAR_CANARY_METHOD": "POST"},
    "DYN_SIDECAR_FRONTEND_SHAPE": {"DYN_SIDECAR_MODE": "frontend"},
}

# variable -> [(text, expected value of its field)]
GOOD_VALUES: dict[str, list[tuple[str, object]]] = {
    "DYN_SYSTEM_PORT": [
        ("1", 1),
        ("80", 80),
        ("8080", 8080),
        ("65535", 65535),
        (" 9091 ", 9091),
        ("9092\n", 9092),
        ("+8080", 8080),
        ("08080", 8080),
        ("32768", 32768),
    ],
    "DYN_SIDECAR_HOST": [
        ("0.0.0.0", "0.0.0.0"),
        ("::", "::"),
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        (" 10.0.0.1 ", "10.0.0.1"),
    ],
    "DYN_SYSTEM_STARTING_HEALTH_STATUS": [
        ("ready", Status.READY),
        ("notready", Status.NOTREADY),
        (" ready ", Status.READY),
        ("ready\n", Status.READY),
        ('"ready"', Status.READY),
        (' "notready" ', Status.NOTREADY),
        ('"re\\u0061dy"', Status.READY),
    ],
    "DYN_SYSTEM_HEALTH_PATH": [
        ("/healthz", "/healthz"),
        ("/", "/"),
        ("/v1/health", "/v1/health"),
        ("/a-b_c.d~e", "/a-b_c.d~e"),
        ("/Health", "/Health"),
        ("/" + "h" * 1023, "/" + "h" * 1023),
        (" /healthz", "/healthz"),
        ("/healthz\n", "/healthz"),
        ('"/healthz"', "/healthz"),
        ("/a:b/c*", "/a:b/c*"),
    ],
    "DYN_SYSTEM_LIVE_PATH": [
        ("/livez", "/livez"),
        ("/", "/"),
        ("/v1/live", "/v1/live"),
        ("/sidecar/alive", "/sidecar/alive"),
    ],
    ENDPOINTS: [
        ('["generate"]', ("generate",)),
        ("[generate]", ("generate",)),
        ("generate", ("generate",)),
        ("generate,load_metrics", ("generate", "load_metrics")),
        ("generate,clear_kv_blocks", ("generate", "clear_kv_blocks")),
        ("[generate, clear_kv_blocks]", ("generate", "clear_kv_blocks")),
        ("[generate,clear_kv_blocks]", ("generate", "clear_kv_blocks")),
        ('["generate", "clear_kv_blocks"]', ("generate", "clear_kv_blocks")),
        ("['generate', 'load_metrics']", ("generate", "load_metrics")),
        (" generate , load_metrics ", ("generate", "load_metrics")),
        ('  [ "generate" , "load_metrics" ]  ', ("generate", "load_metrics")),
        ("[ generate , load_metrics ]", ("generate", "load_metrics")),
        ("[]", ()),
        ("[ ]", ()),
        ("generate,generate", ("generate",)),
        ("b,a,b,c,a", ("b", "a", "c")),
        ('["b", "a", "b"]', ("b", "a")),
        ("[b, a, b]", ("b", "a")),
        ("Gen.erate-1_x", ("Gen.erate-1_x",)),
        ("e" * 128, ("e" * 128,)),
    ],
    "DYN_SIDECAR_MODE": [
        ("worker", Mode.WORKER),
        ("frontend", Mode.FRONTEND),
        ("FRONTEND", Mode.FRONTEND),
        (" Worker ", Mode.WORKER),
    ],
    "DYN_SIDECAR_FRONTEND_SHAPE": [
        ("documented", FrontendShape.DOCUMENTED),
        ("dynamo-1.6.1", FrontendShape.DYNAMO_1_6_1),
        (" Dynamo-1.6.1 ", FrontendShape.DYNAMO_1_6_1),
    ],
    "DYN_SIDECAR_SOCKET": [
        ("/tmp/health.sock", Path("/tmp/health.sock")),
        ("/run/dynamo/h", Path("/run/dynamo/h")),
        (socket_path_of(SUN_PATH_MAX), Path(socket_path_of(SUN_PATH_MAX))),
        ("/tmp/" + "é" * 51, Path("/tmp/" + "é" * 51)),  # 107 bytes
    ],
    "DYN_SIDECAR_DRAIN_SECONDS": [
        ("0", 0.0),
        ("5", 5.0),
        ("2.5", 2.5),
        ("0.25", 0.25),
        (".5", 0.5),
        (" 10 ", 10.0),
        ("86400", 86400.0),
        ("3.", 3.0),
    ],
    "DYN_SIDECAR_NOTIFY_SOCKET": [
        ("/run/dynamo/notify.sock", Path("/run/dynamo/notify.sock")),
    ],
    "DYN_SIDECAR_UPSTREAM_STATUS_URL": [
        ("http://127.0.0.1:8081/health", "http://127.0.0.1:8081/health"),
        (" https://worker.local/health ", "https://worker.local/health"),
    ],
    "DYN_SIDECAR_UPSTREAM_INTERVAL": [("2", 2.0), ("0.25", 0.25)],
    "DYN_SIDECAR_UPSTREAM_MISSES": [("1", 1), ("3", 3), ("1000", 1000)],
    "DYN_SIDECAR_CANARY_URL": [("http://127.0.0.1:8000/health", "http://127.0.0.1:8000/health")],
    "DYN_SIDECAR_CANARY_METHOD": [("GET", "GET"), ("post", "POST"), (" Put ", "PUT")],
    "DYN_SIDECAR_CANARY_BODY": [
        ('{"model": "m", "max_tokens": 1}', '{"model": "m", "max_tokens": 1}'),
        ("[]", "[]"),
    ],
    "DYN_SIDECAR_CANARY_EXPECT": [
        ("200-299", ((200, 299),)),
        ("200,204", ((200, 200), (204, 204))),
        ("200 - 299, 404", ((200, 299), (404, 404))),
    ],
    "DYN_SIDECAR_CANARY_TIMEOUT": [("3", 3.0), ("0.5", 0.5)],
    "DYN_SIDECAR_CANARY_WAIT": [("10", 10.0), ("0", 0.0), ("2.5", 2.5)],
    "DYN_SIDECAR_CANARY_ENDPOINT": [("generate", "generate")],
    "DYN_SIDECAR_CANARY_FAILURES": [("1", 1), ("3", 3)],
    "DYN_SIDECAR_WATCH_PROCESS": [
        ("^python3? -m dynamo\\.vllm", re.compile("^python3? -m dynamo\\.vllm")),
        ("vllm serve", re.compile("vllm serve")),
    ],
    "DYN_SIDECAR_STATE_FILE": [
        ("/tmp/state.json", Path("/tmp/state.json")),
        ("/tmp/" + "s" * STATE_FILE_NAME_MAX, Path("/tmp/" + "s" * STATE_FILE_NAME_MAX)),
        ("off", None),
        ("OFF", None),
        (" off ", None),
    ],
    "DYN_SIDECAR_HEARTBEAT_TIMEOUT": [
        ("30", 30.0),
        ("0.5", 0.5),
        (" 2.5 ", 2.5),
        ("86400", 86400.0),
    ],
    "DYN_SIDECAR_LIVENESS": [
        ("started", Liveness.STARTED),
        ("health", Liveness.HEALTH),
        ("HEALTH", Liveness.HEALTH),
        (" Started ", Liveness.STARTED),
    ],
    "DYN_SIDECAR_KUBE_API_URL": [
        ("https://10.96.0.1:443", "https://10.96.0.1:443"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
    ],
    "DYN_SIDECAR_KUBE_SERVICE_ACCOUNT_DIR": [("/var/run/sa", Path("/var/run/sa"))],
    "DYN_SIDECAR_KUBE_CONDITION": [
        ("example.com/worker-ready", "example.com/worker-ready"),
        ("WorkerReady", "WorkerReady"),
    ],
    "DYN_SIDECAR_KUBE": [
        ("off", Kube.OFF),
        ("auto", Kube.AUTO),
        ("OFF", Kube.OFF),
        (" Auto ", Kube.AUTO),
    ],
    "DYN_SIDECAR_LOG_FORMAT": [
        ("text", LogFormat.TEXT),
        ("json", LogFormat.JSON),
        ("JSON", LogFormat.JSON),
        (" Text ", LogFormat.TEXT),
    ],
    "DYN_SIDECAR_LOG_LEVEL": [
        ("debug", LogLevel.DEBUG),
        ("info", LogLevel.INFO),
        ("warning", LogLevel.WARNING),
        ("error", LogLevel.ERROR),
        ("WARNING", LogLevel.WARNING),
        (" Debug ", LogLevel.DEBUG),
    ],
}


def test_good_values_cover_every_flagged_option() -> None:
    assert set(GOOD_VALUES) == set(FLAGS)


@pytest.mark.parametrize(
    ("variable", "text", "expected"),
    [
        (variable, text, expected)
        for variable, rows in GOOD_VALUES.items()
        for text, expected in rows
    ],
)
def test_load_accepts_good_variable(variable: str, text: str, expected: object) -> None:
    field = FIELDS[variable]
    settings = load({variable: text, **CONTEXT.get(variable, {})})
    assert getattr(settings, field) == expected
    # Every other setting keeps its default, but the state file, which follows the socket,
    # and those the variable needs beside it.
    others = {field, "state_file", "canary_endpoint"} | {
        FIELDS[v] for v in CONTEXT.get(variable, {})
    }
    defaults = {name: getattr(Settings(), name) for name in others}
    assert dataclasses.replace(settings, **defaults) == Settings()


def test_state_file_defaults_beside_the_socket() -> None:
    settings = load({"DYN_SIDECAR_SOCKET": "/run/dyn/worker.sock"})
    assert settings.state_file == Path("/run/dyn/worker.state.json")


def test_state_file_default_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "worker.state.json").mkdir()
    environ = {"DYN_SIDECAR_SOCKET": str(tmp_path / "worker.sock")}
    assert error_of(environ) == (
        f"the state file {shown(str(tmp_path / 'worker.state.json'))} (by default beside the "
        "socket) is unusable: it is a directory; expected a file path; set "
        "DYN_SIDECAR_STATE_FILE to a file path, or off"
    )


def test_state_file_setting_wins_over_the_socket_default() -> None:
    environ = {"DYN_SIDECAR_SOCKET": "/run/a.sock", "DYN_SIDECAR_STATE_FILE": "/tmp/s.json"}
    assert load(environ).state_file == Path("/tmp/s.json")


def test_state_file_equal_to_the_socket_is_refused() -> None:
    environ = {"DYN_SIDECAR_SOCKET": "/run/a.sock", "DYN_SIDECAR_STATE_FILE": "/run/a.sock"}
    assert error_of(environ) == (
        "DYN_SIDECAR_STATE_FILE='/run/a.sock' is invalid: the state file must not be the "
        "worker's socket"
    )


@pytest.mark.parametrize("text", ["true", " true ", "true\n"])
def test_enabled_accepts_true(text: str) -> None:
    assert load({"DYN_SYSTEM_ENABLED": text}) == Settings()


def test_socket_path_counts_bytes_not_characters() -> None:
    path = "/tmp/" + "é" * 51 + "x"  # 52 characters after /tmp/, 108 bytes
    assert len(path) < SUN_PATH_MAX
    variable = "DYN_SIDECAR_SOCKET"
    assert error_of({variable: path}) == f"{variable}={shown(path)} {SOCKET_LENGTH}"


# --- bad values, per variable: the exact line ------------------------------------------

# variable -> [(text, what follows "VARIABLE='text' ")]
BAD_VALUES: dict[str, list[tuple[str, str]]] = {
    "DYN_SYSTEM_ENABLED": [
        ("false", OFF + "set it to true or unset it"),
        (" false ", OFF + "set it to true or unset it"),
        ("0", LOWERCASE_TRUE),
        ("1", LOWERCASE_TRUE),
        ("TRUE", LOWERCASE_TRUE),
        ("True", LOWERCASE_TRUE),
        ("FALSE", LOWERCASE_TRUE),
        ('"true"', LOWERCASE_TRUE),
        ("yes", LOWERCASE_TRUE),
        ("on", LOWERCASE_TRUE),
        ("2", LOWERCASE_TRUE),
    ],
    "DYN_SYSTEM_PORT": [
        ("-1", OFF + "use a port from 1 to 65535"),
        (" -1 ", OFF + "use a port from 1 to 65535"),
        ("-2", OFF + "use a port from 1 to 65535"),
        ("-" + "9" * 5000, OFF + "use a port from 1 to 65535"),
        ("0", ANY_PORT),
        ("-0", ANY_PORT),
        ("+0", ANY_PORT),
        ("65536", PORT_RULE),
        ("065536", PORT_RULE),
        ("99999999999999999999", PORT_RULE),
        ("9" * 5000, PORT_RULE),
        ('"8080"', PORT_RULE),
        ("x", PORT_RULE),
        ("9090x", PORT_RULE),
        ("80.0", PORT_RULE),
        ("++80", PORT_RULE),
        ("0x50", PORT_RULE),
        ("90 90", PORT_RULE),
        ("1e3", PORT_RULE),
        ("00", ANY_PORT),
        ("²", PORT_RULE),
        ("1²", PORT_RULE),
        ("①", PORT_RULE),
        ("\u0669\u0660\u0669\u0660", PORT_RULE),
        ("\uff19\uff10\uff19\uff10", PORT_RULE),
    ],
    "DYN_SIDECAR_HOST": [
        ("localhost", HOST_RULE),
        ("1.2.3.4.5", HOST_RULE),
        ("a b", HOST_RULE),
        ("[::1]", HOST_RULE),
        ("http://x", HOST_RULE),
        ("a\tb", HOST_RULE),
    ],
    "DYN_SYSTEM_STARTING_HEALTH_STATUS": [
        ("Ready", LOWERCASE_STATUS),
        ("READY", LOWERCASE_STATUS),
        ("NotReady", LOWERCASE_STATUS),
        ("healthy", LOWERCASE_STATUS),
        ("not ready", LOWERCASE_STATUS),
        ("not_ready", LOWERCASE_STATUS),
        ('" ready "', LOWERCASE_STATUS),
        ('"ready', LOWERCASE_STATUS),
        ("'ready'", LOWERCASE_STATUS),
        ("1", LOWERCASE_STATUS),
    ],
    "DYN_SYSTEM_HEALTH_PATH": [
        ("health", PATH_RULE),
        ('"health"', PATH_RULE),
        ("/:id", PATH_RULE),
        ("/*rest", PATH_RULE),
        ("/v1/:id", PATH_RULE),
        ("/a b", PATH_RULE),
        ("/a?b=1", PATH_RULE),
        ("/a#b", PATH_RULE),
        ("/{name}", PATH_RULE),
        ("/é", PATH_RULE),
        ("http://x/health", PATH_RULE),
        ("/%zz", PATH_RULE),
        ("/a%2Fb", PATH_RULE),
        ("/" + "h" * 1024, PATH_RULE),
        ("/metrics", "is invalid: /metrics is served by the sidecar itself; choose another path"),
        (
            "/sidecar/live",
            "is invalid: /sidecar/live is served by the sidecar itself; choose another path",
        ),
        ("/live", LIVE_CLASH),
    ],
    "DYN_SYSTEM_LIVE_PATH": [
        ("live", PATH_RULE),
        ("/a b", PATH_RULE),
        ("/a?b", PATH_RULE),
        ("/metrics", "is invalid: /metrics is served by the sidecar itself; choose another path"),
        (
            "/sidecar/live",
            "is invalid: /sidecar/live is served by the sidecar itself; choose another path",
        ),
        ("/health", LIVE_CLASH),
        ("/ready", LIVE_CLASH),
    ],
    ENDPOINTS: [
        ("gen erate", NAMES_RULE),
        ("[gen erate]", NAMES_RULE),
        ('["gen erate"]', NAMES_RULE),
        ("e" * 129, NAMES_RULE),
        (f'["{"e" * 129}"]', NAMES_RULE),
        ('[["x"]]', NAMES_RULE),
        ('{"a":1}', NAMES_RULE),
        ("a,,b", NAMES_RULE),
        ("a,", NAMES_RULE),
        (",a", NAMES_RULE),
        (",", NAMES_RULE),
        ("[,]", NAMES_RULE),
        ('[""]', NAMES_RULE),
        ('"generate"', NAMES_RULE),
        ('["generate"', NAMES_RULE),
        ("generate;load_metrics", NAMES_RULE),
        ("generate load_metrics", NAMES_RULE),
        ("gén", NAMES_RULE),
        ("a/b", NAMES_RULE),
        (
            ",".join(f"e{n}" for n in range(4097)),
            "is invalid: the sidecar keeps at most 4096 endpoints",
        ),
    ],
    "DYN_SIDECAR_MODE": [
        ("router", "is invalid: expected worker or frontend"),
        ("workers", "is invalid: expected worker or frontend"),
    ],
    "DYN_SIDECAR_FRONTEND_SHAPE": [
        ("1.6.1", "is invalid: expected documented or dynamo-1.6.1"),
        ("dynamo", "is invalid: expected documented or dynamo-1.6.1"),
    ],
    "DYN_SIDECAR_SOCKET": [
        (socket_path_of(SUN_PATH_MAX + 1), SOCKET_LENGTH),
        (socket_path_of(4096), SOCKET_LENGTH),
        ("/tmp/dir/", SOCKET_FILE),
        ("/", SOCKET_FILE),
        ("/tmp/a\0b", SOCKET_FILE),
        ("relative.sock", SOCKET_FILE),
        ("./health.sock", SOCKET_FILE),
        ("/tmp/.", SOCKET_FILE),
        ("/tmp/..", SOCKET_FILE),
    ],
    "DYN_SIDECAR_DRAIN_SECONDS": [
        ("-1", SECONDS_RULE),
        ("-0.5", SECONDS_RULE),
        ("nan", SECONDS_RULE),
        ("NaN", SECONDS_RULE),
        ("inf", SECONDS_RULE),
        ("-inf", SECONDS_RULE),
        ("Infinity", SECONDS_RULE),
        ("1e999", SECONDS_RULE),
        ("five", SECONDS_RULE),
        ("5s", SECONDS_RULE),
        ("5,5", SECONDS_RULE),
        ("86400.5", SECONDS_RULE),
        ("86401", SECONDS_RULE),
        ("1e3", SECONDS_RULE),
        ("1_0", SECONDS_RULE),
        ("-0", SECONDS_RULE),
        ("+5", SECONDS_RULE),
    ],
    "DYN_SIDECAR_UPSTREAM_STATUS_URL": [
        ("127.0.0.1:8081/health", URL_RULE),
        ("ftp://x/health", URL_RULE),
        ("http:///health", URL_RULE),
        ("http://x:0/health", URL_RULE),
        ("http://x:99999/health", URL_RULE),
    ],
    "DYN_SIDECAR_UPSTREAM_INTERVAL": [("0", TIMEOUT_RULE), ("-2", TIMEOUT_RULE)],
    "DYN_SIDECAR_UPSTREAM_MISSES": [("0", COUNT_RULE), ("1001", COUNT_RULE), ("2.5", COUNT_RULE)],
    "DYN_SIDECAR_CANARY_URL": [("localhost:8000", URL_RULE)],
    "DYN_SIDECAR_CANARY_METHOD": [
        ("DELETE", "is invalid: expected GET, POST or PUT"),
        ("get it", "is invalid: expected GET, POST or PUT"),
    ],
    "DYN_SIDECAR_CANARY_BODY": [
        (
            "{max_tokens: 1}",
            "is invalid: expected JSON (Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1))",
        ),
        ("NaN", "is invalid: expected JSON (NaN is not JSON)"),
    ],
    "DYN_SIDECAR_CANARY_EXPECT": [
        ("2xx", EXPECT_RULE),
        ("299-200", EXPECT_RULE),
        ("200,", EXPECT_RULE),
        ("600", EXPECT_RULE),
    ],
    "DYN_SIDECAR_CANARY_TIMEOUT": [("0", TIMEOUT_RULE), ("-3", TIMEOUT_RULE)],
    "DYN_SIDECAR_CANARY_WAIT": [("-1", SECONDS_RULE)],
    "DYN_SIDECAR_CANARY_ENDPOINT": [
        ("gen erate", "is invalid: endpoint names are 1 to 128 characters of A-Z a-z 0-9 _ . -"),
    ],
    "DYN_SIDECAR_CANARY_FAILURES": [("0", COUNT_RULE), ("x", COUNT_RULE)],
    "DYN_SIDECAR_WATCH_PROCESS": [
        (
            "(vllm",
            "is invalid: expected a regular expression "
            "(missing ), unterminated subpattern at position 0)",
        ),
        ("*x", "is invalid: expected a regular expression (nothing to repeat at position 0)"),
    ],
    "DYN_SIDECAR_NOTIFY_SOCKET": [
        ("notify.sock", SOCKET_FILE),
        (socket_path_of(SUN_PATH_MAX + 1), SOCKET_LENGTH),
        (
            "/var/run/dynamo/health.sock",
            "is invalid: the notify socket must differ from the worker's socket and the state file",
        ),
    ],
    "DYN_SIDECAR_STATE_FILE": [
        ("state.json", "is invalid: expected an absolute file path, or off"),
        ("/data/", "is invalid: expected an absolute file path, or off"),
        ("none", "is invalid: expected an absolute file path, or off"),
        ("/tmp/.", "is invalid: expected an absolute file path, or off"),
        ("/tmp/..", "is invalid: expected an absolute file path, or off"),
        ("/tmp", "is invalid: it is a directory; expected a file path"),
        (
            "/proc/self/status/state.json",
            "is invalid: its directory '/proc/self/status' is not there, or is not a directory",
        ),
        (
            "/nonexistent-dir/state.json",
            "is invalid: its directory '/nonexistent-dir' is not there, or is not a directory",
        ),
        (
            "/tmp/" + "s" * (STATE_FILE_NAME_MAX + 1),
            "is invalid: the file's name is at most 225 bytes, leaving room for its temporary "
            "copy beside it",
        ),
        ("/tmp/" + "d" * 256 + "/s.json", "is invalid: each name in a path is at most 255 bytes"),
        ("/tmp" + "/d" * 2100, "is invalid: a path is at most 4065 bytes"),
    ],
    "DYN_SIDECAR_HEARTBEAT_TIMEOUT": [
        ("0", TIMEOUT_RULE),
        ("0.0", TIMEOUT_RULE),
        ("-5", TIMEOUT_RULE),
        ("86401", TIMEOUT_RULE),
        ("nan", TIMEOUT_RULE),
        ("30s", TIMEOUT_RULE),
    ],
    "DYN_SIDECAR_LIVENESS": [
        ("ready", "is invalid: expected started or health"),
        ("always", "is invalid: expected started or health"),
    ],
    "DYN_SIDECAR_KUBE_API_URL": [
        (
            "ftp://x",
            "is invalid: it must be the http:// or https:// URL of the API server, with a host "
            "and no path, query or credentials, such as https://10.96.0.1:443",
        ),
    ],
    "DYN_SIDECAR_KUBE_SERVICE_ACCOUNT_DIR": [
        (
            "sa",
            "is invalid: it must be the absolute path of the directory holding the service "
            "account's token and ca.crt, such as /var/run/secrets/kubernetes.io/serviceaccount",
        ),
        ("/x" + "a" * 300, "is invalid: each name in a path is at most 255 bytes"),
        ("/a" * 2045, "is invalid: a path is at most 4088 bytes"),
    ],
    "DYN_SIDECAR_KUBE_CONDITION": [
        (
            "Ready",
            "is invalid: that condition is the kubelet's own; use a type of your own domain, "
            "such as dynamo-health-sidecar.io/worker-ready",
        ),
        (
            "Bad/x",
            "is invalid: it must be a Kubernetes qualified name: an optional DNS subdomain and "
            "'/', then 1 to 63 letters, digits, '-', '_' or '.' that begin and end with a letter "
            "or digit, such as dynamo-health-sidecar.io/worker-ready",
        ),
    ],
    "DYN_SIDECAR_KUBE": [
        ("true", "is invalid: expected on, off or auto"),
        ("yes", "is invalid: expected on, off or auto"),
    ],
    "DYN_SIDECAR_LOG_FORMAT": [
        ("yaml", "is invalid: expected text or json"),
        ("logfmt", "is invalid: expected text or json"),
    ],
    "DYN_SIDECAR_LOG_LEVEL": [
        ("critical", "is invalid: expected debug, info, warning or error"),
        ("trace", "is invalid: expected debug, info, warning or error"),
        ("warn", "is invalid: expected debug, info, warning or error"),
    ],
}


def test_bad_values_cover_every_option() -> None:
    assert set(BAD_VALUES) == {option.variable for option in OPTIONS}


@pytest.mark.parametrize(
    ("variable", "text", "rule"),
    [(variable, text, rule) for variable, rows in BAD_VALUES.items() for text, rule in rows],
)
def test_load_rejects_bad_variable_with_exact_line(variable: str, text: str, rule: str) -> None:
    assert error_of({variable: text}) == f"{variable}={shown(text)} {rule}"


@pytest.mark.parametrize(
    ("variable", "text", "rule"),
    [
        (variable, text, rule)
        for variable, rows in BAD_VALUES.items()
        if variable in FLAGS
        for text, rule in rows
    ],
)
def test_load_rejects_bad_flag_naming_the_flag(variable: str, text: str, rule: str) -> None:
    assert error_of({}, {FIELDS[variable]: text}) == f"{FLAGS[variable]}={shown(text)} {rule}"


def test_port_bad_flag_line() -> None:
    assert error_of({}, {"port": "x"}) == "--port='x' is invalid: expected a port from 1 to 65535"


def test_enabled_false_refused() -> None:
    assert error_of({"DYN_SYSTEM_ENABLED": "false"}) == (
        "DYN_SYSTEM_ENABLED='false' turns the probe server off, and a sidecar that serves "
        "no probes is a misconfiguration: set it to true or unset it"
    )


@pytest.mark.parametrize("text", ["-1", "-2", "-32768"])
def test_port_negative_turns_dynamo_off_and_is_refused(text: str) -> None:
    assert error_of({"DYN_SYSTEM_PORT": text}) == (
        f"DYN_SYSTEM_PORT='{text}' turns the probe server off, and a sidecar that serves no "
        "probes is a misconfiguration: use a port from 1 to 65535"
    )


def test_port_zero_asks_for_any_port_and_is_refused() -> None:
    assert error_of({"DYN_SYSTEM_PORT": "0"}) == (
        "DYN_SYSTEM_PORT='0' asks for any free port, which no probe can find: use a port from "
        "1 to 65535"
    )


@pytest.mark.parametrize("variable", [option.variable for option in OPTIONS])
@pytest.mark.parametrize("text", ["  ", "\t", "\n"])
def test_load_whitespace_only_variable_is_a_value_refused(variable: str, text: str) -> None:
    # As in Dynamo, only the empty string counts as unset; spaces are a (bad) value.
    assert error_of({variable: text}).startswith(f"{variable}={text!r} ")


def test_kube_on_variable_overridden_by_flag() -> None:
    assert load({"DYN_SIDECAR_KUBE": "on"}, {"kube": "off"}).kube is Kube.OFF


# --- paths: the live path against the others -------------------------------------------


def test_paths_equal_when_both_set_blames_live_path() -> None:
    environ = {"DYN_SYSTEM_HEALTH_PATH": "/x", "DYN_SYSTEM_LIVE_PATH": "/x"}
    assert error_of(environ) == f"DYN_SYSTEM_LIVE_PATH='/x' {LIVE_CLASH}"


def test_paths_health_flag_equal_to_default_live_blames_flag() -> None:
    assert error_of({}, {"health_path": "/live"}) == f"--health-path='/live' {LIVE_CLASH}"


def test_paths_live_flag_equal_to_health_variable_blames_flag() -> None:
    environ = {"DYN_SYSTEM_HEALTH_PATH": "/h"}
    assert error_of(environ, {"live_path": "/h"}) == f"--live-path='/h' {LIVE_CLASH}"


def test_paths_swapped_accepted() -> None:
    settings = load({"DYN_SYSTEM_HEALTH_PATH": "/live", "DYN_SYSTEM_LIVE_PATH": "/health"})
    assert (settings.health_path, settings.live_path) == ("/live", "/health")


def test_paths_health_may_be_ready() -> None:
    assert load({"DYN_SYSTEM_HEALTH_PATH": "/ready"}).health_path == "/ready"


# --- flags win -------------------------------------------------------------------------

# variable -> (a good variable value, a different good flag value, the flag's value)
OVERRIDES: dict[str, tuple[str, str, object]] = {
    "DYN_SYSTEM_PORT": ("9091", "9092", 9092),
    "DYN_SIDECAR_HOST": ("127.0.0.1", "::1", "::1"),
    "DYN_SYSTEM_STARTING_HEALTH_STATUS": ("notready", "ready", Status.READY),
    "DYN_SYSTEM_HEALTH_PATH": ("/h1", "/h2", "/h2"),
    "DYN_SYSTEM_LIVE_PATH": ("/l1", "/l2", "/l2"),
    ENDPOINTS: ('["a"]', "b,c", ("b", "c")),
    "DYN_SIDECAR_MODE": ("worker", "frontend", Mode.FRONTEND),
    "DYN_SIDECAR_FRONTEND_SHAPE": ("documented", "dynamo-1.6.1", FrontendShape.DYNAMO_1_6_1),
    "DYN_SIDECAR_SOCKET": ("/tmp/a.sock", "/tmp/b.sock", Path("/tmp/b.sock")),
    "DYN_SIDECAR_DRAIN_SECONDS": ("1", "2.5", 2.5),
    "DYN_SIDECAR_LIVENESS": ("started", "health", Liveness.HEALTH),
    "DYN_SIDECAR_KUBE": ("auto", "off", Kube.OFF),
    "DYN_SIDECAR_KUBE_API_URL": ("https://a:443", "http://b:8080", "http://b:8080"),
    "DYN_SIDECAR_KUBE_SERVICE_ACCOUNT_DIR": ("/a", "/b", Path("/b")),
    "DYN_SIDECAR_KUBE_CONDITION": ("x.io/a", "x.io/b", "x.io/b"),
    "DYN_SIDECAR_LOG_FORMAT": ("text", "json", LogFormat.JSON),
    "DYN_SIDECAR_LOG_LEVEL": ("info", "debug", LogLevel.DEBUG),
    "DYN_SIDECAR_HEARTBEAT_TIMEOUT": ("30", "2.5", 2.5),
    "DYN_SIDECAR_STATE_FILE": ("/tmp/a.json", "off", None),
    "DYN_SIDECAR_NOTIFY_SOCKET": ("/tmp/n1.sock", "/tmp/n2.sock", Path("/tmp/n2.sock")),
    "DYN_SIDECAR_WATCH_PROCESS": ("vllm", "sglang", re.compile("sglang")),
    "DYN_SIDECAR_UPSTREAM_STATUS_URL": ("http://a:1/h", "http://b:2/h", "http://b:2/h"),
    "DYN_SIDECAR_UPSTREAM_INTERVAL": ("2", "0.5", 0.5),
    "DYN_SIDECAR_UPSTREAM_MISSES": ("3", "5", 5),
    "DYN_SIDECAR_CANARY_URL": ("http://a:1/h", "http://b:2/h", "http://b:2/h"),
    "DYN_SIDECAR_CANARY_METHOD": ("GET", "POST", "POST"),
    "DYN_SIDECAR_CANARY_BODY": ("{}", "[]", "[]"),
    "DYN_SIDECAR_CANARY_EXPECT": ("200", "200-204", ((200, 204),)),
    "DYN_SIDECAR_CANARY_TIMEOUT": ("3", "1.5", 1.5),
    "DYN_SIDECAR_CANARY_WAIT": ("10", "0", 0.0),
    "DYN_SIDECAR_CANARY_ENDPOINT": ("generate", "clear_kv_blocks", "clear_kv_blocks"),
    "DYN_SIDECAR_CANARY_FAILURES": ("3", "1", 1),
}


def test_overrides_cover_every_flag() -> None:
    assert set(OVERRIDES) == set(FLAGS)


@pytest.mark.parametrize("variable", list(OVERRIDES))
def test_flag_wins_over_variable(variable: str) -> None:
    env_text, flag_text, expected = OVERRIDES[variable]
    field = FIELDS[variable]
    environ = {variable: env_text, **CONTEXT.get(variable, {})}
    assert getattr(load(environ), field) != expected
    assert getattr(load(environ, {field: flag_text}), field) == expected


@pytest.mark.parametrize("variable", list(OVERRIDES))
def test_flag_wins_over_bad_variable(variable: str) -> None:
    bad_text = BAD_VALUES[variable][0][0]
    _, flag_text, expected = OVERRIDES[variable]
    field = FIELDS[variable]
    environ = {variable: bad_text, **CONTEXT.get(variable, {})}
    assert getattr(load(environ, {field: flag_text}), field) == expected


@pytest.mark.parametrize("variable", list(OVERRIDES))
def test_bad_flag_blamed_over_good_variable(variable: str) -> None:
    env_text = OVERRIDES[variable][0]
    bad_text, rule = BAD_VALUES[variable][0]
    message = error_of({variable: env_text}, {FIELDS[variable]: bad_text})
    assert message == f"{FLAGS[variable]}={shown(bad_text)} {rule}"


def test_flag_empty_is_a_value_not_unset() -> None:
    assert error_of({"DYN_SYSTEM_PORT": "9091"}, {"port": ""}) == f"--port='' {PORT_RULE}"


# --- DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('["generate"]', ("generate",)),
        ("[generate]", ("generate",)),
        ("generate,load_metrics", ("generate", "load_metrics")),
        ("[generate, clear_kv_blocks]", ("generate", "clear_kv_blocks")),
        ("[]", ()),
        ("a,b,a,c,b", ("a", "b", "c")),
    ],
)
def test_endpoints_accepted_spellings(text: str, expected: tuple[str, ...]) -> None:
    assert load({ENDPOINTS: text}).required_endpoints == expected


def test_endpoints_json_empty_list_overrides_variable_by_flag() -> None:
    assert load({ENDPOINTS: "generate"}, {"required_endpoints": "[]"}).required_endpoints == ()


@pytest.mark.parametrize("text", ["[1]", "[-1]", "[true]", "[null]", "[NaN]", "[1, 2]"])
def test_endpoints_mangled_list_accepts_names_that_look_like_json(text: str) -> None:
    expected = tuple(part.strip() for part in text[1:-1].split(","))
    assert load({ENDPOINTS: text}).required_endpoints == expected


def test_endpoints_deeply_nested_brackets_raise_settings_error() -> None:
    text = "[" * 5000 + "]" * 5000
    assert error_of({ENDPOINTS: text}) == f"{ENDPOINTS}={shown(text)} {NAMES_RULE}"


names = st.from_regex(NAME_PATTERN, fullmatch=True)


def spellings(items: list[str]) -> list[str]:
    return [json.dumps(items), "[" + ", ".join(items) + "]", ",".join(items)]


@given(st.lists(names, min_size=1, max_size=8))
def test_endpoints_any_valid_list_round_trips_through_every_spelling(items: list[str]) -> None:
    expected = tuple(dict.fromkeys(items))
    for text in spellings(items):
        assert load({ENDPOINTS: text}).required_endpoints == expected, text
        assert load({}, {"required_endpoints": text}).required_endpoints == expected, text


# --- the socket: bytes that are not UTF-8 ------------------------------------------------


def test_socket_non_utf8_path_is_accepted() -> None:
    text = "/tmp/\udcff.sock"  # what os.environ holds for the bytes b"/tmp/\xff.sock"
    assert load({"DYN_SIDECAR_SOCKET": text}).socket_path == Path(text)


# --- any value up to 1 MiB, any variable or flag: Settings, or one short line ----------

MIB = 1024 * 1024
# What broke a parser once, or could: brackets and parentheses to nest, digits past int()'s
# 4,300-digit limit, signs, exponents, quotes and escapes, path separators and names, NUL,
# line breaks and other characters that do not print, and the lone surrogates os.environ
# makes of bytes that are not UTF-8.
PIECES = [
    *"[](){}\"'\\9012-+.e/%:*@ ,=?#",
    *["..", "**", "nan", "inf", "1e400", "-0", "0x", "é", "a", "generate", "http://", "%eth0"],
    *["\t", "\n", "\r", "\x00", "\x0b", "\x1c", "\x85", "\u2028", "\ufeff", "\udc80", "\udcff"],
]
# Lengths at the limits: a socket path, a name, a file name, Linux's path, int()'s digits.
SIZES = st.one_of(
    st.sampled_from([0, 1, 2, 107, 108, 128, 129, 200, 201, 225, 226, 255, 256, 1024, 1025]),
    st.sampled_from([4095, 4096, 4300, 4301, 65536, 131071, MIB]),
    st.integers(min_value=0, max_value=MIB),
)
# Text as the environment or the command line gives it: surrogates only from bytes.
EXTERNAL_TEXT = st.one_of(
    st.text(max_size=20),
    st.binary(max_size=20).map(lambda data: data.decode("utf-8", "surrogateescape")),
)


def near_values(variable: str) -> list[str]:
    """The texts this file already tries for the variable, good and bad."""
    good = [text for text, _ in GOOD_VALUES.get(variable, [])]
    return good + [text for text, _ in BAD_VALUES[variable]]


@st.composite
def hostile_values(draw: st.DrawFn, variable: str) -> str:
    """Up to 1 MiB: one of the variable's known values with a piece repeated before it,
    after it or in its middle, or the piece nested that deep, or alone."""
    base = draw(st.sampled_from(near_values(variable)) | EXTERNAL_TEXT)
    piece = draw(st.sampled_from(PIECES) | EXTERNAL_TEXT)
    run = piece * (draw(SIZES) // max(len(piece), 1))
    half = len(base) // 2
    text = draw(
        st.sampled_from(
            [
                run + base,
                base + run,
                base[:half] + run + base[half:],
                run + base + run[::-1].translate(str.maketrans("[({", "])}")),
                run,
                base,
            ]
        )
    )
    return text[:MIB]


def assert_settings_or_one_short_line(
    environ: dict[str, str], flags: dict[str, str | None], name: str, text: str
) -> None:
    """A Settings, or SettingsError whose line names the setting and shows the value
    (shortened), all printable, so one line; never another exception."""
    try:
        result = load(environ, flags)
    except SettingsError as exc:
        message = str(exc)
        assert message.startswith(f"{name}={shown(text)} "), message[:500]
        assert message.isprintable(), message[:500]
        assert len(message) <= 12 * SHOWN_MAX + 1000, message[:500]  # \U0001bc9a: 10 each
    else:
        assert isinstance(result, Settings)


def test_shown_keeps_short_values_whole() -> None:
    assert shown("x" * SHOWN_MAX) == repr("x" * SHOWN_MAX)
    assert shown("a\nb") == "'a\\nb'"


def test_shown_shortens_long_values_to_their_ends_and_length() -> None:
    text = "/" + "a" * MIB + "/end"
    assert shown(text) == f"{text[:150]!r}...{text[-40:]!r} ({len(text)} characters)"
    assert len(shown(text)) < SHOWN_MAX + 50


SOURCES = [(variable, None) for variable in VARIABLES] + [
    (variable, FLAGS[variable]) for variable in FLAGS
]


@pytest.mark.parametrize(
    ("variable", "flag"), SOURCES, ids=[flag or variable for variable, flag in SOURCES]
)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
@given(data=st.data())
def test_load_any_value_up_to_a_mebibyte_gives_settings_or_one_short_line(
    variable: str, flag: str | None, data: st.DataObject
) -> None:
    text = data.draw(hostile_values(variable), label="text")
    environ = {**CONTEXT.get(variable, {})}
    flags: dict[str, str | None] = {}
    if flag is None:
        environ[variable] = text
    else:
        flags[FIELDS[variable]] = text
    if text or flag is not None:  # an empty variable is unset: nothing to refuse
        assert_settings_or_one_short_line(environ, flags, flag or variable, text)


@given(directory=hostile_values("DYN_SIDECAR_KUBE_SERVICE_ACCOUNT_DIR"))
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_kube_on_with_any_service_account_dir_names_either_in_one_printable_line(
    directory: str,
) -> None:
    # The refusal of `on` lists the missing token and ca.crt paths: a newline in the
    # directory must not break its line.
    environ = {"DYN_SIDECAR_KUBE": "on", "DYN_SIDECAR_KUBE_SERVICE_ACCOUNT_DIR": directory}
    try:
        discover(load(environ), environ)  # the refusal of `on` is discovery's (kube/cluster.py)
    except SettingsError as exc:
        message = str(exc)
        assert message.startswith(("DYN_SIDECAR_KUBE=", "DYN_SIDECAR_KUBE_SERVICE_ACCOUNT_DIR="))
        assert message.isprintable(), message[:500]


def test_canary_endpoint_defaults_to_the_first_required_one() -> None:
    environ = {"DYN_SIDECAR_CANARY_URL": "http://a:1/h", ENDPOINTS: "generate,load_metrics"}
    assert load(environ).canary_endpoint == "generate"


def test_canary_without_an_endpoint_to_hold_is_refused() -> None:
    assert error_of({"DYN_SIDECAR_CANARY_URL": "http://a:1/h"}) == (
        "DYN_SIDECAR_CANARY_URL='http://a:1/h' is invalid: a canary needs an endpoint to hold: "
        "set DYN_SIDECAR_CANARY_ENDPOINT or DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS"
    )


def test_canary_body_with_get_is_refused() -> None:
    environ = {"DYN_SIDECAR_CANARY_BODY": "{}"}
    assert error_of(environ) == (
        "DYN_SIDECAR_CANARY_BODY='{}' is invalid: a canary body needs "
        "DYN_SIDECAR_CANARY_METHOD=POST or PUT"
    )


def test_frontend_shape_in_worker_mode_is_refused() -> None:
    assert error_of({"DYN_SIDECAR_FRONTEND_SHAPE": "dynamo-1.6.1"}) == (
        "DYN_SIDECAR_FRONTEND_SHAPE='dynamo-1.6.1' is invalid: the frontend shape needs "
        "DYN_SIDECAR_MODE=frontend"
    )


def test_frontend_shape_flag_in_worker_mode_is_refused() -> None:
    assert error_of({}, {"frontend_shape": "documented"}) == (
        "--frontend-shape='documented' is invalid: the frontend shape needs "
        "DYN_SIDECAR_MODE=frontend"
    )


def test_canary_in_frontend_mode_is_refused() -> None:
    variable = "DYN_SIDECAR_CANARY_URL"
    environ = {variable: "http://a:1/h", "DYN_SIDECAR_MODE": "frontend", ENDPOINTS: "generate"}
    assert error_of(environ) == (
        f"{variable}='http://a:1/h' is invalid: canaries need DYN_SIDECAR_MODE=worker"
    )
