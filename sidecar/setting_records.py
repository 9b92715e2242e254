"""Every setting of `serve`, declared once: its variable, flag, metavar, parser, default and help.

`serve`'s options, its `--help`, the parsing in `sidecar.settings.load` and the defaults of
`Settings` are all derived from `OPTIONS`, and tests/test_settings_table.py holds the README's
table of settings to it, so none of them can drift from another (docs/protocol.md sections
1.2 and 2 list the settings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sidecar.core.records import Liveness, Status
from sidecar.core.verdict import FrontendShape
from sidecar.kube.rules import (
    DEFAULT_CONDITION,
    DEFAULT_SERVICE_ACCOUNT_DIR,
    check_condition_type,
)
from sidecar.setting_kinds import (
    Kube,
    LogFormat,
    LogLevel,
    Mode,
    Option,
    choices,
    described,
    literal,
)
from sidecar.setting_parsers import (
    CANARY_METHODS,
    checked,
    enum_parser,
    parse_api_url,
    parse_count,
    parse_enabled,
    parse_endpoint_list,
    parse_expect,
    parse_host,
    parse_json,
    parse_method,
    parse_name,
    parse_path,
    parse_pattern,
    parse_port,
    parse_seconds,
    parse_service_account_dir,
    parse_socket,
    parse_state_file,
    parse_status,
    parse_timeout,
    parse_url,
)

DEFAULT_SOCKET = "/var/run/dynamo/health.sock"
DEFAULT_STATE_FILE = "/var/run/dynamo/health.state.json"

# In the order `--help` lists them.
ENABLED = literal(
    "enabled",
    "DYN_SYSTEM_ENABLED",
    "",
    metavar="",
    parse=parse_enabled,
    default="true",
    help="must be true or unset",
)
PORT = literal(
    "port",
    "DYN_SYSTEM_PORT",
    "--port",
    metavar="PORT",
    parse=parse_port,
    default="9090",
    help="TCP port of the probe server",
)
HOST = described(
    "host",
    "DYN_SIDECAR_HOST",
    "--host",
    metavar="ADDRESS",
    parse=parse_host,
    default="",
    meaning="every interface, IPv6 and IPv4",
    help="address the probe server listens on",
)
STARTING_STATUS = literal(
    "starting_status",
    "DYN_SYSTEM_STARTING_HEALTH_STATUS",
    "--starting-health-status",
    metavar=choices(Status),
    parse=parse_status,
    default="notready",
    help="status before the worker says anything: ready or notready",
)
HEALTH_PATH = literal(
    "health_path",
    "DYN_SYSTEM_HEALTH_PATH",
    "--health-path",
    metavar="PATH",
    parse=parse_path,
    default="/health",
    help="health path",
)
LIVE_PATH = literal(
    "live_path",
    "DYN_SYSTEM_LIVE_PATH",
    "--live-path",
    metavar="PATH",
    parse=parse_path,
    default="/live",
    help="live path",
)
REQUIRED_ENDPOINTS: Option[tuple[str, ...]] = described(
    "required_endpoints",
    "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS",
    "--endpoints",
    metavar="NAME,...",
    parse=parse_endpoint_list,
    default=(),
    meaning="none",
    help='endpoints that must be ready: ["generate"], [generate] or generate,clear_kv_blocks',
)
MODE = literal(
    "mode",
    "DYN_SIDECAR_MODE",
    "--mode",
    metavar=choices(Mode),
    parse=enum_parser(Mode),
    default="worker",
    help="worker or frontend",
)
FRONTEND_SHAPE = literal(
    "frontend_shape",
    "DYN_SIDECAR_FRONTEND_SHAPE",
    "--frontend-shape",
    metavar=choices(FrontendShape),
    parse=enum_parser(FrontendShape),
    default="documented",
    help="frontend mode's bodies: documented (Dynamo's documentation) or dynamo-1.6.1",
)
SOCKET_PATH = literal(
    "socket_path",
    "DYN_SIDECAR_SOCKET",
    "--socket",
    metavar="PATH",
    parse=parse_socket,
    default=DEFAULT_SOCKET,
    help="path of the worker's Unix socket",
)
NOTIFY_SOCKET = described(
    "notify_socket",
    "DYN_SIDECAR_NOTIFY_SOCKET",
    "--notify-socket",
    metavar="PATH",
    parse=parse_socket,
    default=None,
    meaning="off",
    help="path of an sd_notify datagram socket for workers that call sd_notify",
)
WATCH_PROCESS = described(
    "watch_process",
    "DYN_SIDECAR_WATCH_PROCESS",
    "--watch-process",
    metavar="REGEX",
    parse=parse_pattern,
    default=None,
    meaning="off",
    help="a regular expression matched against the worker's command line, in a pod with "
    "shareProcessNamespace",
)
STATE_FILE: Option[Path | None] = described(
    "state_file",
    "DYN_SIDECAR_STATE_FILE",
    "--state-file",
    metavar="PATH",
    parse=parse_state_file,
    default=Path(DEFAULT_STATE_FILE),
    meaning="beside the socket, NAME.state.json",
    help="where the worker's state survives a sidecar restart, or off",
)
DRAIN_SECONDS = literal(
    "drain_seconds",
    "DYN_SIDECAR_DRAIN_SECONDS",
    "--drain-seconds",
    metavar="SECONDS",
    parse=parse_seconds,
    default="5",
    help="after SIGTERM, seconds to keep answering (not ready) before exiting",
)
LIVENESS = literal(
    "liveness",
    "DYN_SIDECAR_LIVENESS",
    "--liveness",
    metavar=choices(Liveness),
    parse=enum_parser(Liveness),
    default="started",
    help="what the live path means: started or health",
)
KUBE = literal(
    "kube",
    "DYN_SIDECAR_KUBE",
    "--kube",
    metavar=choices(Kube),
    parse=enum_parser(Kube),
    default="auto",
    help="Kubernetes events and pod condition: on, off or auto",
)
HEARTBEAT_TIMEOUT = described(
    "heartbeat_timeout",
    "DYN_SIDECAR_HEARTBEAT_TIMEOUT",
    "--heartbeat-timeout",
    metavar="SECONDS",
    parse=parse_timeout,
    default=None,
    meaning="off",
    help="seconds of silence after the worker's first heartbeat before its life ends and the "
    "live path fails",
)
UPSTREAM_STATUS_URL = described(
    "upstream_status_url",
    "DYN_SIDECAR_UPSTREAM_STATUS_URL",
    "--upstream-status-url",
    metavar="URL",
    parse=parse_url,
    default=None,
    meaning="off",
    help="mirror a Dynamo status server: its health URL, e.g. http://127.0.0.1:8081/health",
)
UPSTREAM_INTERVAL = literal(
    "upstream_interval",
    "DYN_SIDECAR_UPSTREAM_INTERVAL",
    "--upstream-interval",
    metavar="SECONDS",
    parse=parse_timeout,
    default="2",
    help="seconds between polls of the status server",
)
UPSTREAM_MISSES = literal(
    "upstream_misses",
    "DYN_SIDECAR_UPSTREAM_MISSES",
    "--upstream-misses",
    metavar="COUNT",
    parse=parse_count,
    default="3",
    help="unanswered polls in a row before the worker counts as hung",
)
CANARY_URL = described(
    "canary_url",
    "DYN_SIDECAR_CANARY_URL",
    "--canary-url",
    metavar="URL",
    parse=parse_url,
    default=None,
    meaning="off",
    help="send canary requests to this URL, e.g. http://127.0.0.1:8000/health",
)
CANARY_METHOD = literal(
    "canary_method",
    "DYN_SIDECAR_CANARY_METHOD",
    "--canary-method",
    metavar="{" + ",".join(CANARY_METHODS) + "}",
    parse=parse_method,
    default="GET",
    help="GET, POST or PUT",
)
CANARY_BODY = described(
    "canary_body",
    "DYN_SIDECAR_CANARY_BODY",
    "--canary-body",
    metavar="JSON",
    parse=parse_json,
    default=None,
    meaning="none",
    help="a JSON payload to send, such as a one-token completion",
)
CANARY_EXPECT = literal(
    "canary_expect",
    "DYN_SIDECAR_CANARY_EXPECT",
    "--canary-expect",
    metavar="CODES",
    parse=parse_expect,
    default="200-299",
    help="status codes that pass, e.g. 200-299 or 200,204",
)
CANARY_TIMEOUT = literal(
    "canary_timeout",
    "DYN_SIDECAR_CANARY_TIMEOUT",
    "--canary-timeout",
    metavar="SECONDS",
    parse=parse_timeout,
    default="3",
    help="seconds for the whole answer, to the end of its body or stream",
)
CANARY_WAIT = literal(
    "canary_wait",
    "DYN_SIDECAR_CANARY_WAIT",
    "--canary-wait",
    metavar="SECONDS",
    parse=parse_seconds,
    default="10",
    help="quiet seconds (no signal, no success) before the next canary",
)
CANARY_ENDPOINT = described(
    "canary_endpoint",
    "DYN_SIDECAR_CANARY_ENDPOINT",
    "--canary-endpoint",
    metavar="NAME",
    parse=parse_name,
    default=None,
    meaning="the first required endpoint",
    help="the endpoint a failing canary holds notready",
)
CANARY_FAILURES = literal(
    "canary_failures",
    "DYN_SIDECAR_CANARY_FAILURES",
    "--canary-failures",
    metavar="COUNT",
    parse=parse_count,
    default="3",
    help="failed canaries in a row before acting",
)
KUBE_API_URL = described(
    "kube_api_url",
    "DYN_SIDECAR_KUBE_API_URL",
    "--kube-api-url",
    metavar="URL",
    parse=parse_api_url,
    default=None,
    meaning="https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT",
    help="the API server",
)
KUBE_SERVICE_ACCOUNT_DIR = literal(
    "kube_service_account_dir",
    "DYN_SIDECAR_KUBE_SERVICE_ACCOUNT_DIR",
    "--kube-service-account-dir",
    metavar="DIR",
    parse=parse_service_account_dir,
    default=str(DEFAULT_SERVICE_ACCOUNT_DIR),
    help="the service account's token and ca.crt",
)
KUBE_CONDITION = literal(
    "kube_condition",
    "DYN_SIDECAR_KUBE_CONDITION",
    "--kube-condition",
    metavar="TYPE",
    parse=checked(check_condition_type),
    default=DEFAULT_CONDITION,
    help="the pod condition the sidecar sets",
)
LOG_FORMAT = literal(
    "log_format",
    "DYN_SIDECAR_LOG_FORMAT",
    "--log-format",
    metavar=choices(LogFormat),
    parse=enum_parser(LogFormat),
    default="text",
    help="text or json",
)
LOG_LEVEL = literal(
    "log_level",
    "DYN_SIDECAR_LOG_LEVEL",
    "--log-level",
    metavar=choices(LogLevel),
    parse=enum_parser(LogLevel),
    default="info",
    help="debug, info, warning, error",
)

# Every record above, in the order declared, which is the order of `--help`: collected, not
# listed again, so that no record can be declared and left out. Any: each value has its own
# type, which `Settings` declares field by field.
OPTIONS: tuple[Option[Any], ...] = tuple(
    value for value in list(globals().values()) if isinstance(value, Option)
)
