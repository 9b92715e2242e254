"""One frozen `Settings` built once from the environment and the `serve` flags.

Every setting has a variable (what the chart sets) and a flag (what a person types); the
flag wins, and an empty variable counts as unset, as in Dynamo (a variable of spaces is a
value, as in Dynamo). Each value is checked here, at start, and a bad one raises
`SettingsError` carrying the single line the user sees: the variable or flag, the value
(shortened past `SHOWN_MAX` characters), and what is allowed. Nothing starts
half-configured (docs/protocol.md section 1).

Dynamo's own variables (`DYN_SYSTEM_*`) are read as Dynamo 1.6.1 reads them, where that is
no worse for the user: surrounding whitespace is ignored, a double-quoted string is
unquoted, and the spellings are Dynamo's, lowercase. Where the sidecar differs, the
protocol document says why.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import json
import os
import re
import urllib.parse
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sidecar.core.records import MAX_ENDPOINTS, Liveness, Status
from sidecar.core.verdict import FrontendShape
from sidecar.kube.discovery import (
    DEFAULT_CONDITION,
    DEFAULT_SERVICE_ACCOUNT_DIR,
    InCluster,
    check_api_url,
    check_condition_type,
    check_service_account_dir,
    find_in_cluster,
    refusal,
)

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,128}")
NAME_RULE = "1 to 128 characters of A-Z a-z 0-9 _ . -"
# RFC 3986 path characters without percent escapes: Starlette matches decoded paths.
PATH_PATTERN = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/-]{0,1023}")
PATH_RULE = (
    "at most 1024 characters of letters, digits and - . _ ~ ! $ & ' ( ) * + , ; = : @ /, "
    "and no segment that starts with : or * (Dynamo refuses those)"
)
SUN_PATH_MAX = 107
# Linux's limits on a path (4,096 bytes with its NUL) and on one name in it: longer ones
# fail with ENAMETOOLONG.
PATH_MAX = 4095
NAME_MAX = 255
# The state file's temporary copy is `.NAME.PID.RANDOM.tmp`: at most 30 bytes longer.
STATE_FILE_NAME_MAX = NAME_MAX - 30
# An IPv6 scope (after `%`) is an interface name (at most 15 bytes) or its index.
SCOPE_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,15}")
# An error line shows a value up to this many characters, and longer ones shortened.
SHOWN_MAX = 200
CANARY_METHODS = ("GET", "POST", "PUT")
SECONDS_PATTERN = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")
DEFAULT_SOCKET = "/var/run/dynamo/health.sock"
DEFAULT_STATE_FILE = "/var/run/dynamo/health.state.json"
# Paths the probe port serves besides the configurable ones.
READY_PATH = "/ready"
METRICS_PATH = "/metrics"
SELF_LIVE_PATH = "/sidecar/live"


class Mode(enum.Enum):
    WORKER = "worker"
    FRONTEND = "frontend"


class Kube(enum.Enum):
    ON = "on"
    OFF = "off"
    AUTO = "auto"


class LogFormat(enum.Enum):
    TEXT = "text"
    JSON = "json"


class LogLevel(enum.Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class SettingsError(ValueError):
    """A setting is invalid; `str()` is the one line shown to the user."""


@dataclass(frozen=True)
class Settings:
    port: int = 9090
    host: str = ""
    starting_status: Status = Status.NOTREADY
    health_path: str = "/health"
    live_path: str = "/live"
    required_endpoints: tuple[str, ...] = ()
    mode: Mode = Mode.WORKER
    frontend_shape: FrontendShape = FrontendShape.DOCUMENTED
    socket_path: Path = Path(DEFAULT_SOCKET)
    state_file: Path | None = Path(DEFAULT_STATE_FILE)
    notify_socket: Path | None = None
    watch_process: re.Pattern[str] | None = None
    drain_seconds: float = 5.0
    liveness: Liveness = Liveness.STARTED
    kube: Kube = Kube.AUTO
    log_format: LogFormat = LogFormat.TEXT
    log_level: LogLevel = LogLevel.INFO
    kube_api_url: str | None = None
    kube_service_account_dir: Path = DEFAULT_SERVICE_ACCOUNT_DIR
    kube_condition: str = DEFAULT_CONDITION
    # The pod and API server reporting talks to: set exactly when reporting runs.
    kube_cluster: InCluster | None = None
    # Why `auto` left reporting off inside a cluster (what it found missing).
    kube_off_reason: str = ""
    heartbeat_timeout: float | None = None
    upstream_status_url: str | None = None
    upstream_interval: float = 2.0
    upstream_misses: int = 3
    canary_url: str | None = None
    canary_method: str = "GET"
    canary_body: str | None = None
    canary_expect: tuple[tuple[int, int], ...] = ((200, 299),)
    canary_timeout: float = 3.0
    canary_wait: float = 10.0
    canary_endpoint: str | None = None
    canary_failures: int = 3
    # Whether the pod's environment names an API server; `auto` reporting follows it.
    in_cluster: bool = False


@dataclass(frozen=True)
class Option:
    """One setting: its variable, its flag and how its text becomes a value."""

    field: str
    variable: str
    flag: str
    help: str


E = TypeVar("E", bound=enum.Enum)

OPTIONS: tuple[Option, ...] = (
    Option("enabled", "DYN_SYSTEM_ENABLED", "", "must be true: the sidecar exists to serve probes"),
    Option("port", "DYN_SYSTEM_PORT", "--port", "TCP port of the probe server (default 9090)"),
    Option(
        "host",
        "DYN_SIDECAR_HOST",
        "--host",
        "address the probe server listens on (default: every interface, IPv6 and IPv4)",
    ),
    Option(
        "starting_status",
        "DYN_SYSTEM_STARTING_HEALTH_STATUS",
        "--starting-health-status",
        "status before the worker says anything: ready or notready (default notready)",
    ),
    Option(
        "health_path", "DYN_SYSTEM_HEALTH_PATH", "--health-path", "health path (default /health)"
    ),
    Option("live_path", "DYN_SYSTEM_LIVE_PATH", "--live-path", "live path (default /live)"),
    Option(
        "required_endpoints",
        "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS",
        "--endpoints",
        'endpoints that must be ready: ["generate"], [generate] or generate,clear_kv_blocks',
    ),
    Option("mode", "DYN_SIDECAR_MODE", "--mode", "worker (default) or frontend"),
    Option(
        "frontend_shape",
        "DYN_SIDECAR_FRONTEND_SHAPE",
        "--frontend-shape",
        "frontend mode's bodies: documented (default, Dynamo's documentation) or dynamo-1.6.1",
    ),
    Option(
        "socket_path",
        "DYN_SIDECAR_SOCKET",
        "--socket",
        f"path of the worker's Unix socket (default {DEFAULT_SOCKET})",
    ),
    Option(
        "notify_socket",
        "DYN_SIDECAR_NOTIFY_SOCKET",
        "--notify-socket",
        "path of an sd_notify datagram socket for workers that call sd_notify (default: off)",
    ),
    Option(
        "watch_process",
        "DYN_SIDECAR_WATCH_PROCESS",
        "--watch-process",
        "a regular expression matched against the worker's command line, in a pod with "
        "shareProcessNamespace (default: off)",
    ),
    Option(
        "state_file",
        "DYN_SIDECAR_STATE_FILE",
        "--state-file",
        "where the worker's state survives a sidecar restart, or off (default: beside the "
        "socket, NAME.state.json)",
    ),
    Option(
        "drain_seconds",
        "DYN_SIDECAR_DRAIN_SECONDS",
        "--drain-seconds",
        "after SIGTERM, seconds to keep answering (not ready) before exiting (default 5)",
    ),
    Option(
        "liveness",
        "DYN_SIDECAR_LIVENESS",
        "--liveness",
        "what the live path means: started (default) or health",
    ),
    Option(
        "kube",
        "DYN_SIDECAR_KUBE",
        "--kube",
        "Kubernetes events and pod condition: on, off or auto (default auto)",
    ),
    Option(
        "heartbeat_timeout",
        "DYN_SIDECAR_HEARTBEAT_TIMEOUT",
        "--heartbeat-timeout",
        "seconds of silence after the worker's first heartbeat before its life ends and the "
        "live path fails (default: off)",
    ),
    Option(
        "upstream_status_url",
        "DYN_SIDECAR_UPSTREAM_STATUS_URL",
        "--upstream-status-url",
        "mirror a Dynamo status server: its health URL, e.g. http://127.0.0.1:8081/health "
        "(default: off)",
    ),
    Option(
        "upstream_interval",
        "DYN_SIDECAR_UPSTREAM_INTERVAL",
        "--upstream-interval",
        "seconds between polls of the status server (default 2)",
    ),
    Option(
        "upstream_misses",
        "DYN_SIDECAR_UPSTREAM_MISSES",
        "--upstream-misses",
        "unanswered polls in a row before the worker counts as hung (default 3)",
    ),
    Option(
        "canary_url",
        "DYN_SIDECAR_CANARY_URL",
        "--canary-url",
        "send canary requests to this URL, e.g. http://127.0.0.1:8000/health (default: off)",
    ),
    Option(
        "canary_method",
        "DYN_SIDECAR_CANARY_METHOD",
        "--canary-method",
        "GET (default), POST or PUT",
    ),
    Option(
        "canary_body",
        "DYN_SIDECAR_CANARY_BODY",
        "--canary-body",
        "a JSON payload to send, such as a one-token completion (default: none)",
    ),
    Option(
        "canary_expect",
        "DYN_SIDECAR_CANARY_EXPECT",
        "--canary-expect",
        "status codes that pass, e.g. 200-299 (default) or 200,204",
    ),
    Option(
        "canary_timeout",
        "DYN_SIDECAR_CANARY_TIMEOUT",
        "--canary-timeout",
        "seconds for the whole answer, to the end of its body or stream (default 3)",
    ),
    Option(
        "canary_wait",
        "DYN_SIDECAR_CANARY_WAIT",
        "--canary-wait",
        "quiet seconds (no signal, no success) before the next canary (default 10)",
    ),
    Option(
        "canary_endpoint",
        "DYN_SIDECAR_CANARY_ENDPOINT",
        "--canary-endpoint",
        "the endpoint a failing canary holds notready (default: the first required one)",
    ),
    Option(
        "canary_failures",
        "DYN_SIDECAR_CANARY_FAILURES",
        "--canary-failures",
        "failed canaries in a row before acting (default 3)",
    ),
    Option(
        "kube_api_url",
        "DYN_SIDECAR_KUBE_API_URL",
        "--kube-api-url",
        "the API server (default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)",
    ),
    Option(
        "kube_service_account_dir",
        "DYN_SIDECAR_KUBE_SERVICE_ACCOUNT_DIR",
        "--kube-service-account-dir",
        f"the service account's token and ca.crt (default {DEFAULT_SERVICE_ACCOUNT_DIR})",
    ),
    Option(
        "kube_condition",
        "DYN_SIDECAR_KUBE_CONDITION",
        "--kube-condition",
        f"the pod condition the sidecar sets (default {DEFAULT_CONDITION})",
    ),
    Option("log_format", "DYN_SIDECAR_LOG_FORMAT", "--log-format", "text (default) or json"),
    Option(
        "log_level", "DYN_SIDECAR_LOG_LEVEL", "--log-level", "debug, info (default), warning, error"
    ),
)


def load(environ: Mapping[str, str], flags: Mapping[str, str | None] | None = None) -> Settings:
    """Build the settings: flags over variables over defaults; raise on the first bad one."""
    flags = flags or {}
    raw: dict[str, tuple[str, str]] = {}
    for option in OPTIONS:
        flag_value = flags.get(option.field)
        if flag_value is not None:
            raw[option.field] = (option.flag, flag_value)
        elif environ.get(option.variable, ""):
            raw[option.field] = (option.variable, environ[option.variable])
    values: dict[str, object] = {}
    for name, (source, text) in raw.items():
        values[name] = PARSERS[name](source, text)
    values.pop("enabled", None)
    if "state_file" not in values:
        socket_path = values.get("socket_path", Settings.socket_path)
        assert isinstance(socket_path, Path)
        values["state_file"] = socket_path.with_name(f"{socket_path.stem}.state.json")
    values["in_cluster"] = bool(environ.get("KUBERNETES_SERVICE_HOST"))
    required = values.get("required_endpoints")
    if values.get("canary_url") and "canary_endpoint" not in values and required:
        assert isinstance(required, tuple)
        values["canary_endpoint"] = required[0]
    settings = Settings(**values)  # type: ignore[arg-type]
    _check_paths(settings, raw)
    if settings.state_file is not None:
        problem = _state_file_problem(settings.state_file, settings.socket_path.parent)
        if problem is not None and "state_file" in raw:
            source, text = raw["state_file"]
            raise _invalid(source, text, problem)
        if problem is not None:
            # The default, beside the socket: no variable to name as the wrong one.
            raise SettingsError(
                f"the state file {shown(str(settings.state_file))} (by default beside the "
                f"socket) is unusable: {problem}; set DYN_SIDECAR_STATE_FILE to a file path, "
                "or off"
            )
    if settings.state_file == settings.socket_path:
        source, text = raw["state_file"]
        raise _invalid(source, text, "the state file must not be the worker's socket")
    if settings.notify_socket is not None and settings.notify_socket in (
        settings.socket_path,
        settings.state_file,
    ):
        source, text = raw["notify_socket"]
        raise _invalid(
            source,
            text,
            "the notify socket must differ from the worker's socket and the state file",
        )
    _check_active_checks(settings, raw)
    _check_frontend_shape(settings, raw)
    if settings.kube is not Kube.OFF:
        found = find_in_cluster(environ, settings.kube_service_account_dir, settings.kube_api_url)
        if settings.kube is Kube.ON and not found.complete:
            source, text = raw["kube"]
            raise SettingsError(_reshown(refusal(source, text, found), source, text, text))
        if found.complete:
            settings = dataclasses.replace(settings, kube_cluster=found)
        elif settings.in_cluster:
            settings = dataclasses.replace(settings, kube_off_reason=found.describe_missing())
    return settings


def shown(text: str) -> str:
    """A value as an error line shows it: quoted and escaped, and past `SHOWN_MAX`
    characters its beginning and end with its length."""
    if len(text) <= SHOWN_MAX:
        return repr(text)
    return f"{text[: SHOWN_MAX - 50]!r}...{text[-40:]!r} ({len(text)} characters)"


def _invalid(source: str, text: str, allowed: str) -> SettingsError:
    return SettingsError(f"{source}={shown(text)} is invalid: {allowed}")


def printable(text: str) -> str:
    """`text` with each character that does not print (a newline, a lone surrogate) escaped
    as Python writes it, so that it stays on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _reshown(line: str, source: str, named: str, text: str) -> str:
    """`line`, which names `source={named!r}` in full (kube's messages), showing `text`,
    and printable (the paths it names)."""
    return printable(line.replace(f"{source}={named!r}", f"{source}={shown(text)}", 1))


def _dynamo_text(text: str) -> str:
    """A text variable as Dynamo's configuration (figment) reads it: stripped, and a
    double-quoted string unquoted, its escapes decoded."""
    value = text.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        if isinstance(decoded, str):
            return decoded
    return value


def _parse_enabled(source: str, text: str) -> bool:
    value = text.strip()
    if value == "false":
        raise SettingsError(
            f"{source}={shown(text)} turns the probe server off, and a sidecar that serves no "
            "probes is a misconfiguration: set it to true or unset it"
        )
    if value != "true":
        raise _invalid(source, text, "expected true, in lowercase as Dynamo reads it")
    return True


def _parse_port(source: str, text: str) -> int:
    """Dynamo's integer: an optional sign, decimal digits (leading zeros too), whitespace
    around. A negative port (Dynamo's off) and 0 (any free port) serve no probe the kubelet
    can find."""
    match = re.fullmatch(r"([+-]?)0*([0-9]+)", text.strip())
    if match is None:
        raise _invalid(source, text, "expected a port from 1 to 65535")
    sign, digits = match.groups()
    if sign == "-" and digits != "0":
        raise SettingsError(
            f"{source}={shown(text)} turns the probe server off, and a sidecar that serves no "
            "probes is a misconfiguration: use a port from 1 to 65535"
        )
    if digits == "0":
        raise SettingsError(
            f"{source}={shown(text)} asks for any free port, which no probe can find: use a "
            "port from 1 to 65535"
        )
    if len(digits) > 5 or int(digits) > 65535:
        raise _invalid(source, text, "expected a port from 1 to 65535")
    return int(digits)


def _parse_host(source: str, text: str) -> str:
    value = text.strip()
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        address = None
    scope = getattr(address, "scope_id", None)
    if address is None or (scope is not None and not SCOPE_PATTERN.fullmatch(scope)):
        raise _invalid(source, text, "expected an IP address, such as 0.0.0.0, :: or 127.0.0.1")
    return str(address)


def _parse_path(source: str, text: str) -> str:
    value = _dynamo_text(text)
    if not PATH_PATTERN.fullmatch(value) or re.search(r"/[:*]", value):
        raise _invalid(source, text, f"expected a URL path that starts with / and has {PATH_RULE}")
    return value


def _parse_status(source: str, text: str) -> Status:
    try:
        return Status(_dynamo_text(text))
    except ValueError:
        raise _invalid(
            source, text, "expected ready or notready, in lowercase as Dynamo reads it"
        ) from None


def _parse_endpoint_list(source: str, text: str) -> tuple[str, ...]:
    value = text.strip()
    items: list[object]
    if value.startswith("[") and value.endswith("]"):
        try:
            decoded = json.loads(value)
        except (ValueError, RecursionError):
            decoded = None
        if isinstance(decoded, list) and all(isinstance(item, str) for item in decoded):
            items = decoded
        else:
            # `export X="["generate"]"` leaves `[generate]`: the shell ate the quotes.
            items = [part.strip().strip("'\"") for part in value[1:-1].split(",")]
            if items == [""]:
                items = []
    else:
        items = [part.strip() for part in value.split(",")]
    names: list[str] = []
    for item in items:
        if not isinstance(item, str) or not NAME_PATTERN.fullmatch(item):
            raise _invalid(
                source,
                text,
                f"endpoint names are {NAME_RULE}, given as "
                '["generate"], [generate] or generate,clear_kv_blocks',
            )
        names.append(item)
    unique = tuple(dict.fromkeys(names))
    if len(unique) > MAX_ENDPOINTS:
        raise _invalid(source, text, f"the sidecar keeps at most {MAX_ENDPOINTS} endpoints")
    return unique


def _last_name(text: str) -> str:
    """The path's last name as written (pathlib drops a last `.`)."""
    return text.rpartition("/")[2]


def _parse_socket(source: str, text: str) -> Path:
    name = _last_name(text)
    if "\0" in text or text.endswith("/") or not text.startswith("/") or name in (".", ".."):
        raise _invalid(source, text, "expected an absolute file path for the Unix socket")
    if len(os.fsencode(text)) > SUN_PATH_MAX:
        raise _invalid(source, text, f"a Unix socket path is at most {SUN_PATH_MAX} bytes")
    return Path(text)


def _parse_pattern(source: str, text: str) -> re.Pattern[str]:
    if not text.strip():
        raise _invalid(source, text, "expected a regular expression, such as ^python3? -m dynamo")
    try:
        # A warning (a possible nested set) would be a second line on stderr.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return re.compile(text)
    except re.error as exc:
        reason = str(exc)
    except RecursionError:
        reason = "it is nested too deeply"
    except OverflowError as exc:  # a repetition count over 2**32
        reason = str(exc)
    if len(reason) > SHOWN_MAX:  # a group name it quotes
        reason = reason[:SHOWN_MAX] + "..."
    raise _invalid(source, text, f"expected a regular expression ({printable(reason)})")


def _parse_state_file(source: str, text: str) -> Path | None:
    if text.strip().lower() == "off":
        return None
    name = _last_name(text)
    if "\0" in text or text.endswith("/") or not text.startswith("/") or name in (".", ".."):
        raise _invalid(source, text, "expected an absolute file path, or off")
    problem = _length_problem(text, spare=NAME_MAX - STATE_FILE_NAME_MAX)
    if problem is None and len(os.fsencode(name)) > STATE_FILE_NAME_MAX:
        problem = f"the file's name is at most {STATE_FILE_NAME_MAX} bytes, leaving room for its "
        problem += "temporary copy beside it"
    if problem is not None:
        raise _invalid(source, text, problem)
    return Path(text)


def _length_problem(text: str, spare: int) -> str | None:
    """Why the system could never look the path up (ENAMETOOLONG), or None; `spare` bytes
    stay free for the longer path the sidecar makes from it."""
    data = os.fsencode(text)
    if len(data) + spare > PATH_MAX:
        return f"a path is at most {PATH_MAX - spare} bytes"
    if any(len(name) > NAME_MAX for name in data.split(b"/")):
        return f"each name in a path is at most {NAME_MAX} bytes"
    return None


def _state_file_problem(path: Path, socket_directory: Path) -> str | None:
    """Why the sidecar could never write the state file there, or None. The socket's
    directory is made at start; any other must be there already."""
    try:
        if path.is_dir():
            return "it is a directory; expected a file path"
        if path.parent != socket_directory and not path.parent.is_dir():
            return f"its directory {shown(str(path.parent))} is not there, or is not a directory"
    except OSError as exc:
        return f"it cannot be looked up ({exc.strerror})"
    return None


def _parse_seconds(source: str, text: str) -> float:
    value = text.strip()
    if not SECONDS_PATTERN.fullmatch(value) or float(value) > 86400:
        raise _invalid(
            source, text, "expected a number of seconds from 0 to 86400, such as 5 or 2.5"
        )
    return float(value)


def _parse_timeout(source: str, text: str) -> float:
    value = text.strip()
    if not SECONDS_PATTERN.fullmatch(value) or not 0 < float(value) <= 86400:
        raise _invalid(
            source, text, "expected a number of seconds above 0 and up to 86400, such as 30 or 2.5"
        )
    return float(value)


def _parse_name(source: str, text: str) -> str:
    if not NAME_PATTERN.fullmatch(text):
        raise _invalid(source, text, f"endpoint names are {NAME_RULE}")
    return text


def _parse_url(source: str, text: str) -> str:
    value = text.strip()
    try:
        parts = urllib.parse.urlsplit(value)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:  # a bracket out of place, or a port that is not a number
        raise _invalid(source, text, "expected an http:// or https:// URL with a host") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not port_ok
        or not _requestable(value)
    ):
        raise _invalid(source, text, "expected an http:// or https:// URL with a host")
    return value


def _requestable(url: str) -> bool:
    """Whether httpx, which sends the active checks' requests, can build one for `url`: its
    host must be a name (IDNA) or an address, and the rest encodable (no bytes that were not
    UTF-8). Imported here: only a sidecar with an active check loads it."""
    import httpx

    try:
        httpx.Request("GET", url)
    except (httpx.InvalidURL, ValueError):  # ValueError: IDNAError and UnicodeEncodeError
        return False
    return True


def _parse_count(source: str, text: str) -> int:
    value = text.strip()
    if not re.fullmatch(r"[0-9]{1,4}", value) or not 1 <= int(value) <= 1000:
        raise _invalid(source, text, "expected a whole number from 1 to 1000")
    return int(value)


def _parse_method(source: str, text: str) -> str:
    value = text.strip().upper()
    if value not in CANARY_METHODS:
        raise _invalid(
            source, text, f"expected {', '.join(CANARY_METHODS[:-1])} or {CANARY_METHODS[-1]}"
        )
    return value


def _parse_json(source: str, text: str) -> str:
    try:
        json.loads(text, parse_constant=_no_constant)
        text.encode()
    except UnicodeEncodeError:
        raise _invalid(source, text, "expected JSON in UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise _invalid(source, text, f"expected JSON ({exc})") from None
    return text


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parse_expect(source: str, text: str) -> tuple[tuple[int, int], ...]:
    ranges = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*([1-5][0-9]{2})\s*(?:-\s*([1-5][0-9]{2})\s*)?", part)
        if not match or int(match[2] or match[1]) < int(match[1]):
            raise _invalid(
                source, text, "expected status codes from 100 to 599, such as 200-299 or 200,204"
            )
        ranges.append((int(match[1]), int(match[2] or match[1])))
    return tuple(ranges)


def _checked(check: Callable[[str, str], str | None]) -> Callable[[str, str], str]:
    """A parser from one of `kube`'s validators, which return the error line or None."""

    def parse(source: str, text: str) -> str:
        value = text.strip()
        error = check(source, value)
        if error is not None:
            raise SettingsError(_reshown(error, source, value, text))
        return value

    return parse


def _enum_parser(kind: type[E]) -> Callable[[str, str], E]:
    allowed = " or ".join(", ".join(m.value for m in kind).rsplit(", ", 1))

    def parse(source: str, text: str) -> E:
        try:
            return kind(text.strip().lower())
        except ValueError:
            raise _invalid(source, text, f"expected {allowed}") from None

    return parse


def _parse_service_account_dir(source: str, text: str) -> Path:
    value = _checked(check_service_account_dir)(source, text)
    problem = _length_problem(value, spare=len("/ca.crt"))
    if problem is not None:
        raise _invalid(source, text, problem)
    return Path(value)


PARSERS: Mapping[str, Callable[[str, str], object]] = {
    "enabled": _parse_enabled,
    "port": _parse_port,
    "host": _parse_host,
    "starting_status": _parse_status,
    "health_path": _parse_path,
    "live_path": _parse_path,
    "required_endpoints": _parse_endpoint_list,
    "mode": _enum_parser(Mode),
    "frontend_shape": _enum_parser(FrontendShape),
    "socket_path": _parse_socket,
    "notify_socket": _parse_socket,
    "watch_process": _parse_pattern,
    "state_file": _parse_state_file,
    "drain_seconds": _parse_seconds,
    "liveness": _enum_parser(Liveness),
    "kube": _enum_parser(Kube),
    "heartbeat_timeout": _parse_timeout,
    "upstream_status_url": _parse_url,
    "upstream_interval": _parse_timeout,
    "upstream_misses": _parse_count,
    "canary_url": _parse_url,
    "canary_method": _parse_method,
    "canary_body": _parse_json,
    "canary_expect": _parse_expect,
    "canary_timeout": _parse_timeout,
    "canary_wait": _parse_seconds,
    "canary_endpoint": _parse_name,
    "canary_failures": _parse_count,
    "kube_api_url": lambda source, text: _checked(check_api_url)(source, text).rstrip("/"),
    "kube_service_account_dir": _parse_service_account_dir,
    "kube_condition": _checked(check_condition_type),
    "log_format": _enum_parser(LogFormat),
    "log_level": _enum_parser(LogLevel),
}


def _check_frontend_shape(settings: Settings, raw: Mapping[str, tuple[str, str]]) -> None:
    """A shape set for a worker would change nothing: say so rather than ignore it."""
    if "frontend_shape" in raw and settings.mode is not Mode.FRONTEND:
        source, text = raw["frontend_shape"]
        raise _invalid(source, text, "the frontend shape needs DYN_SIDECAR_MODE=frontend")


def _check_active_checks(settings: Settings, raw: Mapping[str, tuple[str, str]]) -> None:
    """Canaries only make sense for a worker, and need an endpoint (a mirror serves both
    modes: a worker's status server, or a frontend's health path)."""
    if settings.canary_url is not None and settings.mode is Mode.FRONTEND:
        source, text = raw["canary_url"]
        raise _invalid(source, text, "canaries need DYN_SIDECAR_MODE=worker")
    if settings.canary_url is not None and settings.canary_endpoint is None:
        source, text = raw["canary_url"]
        raise _invalid(
            source,
            text,
            "a canary needs an endpoint to hold: set DYN_SIDECAR_CANARY_ENDPOINT or "
            "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS",
        )
    if settings.canary_body is not None and settings.canary_method == "GET":
        source, text = raw["canary_body"]
        raise _invalid(source, text, "a canary body needs DYN_SIDECAR_CANARY_METHOD=POST or PUT")


def _check_paths(settings: Settings, raw: Mapping[str, tuple[str, str]]) -> None:
    """The live path must not shadow another path the probe port serves."""
    reserved = {METRICS_PATH, SELF_LIVE_PATH}
    for field in ("health_path", "live_path"):
        path = getattr(settings, field)
        if path in reserved:
            source, text = raw[field]
            raise _invalid(
                source, text, f"{path} is served by the sidecar itself; choose another path"
            )
    if settings.live_path in (settings.health_path, READY_PATH):
        culprit = "live_path" if "live_path" in raw else "health_path"
        source, text = raw[culprit]
        raise _invalid(
            source, text, f"the live path must differ from the health path and from {READY_PATH}"
        )
