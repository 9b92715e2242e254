"""The real `dynamo-health-sidecar` command, run as a process: exit codes, stderr, logs.

docs/protocol.md section 1.2: an invalid setting stops the process at start with exit code 2
and one line on stderr naming the variable or flag, the value and what is allowed; nothing
starts half-configured.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import Sidecar, free_port, short_socket_path, wait_until

import sidecar
from sidecar.settings import OPTIONS

PROG = "dynamo-health-sidecar"
PREFIX = f"{PROG}: "
TIMEOUT = 15.0
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any `DYN_*` setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DYN_", "KUBERNETES_"))}
    env["COLUMNS"] = "200"  # argparse wraps help to the terminal width
    env.update(extra or {})
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, command: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the command to its end; a free port and a private socket keep it off the host's."""
    with tempfile.TemporaryDirectory(prefix="dhs-") as directory:
        base = {
            "DYN_SYSTEM_PORT": str(free_port()),
            "DYN_SIDECAR_SOCKET": str(Path(directory) / "health.sock"),
        }
        return subprocess.run(
            [*(command or [sys.executable, "-m", "sidecar"]), *args],
            env=clean_env({**base, **(env or {})}),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, prefix: str = PREFIX
) -> str:
    """Exit `code`, nothing on stdout, one line on stderr with the command's prefix."""
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.endswith("\n")
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(prefix)
    return lines[0]


# --- invalid settings: exit 2, one line ---------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        (
            "DYN_SYSTEM_PORT",
            "x",
            "DYN_SYSTEM_PORT='x' is invalid: expected a port from 1 to 65535",
        ),
        (
            "DYN_SYSTEM_PORT",
            "-1",
            "DYN_SYSTEM_PORT='-1' turns the probe server off, and a sidecar that serves no "
            "probes is a misconfiguration: use a port from 1 to 65535",
        ),
        (
            "DYN_SYSTEM_ENABLED",
            "false",
            "DYN_SYSTEM_ENABLED='false' turns the probe server off, and a sidecar that serves "
            "no probes is a misconfiguration: set it to true or unset it",
        ),
        (
            "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS",
            "gen erate",
            "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS='gen erate' is invalid: endpoint names are "
            "1 to 128 characters of A-Z a-z 0-9 _ . -, given as "
            '["generate"], [generate] or generate,clear_kv_blocks',
        ),
        (
            "DYN_SYSTEM_LIVE_PATH",
            "/ready",
            "DYN_SYSTEM_LIVE_PATH='/ready' is invalid: the live path must differ from the "
            "health path and from /ready",
        ),
        (
            "DYN_SIDECAR_DRAIN_SECONDS",
            "nan",
            "DYN_SIDECAR_DRAIN_SECONDS='nan' is invalid: expected a number of seconds from 0 "
            "to 86400, such as 5 or 2.5",
        ),
        (
            "DYN_SIDECAR_KUBE",
            "on",
            "DYN_SIDECAR_KUBE='on' needs the pod's Downward API variables, its service account "
            "and the kubernetes package, but POD_NAME, POD_NAMESPACE, POD_UID, "
            "KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT, "
            "/var/run/secrets/kubernetes.io/serviceaccount/token and "
            "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt are missing: set them (the "
            "chart does with sidecar.kubeReporting.enabled) or use auto or off",
        ),
        (
            "DYN_SIDECAR_WATCH_PROCESS",
            "(vllm",
            "DYN_SIDECAR_WATCH_PROCESS='(vllm' is invalid: expected a regular expression "
            "(missing ), unterminated subpattern at position 0)",
        ),
        (
            "DYN_SIDECAR_LOG_FORMAT",
            "yaml",
            "DYN_SIDECAR_LOG_FORMAT='yaml' is invalid: expected text or json",
        ),
        (
            "DYN_SIDECAR_FRONTEND_SHAPE",
            "dynamo-1.6.1",
            "DYN_SIDECAR_FRONTEND_SHAPE='dynamo-1.6.1' is invalid: the frontend shape needs "
            "DYN_SIDECAR_MODE=frontend",
        ),
    ],
)
def test_serve_invalid_variable_exits_2_with_one_line(variable: str, value: str, line: str) -> None:
    result = run_cli("serve", env={variable: value})
    assert assert_one_line_error(result, 2) == PREFIX + line


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--port", "70000"],
            "--port='70000' is invalid: expected a port from 1 to 65535",
        ),
        (
            ["--port=-1"],
            "--port='-1' turns the probe server off, and a sidecar that serves no probes is a "
            "misconfiguration: use a port from 1 to 65535",
        ),
        (
            ["--endpoints", "a,,b"],
            "--endpoints='a,,b' is invalid: endpoint names are 1 to 128 characters of "
            'A-Z a-z 0-9 _ . -, given as ["generate"], [generate] or generate,clear_kv_blocks',
        ),
        (
            ["--health-path", "/metrics"],
            "--health-path='/metrics' is invalid: /metrics is served by the sidecar itself; "
            "choose another path",
        ),
        (
            ["--socket", "/tmp/" + "s" * 103],
            f"--socket='/tmp/{'s' * 103}' is invalid: a Unix socket path is at most 107 bytes",
        ),
        (
            ["--drain-seconds", "-5"],
            "--drain-seconds='-5' is invalid: expected a number of seconds from 0 to 86400, "
            "such as 5 or 2.5",
        ),
        (
            ["--log-level", "trace"],
            "--log-level='trace' is invalid: expected debug, info, warning or error",
        ),
    ],
)
def test_serve_invalid_flag_exits_2_with_one_line(args: list[str], line: str) -> None:
    result = run_cli("serve", *args)
    assert assert_one_line_error(result, 2) == PREFIX + line


def test_serve_bad_flag_blamed_even_with_good_variable() -> None:
    result = run_cli("serve", "--mode", "router", env={"DYN_SIDECAR_MODE": "frontend"})
    assert assert_one_line_error(result, 2) == (
        PREFIX + "--mode='router' is invalid: expected worker or frontend"
    )


def test_serve_value_with_newline_stays_on_one_line() -> None:
    result = run_cli("serve", env={"DYN_SIDECAR_MODE": "worker\nfrontend"})
    assert assert_one_line_error(result, 2) == (
        PREFIX + "DYN_SIDECAR_MODE='worker\\nfrontend' is invalid: expected worker or frontend"
    )


# Linux's MAX_ARG_STRLEN: one environment string (NAME=value and its NUL) or argument is at
# most 128 KiB, so this is the longest value a real process can be given.
LONGEST = 128 * 1024 - 64
# Values that once crashed the start with a traceback, printed more than one line, or
# started a sidecar that could never work (answering 503 to every change, or ending the
# worker's life), each now refused in one line.
ONCE_BROKEN = {
    "port-superscript-two": ("DYN_SYSTEM_PORT", "²"),
    "endpoints-deep-nesting": ("DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS", "[" * 2000 + "]" * 2000),
    "port-5000-digits": ("DYN_SYSTEM_PORT", "9" * 5000),
    "port-longest": ("DYN_SYSTEM_PORT", "1" * LONGEST),
    "status-capitalised": ("DYN_SYSTEM_STARTING_HEALTH_STATUS", "Ready"),
    "health-path-longest": ("DYN_SYSTEM_HEALTH_PATH", "/" + "h" * LONGEST),
    "endpoints-longest-nesting": (
        "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS",
        "[" * (LONGEST // 2) + "]" * (LONGEST // 2),
    ),
    "watch-deep-nesting": ("DYN_SIDECAR_WATCH_PROCESS", "(" * 100_000),
    "watch-repeat-overflow": ("DYN_SIDECAR_WATCH_PROCESS", "a{99999999999}"),
    "watch-nested-set-warning": ("DYN_SIDECAR_WATCH_PROCESS", "[[a"),
    "watch-newline-in-its-error": ("DYN_SIDECAR_WATCH_PROCESS", "(?<\n)"),
    "state-file-a-directory": ("DYN_SIDECAR_STATE_FILE", "/tmp"),
    "state-file-dot": ("DYN_SIDECAR_STATE_FILE", "/tmp/."),
    "state-file-name-too-long": ("DYN_SIDECAR_STATE_FILE", "/tmp/" + "s" * 256),
    "state-file-through-a-file": ("DYN_SIDECAR_STATE_FILE", "/proc/self/status/state.json"),
    "host-scope-not-utf8": ("DYN_SIDECAR_HOST", "fe80::1%\udcff"),
    "upstream-url-not-utf8": ("DYN_SIDECAR_UPSTREAM_STATUS_URL", "http://127.0.0.1:8081/\udcff"),
    "canary-body-not-utf8": ("DYN_SIDECAR_CANARY_BODY", '"\udcff"'),
    "endpoints-over-capacity": (
        "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS",
        ",".join(f"e{n}" for n in range(5000)),
    ),
}
# What a value needs beside it to reach the part of the sidecar it once broke.
BESIDE = {
    "DYN_SIDECAR_CANARY_BODY": {
        "DYN_SIDECAR_CANARY_URL": "http://127.0.0.1:8000/health",
        "DYN_SIDECAR_CANARY_METHOD": "POST",
        "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate",
    },
}


@pytest.mark.parametrize(("variable", "value"), ONCE_BROKEN.values(), ids=ONCE_BROKEN)
def test_serve_once_broken_value_exits_2_with_one_short_line(variable: str, value: str) -> None:
    result = run_cli("serve", env={**BESIDE.get(variable, {}), variable: value})
    line = assert_one_line_error(result, 2)
    assert line.startswith(f"{PREFIX}{variable}=")
    assert len(line) < 1000


@pytest.mark.parametrize(
    "args",
    [
        ["--watch-process", "(" * LONGEST],
        ["--port", "9" * LONGEST],
        ["--state-file", "/tmp"],
        ["--starting-health-status", "NotReady"],
    ],
    ids=["watch-process", "port", "state-file", "starting-health-status"],
)
def test_serve_once_broken_flag_exits_2_with_one_short_line(args: list[str]) -> None:
    line = assert_one_line_error(run_cli("serve", *args), 2)
    assert line.startswith(f"{PREFIX}{args[0]}=")
    assert len(line) < 1000


# --- usage mistakes ---------------------------------------------------------------------------


def test_serve_unknown_flag_exits_2_with_one_line() -> None:
    line = assert_one_line_error(run_cli("serve", "--bogus"), 2)
    assert "--bogus" in line


@pytest.mark.parametrize(
    "argument",
    ["--bogus\nline", "--bogus\udcff", "--" + "x" * LONGEST],
    ids=["newline", "not-utf8", "longest"],
)
def test_serve_unknown_flag_of_any_text_exits_2_with_one_short_line(argument: str) -> None:
    line = assert_one_line_error(run_cli("serve", argument), 2)
    assert "unrecognized arguments: --" in line
    assert len(line) < 1000


def test_top_level_unknown_flag_exits_2_with_one_line() -> None:
    assert_one_line_error(run_cli("--bogus"), 2)


def test_serve_flag_without_value_exits_2_with_one_line() -> None:
    # argparse names the subcommand in the prefix of its own usage errors.
    line = assert_one_line_error(run_cli("serve", "--port"), 2, prefix=f"{PROG} serve: ")
    assert "--port" in line


def test_unknown_command_exits_2_with_one_line() -> None:
    line = assert_one_line_error(run_cli("frobnicate"), 2)
    assert "frobnicate" in line


def test_no_command_exits_2_with_one_line() -> None:
    line = assert_one_line_error(run_cli(), 2)
    assert "COMMAND" in line


# --- help and version ---------------------------------------------------------------------


def test_help_exits_0_and_lists_serve() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert result.stderr == ""
    assert result.stdout.startswith(f"usage: {PROG} ")
    assert re.search(r"^\s+serve\s+\S", result.stdout, re.MULTILINE)
    assert "--version" in result.stdout


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.flag], ids=lambda o: o.flag)
def test_serve_help_names_flag_with_its_variable(option: object, serve_help: str) -> None:
    flag, variable, metavar = option.flag, option.variable, option.metavar  # type: ignore[attr-defined]
    # The flag's entry, up to the next flag, ends with its variable in brackets.
    entry = re.search(
        rf"^ {{2}}{re.escape(flag)} {re.escape(metavar)}\s((?:(?!^ {{2}}--).)*)",
        serve_help,
        re.M | re.S,
    )
    assert entry, flag
    assert f"[{variable}]" in entry.group(1)


def test_serve_help_exits_0_and_explains_precedence(serve_help: str) -> None:
    assert serve_help.startswith(f"usage: {PROG} serve ")
    assert "the flag wins" in serve_help
    assert "exit code 2" in serve_help


@pytest.fixture(scope="module")
def serve_help() -> str:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    assert result.stderr == ""
    return result.stdout


def test_version_prints_package_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout == f"{PROG} {sidecar.__version__}\n"
    assert result.stderr == ""


def test_version_matches_installed_metadata() -> None:
    assert version("dynamo-health-sidecar") == sidecar.__version__


def test_console_script_installed_and_runs() -> None:
    script = Path(sysconfig.get_path("scripts")) / PROG
    assert script.is_file()
    assert os.access(script, os.X_OK)
    result = run_cli("--version", command=[str(script)])
    assert result.returncode == 0
    assert result.stdout == f"{PROG} {sidecar.__version__}\n"


def test_python_m_sidecar_help_works() -> None:
    result = run_cli("--help", command=[sys.executable, "-m", "sidecar"])
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: {PROG} ")


# --- start-up failures outside the settings: exit 1, one line --------------------------


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["0.0.0.0", "::"])
def test_serve_port_in_use_exits_1_naming_the_port(family: socket.AddressFamily) -> None:
    socket_path = short_socket_path()
    try:
        occupier = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        pytest.skip("no IPv6 on this host")
    with occupier:
        if family == socket.AF_INET6:
            occupier.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        occupier.bind(("0.0.0.0" if family == socket.AF_INET else "::", 0))
        occupier.listen()
        port = occupier.getsockname()[1]
        result = run_cli(
            "serve", env={"DYN_SYSTEM_PORT": str(port), "DYN_SIDECAR_SOCKET": str(socket_path)}
        )
    line = assert_one_line_error(result, 1)
    assert f"port {port}" in line
    assert not socket_path.exists()


def test_serve_socket_path_is_regular_file_exits_1(tmp_path: Path) -> None:
    regular = tmp_path / "health.sock"
    regular.write_text("not a socket")
    line = assert_one_line_error(run_cli("serve", "--socket", str(regular)), 1)
    assert line == f"{PREFIX}{regular} exists and is not a socket; refusing to replace it"
    assert regular.read_text() == "not a socket"


def test_serve_socket_directory_is_regular_file_exits_1(tmp_path: Path) -> None:
    regular = tmp_path / "dir"
    regular.write_text("")
    line = assert_one_line_error(run_cli("serve", "--socket", str(regular / "health.sock")), 1)
    assert line.startswith(f"{PREFIX}cannot create the socket's directory {regular}: ")


# --- serving: the start line, the stop, the log format ---------------------------------


def _start_line(sc: Sidecar) -> str:
    assert wait_until(lambda: "serving probes" in sc.logs(), 5.0), sc.logs()
    lines = [line for line in sc.logs().splitlines() if "serving probes" in line]
    assert len(lines) == 1, sc.logs()
    return lines[0]


def test_serve_logs_one_start_line_saying_what_is_served_where(
    run_sidecar: Callable[..., Sidecar],
) -> None:
    sc = run_sidecar(
        {"DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate,load_metrics"},
        ["--health-path", "/healthz", "--live-path", "/livez", "--drain-seconds", "0"],
    )
    line = _start_line(sc)
    assert re.match(rf"{TIMESTAMP} INFO serving probes on http://\S+:{sc.port} ", line), line
    for fact in (
        "/healthz",
        "/livez",
        "/ready",
        "/metrics",
        str(sc.socket_path),
        "generate,load_metrics",
        "worker",
        "notready",
    ):
        assert fact in line, fact
    assert sc.stop() == 0


def test_serve_auto_inside_a_cluster_without_the_pod_says_why_reporting_is_off(
    run_sidecar: Callable[..., Sidecar], tmp_path: Path
) -> None:
    sc = run_sidecar(
        {
            "KUBERNETES_SERVICE_HOST": "10.96.0.1",
            "KUBERNETES_SERVICE_PORT": "443",
            "DYN_SIDECAR_KUBE_SERVICE_ACCOUNT_DIR": str(tmp_path / "account"),
            "DYN_SIDECAR_DRAIN_SECONDS": "0",
        }
    )
    _start_line(sc)
    off = [line for line in sc.logs().splitlines() if "Kubernetes reporting is off" in line]
    account = tmp_path / "account"
    assert len(off) == 1, sc.logs()
    assert off[0].endswith(
        " INFO Kubernetes reporting is off (DYN_SIDECAR_KUBE=auto): POD_NAME, POD_NAMESPACE, "
        f"POD_UID, {account}/token and {account}/ca.crt are missing"
    ), off[0]
    assert sc.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_signal_with_no_drain_exits_0_and_removes_socket(
    sidecar: Sidecar, signum: int
) -> None:
    assert sidecar.socket_path.exists()
    assert sidecar.stop(signum) == 0
    assert not sidecar.socket_path.exists()
    assert "Traceback" not in sidecar.logs()


def test_serve_json_log_lines_are_objects_with_time_level_message(
    run_sidecar: Callable[..., Sidecar],
) -> None:
    sc = run_sidecar(
        {
            "DYN_SIDECAR_LOG_FORMAT": "json",
            "DYN_SIDECAR_DRAIN_SECONDS": "0",
            "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate",
        }
    )
    assert sc.control("POST", "/v1/endpoints/generate/ready").status_code == 200
    assert sc.stop() == 0
    lines = sc.logs().splitlines()
    assert len(lines) >= 3, sc.logs()  # start, a transition, stop
    for line in lines:
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert re.fullmatch(TIMESTAMP, entry["time"]), line
        assert entry["level"] in ("debug", "info", "warning", "error"), line
        assert isinstance(entry["message"], str) and entry["message"], line
    assert any("serving probes" in json.loads(line)["message"] for line in lines)


def test_serve_text_log_lines_start_with_time_and_level(sidecar: Sidecar) -> None:
    assert sidecar.stop() == 0
    lines = sidecar.logs().splitlines()
    assert lines, "no log lines"
    for line in lines:
        assert re.match(rf"{TIMESTAMP} (DEBUG|INFO|WARNING|ERROR) \S", line), line


def test_serve_abbreviated_flag_is_refused() -> None:
    line = assert_one_line_error(run_cli("serve", "--po=9091"), 2)
    assert "unrecognized arguments: --po=9091" in line
