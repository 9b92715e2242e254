"""One frozen `Settings` built once from the environment and the `serve` flags.

Every setting has a variable (what the chart sets) and a flag (what a person types); the
flag wins, and an empty variable counts as unset, as in Dynamo (a variable of spaces is a
value, as in Dynamo). Each value is checked here, at start, and a bad one raises
`SettingsError` carrying the single line the user sees: the variable or flag, the value
(shortened past `SHOWN_MAX` characters), and what is allowed. Nothing starts
half-configured (docs/protocol.md section 1.2).

What each setting is lives in `sidecar.setting_records` and how its text is read in
`sidecar.setting_parsers`; this module adds what concerns several settings at once (the
defaults worked out at start, the clashes between values) and is the one others import.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sidecar.core.records import Liveness, Status
from sidecar.core.verdict import FrontendShape
from sidecar.setting_kinds import Kube, LogFormat, LogLevel, Mode
from sidecar.setting_parsers import (
    NAME_PATTERN,
    NAME_RULE,
    SHOWN_MAX,
    STATE_FILE_NAME_MAX,
    SUN_PATH_MAX,
    SettingsError,
    invalid,
    printable,
    shown,
)
from sidecar.setting_records import (
    CANARY_BODY,
    CANARY_ENDPOINT,
    CANARY_EXPECT,
    CANARY_FAILURES,
    CANARY_METHOD,
    CANARY_TIMEOUT,
    CANARY_URL,
    CANARY_WAIT,
    DEFAULT_SOCKET,
    DEFAULT_STATE_FILE,
    DRAIN_SECONDS,
    FRONTEND_SHAPE,
    HEALTH_PATH,
    HEARTBEAT_TIMEOUT,
    HOST,
    KUBE,
    KUBE_API_URL,
    KUBE_CONDITION,
    KUBE_SERVICE_ACCOUNT_DIR,
    LIVE_PATH,
    LIVENESS,
    LOG_FORMAT,
    LOG_LEVEL,
    MODE,
    NOTIFY_SOCKET,
    OPTIONS,
    PORT,
    REQUIRED_ENDPOINTS,
    SOCKET_PATH,
    STARTING_STATUS,
    STATE_FILE,
    UPSTREAM_INTERVAL,
    UPSTREAM_MISSES,
    UPSTREAM_STATUS_URL,
    WATCH_PROCESS,
)

__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_STATE_FILE",
    "METRICS_PATH",
    "NAME_PATTERN",
    "NAME_RULE",
    "OPTIONS",
    "READY_PATH",
    "SELF_LIVE_PATH",
    "SHOWN_MAX",
    "STATE_FILE_NAME_MAX",
    "SUN_PATH_MAX",
    "Kube",
    "LogFormat",
    "LogLevel",
    "Mode",
    "Settings",
    "SettingsError",
    "load",
    "printable",
    "shown",
]

# Paths the probe port serves besides the configurable ones.
READY_PATH = "/ready"
METRICS_PATH = "/metrics"
SELF_LIVE_PATH = "/sidecar/live"

# Where each value came from, as an error line names it, and its text: {field: (source, text)}.
Raw = Mapping[str, tuple[str, str]]


@dataclass(frozen=True)
class Settings:
    """The settings `serve` runs with. Each field is declared here for its type; its default
    is its record's, so `Settings()` is what `load` gives for an empty environment."""

    port: int = PORT.default
    host: str = HOST.default
    starting_status: Status = STARTING_STATUS.default
    health_path: str = HEALTH_PATH.default
    live_path: str = LIVE_PATH.default
    required_endpoints: tuple[str, ...] = REQUIRED_ENDPOINTS.default
    mode: Mode = MODE.default
    frontend_shape: FrontendShape = FRONTEND_SHAPE.default
    socket_path: Path = SOCKET_PATH.default
    state_file: Path | None = STATE_FILE.default
    notify_socket: Path | None = NOTIFY_SOCKET.default
    watch_process: re.Pattern[str] | None = WATCH_PROCESS.default
    drain_seconds: float = DRAIN_SECONDS.default
    liveness: Liveness = LIVENESS.default
    kube: Kube = KUBE.default
    log_format: LogFormat = LOG_FORMAT.default
    log_level: LogLevel = LOG_LEVEL.default
    kube_api_url: str | None = KUBE_API_URL.default
    kube_service_account_dir: Path = KUBE_SERVICE_ACCOUNT_DIR.default
    kube_condition: str = KUBE_CONDITION.default
    heartbeat_timeout: float | None = HEARTBEAT_TIMEOUT.default
    upstream_status_url: str | None = UPSTREAM_STATUS_URL.default
    upstream_interval: float = UPSTREAM_INTERVAL.default
    upstream_misses: int = UPSTREAM_MISSES.default
    canary_url: str | None = CANARY_URL.default
    canary_method: str = CANARY_METHOD.default
    canary_body: str | None = CANARY_BODY.default
    canary_expect: tuple[tuple[int, int], ...] = CANARY_EXPECT.default
    canary_timeout: float = CANARY_TIMEOUT.default
    canary_wait: float = CANARY_WAIT.default
    canary_endpoint: str | None = CANARY_ENDPOINT.default
    canary_failures: int = CANARY_FAILURES.default
    # Where each setting given was given, and its text: a check made at startup, outside
    # `load` (Kubernetes discovery), blames it in the same words.
    given: Raw = dataclasses.field(default_factory=dict, compare=False)


def load(environ: Mapping[str, str], flags: Mapping[str, str | None] | None = None) -> Settings:
    """Build the settings: flags over variables over defaults; raise on the first bad one."""
    raw = _given(environ, flags or {})
    values = {o.field: o.parse(*raw[o.field]) for o in OPTIONS if o.field in raw}
    # DYN_SYSTEM_ENABLED can only be true once parsed: nothing is left to keep.
    values.pop("enabled", None)
    _work_out_defaults(values)
    settings = Settings(**values, given=raw)
    _check_paths(settings, raw)
    _check_files(settings, raw)
    _check_active_checks(settings, raw)
    _check_frontend_shape(settings, raw)
    return settings


def _given(
    environ: Mapping[str, str], flags: Mapping[str, str | None]
) -> dict[str, tuple[str, str]]:
    """The text each setting was given, and where: its flag wins over its variable, and an
    empty variable counts as unset (an empty flag is a value, and refused)."""
    raw: dict[str, tuple[str, str]] = {}
    for option in OPTIONS:
        flag_value = flags.get(option.field)
        if flag_value is not None:
            raw[option.field] = (option.flag, flag_value)
        elif environ.get(option.variable, ""):
            raw[option.field] = (option.variable, environ[option.variable])
    return raw


def _work_out_defaults(values: dict[str, object]) -> None:
    """The defaults that depend on other settings (docs/protocol.md section 2.2): the state
    file beside the socket, and the canary's endpoint the first required one."""
    if "state_file" not in values:
        socket_path = values.get("socket_path", Settings.socket_path)
        assert isinstance(socket_path, Path)
        values["state_file"] = socket_path.with_name(f"{socket_path.stem}.state.json")
    required = values.get("required_endpoints")
    if values.get("canary_url") and "canary_endpoint" not in values and required:
        assert isinstance(required, tuple)
        values["canary_endpoint"] = required[0]


def _check_files(settings: Settings, raw: Raw) -> None:
    """The state file must be writable where it is, and no two of the sidecar's files the
    same (docs/protocol.md section 2.2)."""
    if settings.state_file is not None:
        problem = _state_file_problem(settings.state_file, settings.socket_path.parent)
        if problem is not None and "state_file" in raw:
            source, text = raw["state_file"]
            raise invalid(source, text, problem)
        if problem is not None:
            # The default, beside the socket: no variable to name as the wrong one.
            raise SettingsError(
                f"the state file {shown(str(settings.state_file))} (by default beside the "
                f"socket) is unusable: {problem}; set DYN_SIDECAR_STATE_FILE to a file path, "
                "or off"
            )
    if settings.state_file == settings.socket_path:
        source, text = raw["state_file"]
        raise invalid(source, text, "the state file must not be the worker's socket")
    if settings.notify_socket is not None and settings.notify_socket in (
        settings.socket_path,
        settings.state_file,
    ):
        source, text = raw["notify_socket"]
        raise invalid(
            source,
            text,
            "the notify socket must differ from the worker's socket and the state file",
        )


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


def _check_frontend_shape(settings: Settings, raw: Raw) -> None:
    """A shape set for a worker would change nothing: say so rather than ignore it."""
    if "frontend_shape" in raw and settings.mode is not Mode.FRONTEND:
        source, text = raw["frontend_shape"]
        raise invalid(source, text, "the frontend shape needs DYN_SIDECAR_MODE=frontend")


def _check_active_checks(settings: Settings, raw: Raw) -> None:
    """Canaries only make sense for a worker, and need an endpoint (a mirror serves both
    modes: a worker's status server, or a frontend's health path)."""
    if settings.canary_url is not None and settings.mode is Mode.FRONTEND:
        source, text = raw["canary_url"]
        raise invalid(source, text, "canaries need DYN_SIDECAR_MODE=worker")
    if settings.canary_url is not None and settings.canary_endpoint is None:
        source, text = raw["canary_url"]
        raise invalid(
            source,
            text,
            "a canary needs an endpoint to hold: set DYN_SIDECAR_CANARY_ENDPOINT or "
            "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS",
        )
    if settings.canary_body is not None and settings.canary_method == "GET":
        source, text = raw["canary_body"]
        raise invalid(source, text, "a canary body needs DYN_SIDECAR_CANARY_METHOD=POST or PUT")


def _check_paths(settings: Settings, raw: Raw) -> None:
    """The live path must not shadow another path the probe port serves."""
    reserved = {METRICS_PATH, SELF_LIVE_PATH}
    for field in ("health_path", "live_path"):
        path = getattr(settings, field)
        if path in reserved:
            source, text = raw[field]
            raise invalid(
                source, text, f"{path} is served by the sidecar itself; choose another path"
            )
    if settings.live_path in (settings.health_path, READY_PATH):
        culprit = "live_path" if "live_path" in raw else "health_path"
        source, text = raw[culprit]
        raise invalid(
            source, text, f"the live path must differ from the health path and from {READY_PATH}"
        )
