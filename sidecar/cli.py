"""The `dynamo-health-sidecar` command: thin wiring from the command line to the package."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from sidecar import __version__
from sidecar.kube.cluster import discover
from sidecar.setting_kinds import Option
from sidecar.settings import OPTIONS, SettingsError, load, printable

PROG = "dynamo-health-sidecar"
EXIT_USAGE = 2

DESCRIPTION = """\
Answers the kubelet's startup, liveness and readiness probes for an LLM inference worker
in the same pod, speaking the protocol of NVIDIA Dynamo's system status server.

The worker tells the sidecar which of its endpoints it serves over a Unix socket:
  curl --unix-socket /var/run/dynamo/health.sock -X POST http://sidecar/v1/endpoints/generate/ready
and the kubelet probes the health, live and /ready paths on the probe port."""

SERVE_EPILOG = """\
Every flag has an environment variable (in brackets); the flag wins, and an empty
variable counts as unset. An invalid value stops the sidecar with exit code 2 and one
line that names it. {flagless}

serves:
  probe port     the health path, the live path, /ready, /metrics and /sidecar/live
  worker socket  PUT /v1/endpoints/NAME, POST /v1/endpoints/NAME/ready (or /notready),
                 POST /v1/instances, DELETE /v1/instances/ID, POST /v1/heartbeat,
                 POST /v1/session, GET /v1/status

example:
  dynamo-health-sidecar serve --port 9090 --endpoints generate --socket /tmp/health.sock"""


SIGNAL_EPILOG = """\
exit codes: 0 done, 1 no sidecar answers on the socket, 2 a usage error or the sidecar
refused the request (the line on stderr says why).

examples:
  dynamo-health-sidecar signal ready generate
  dynamo-health-sidecar signal heartbeat --socket /tmp/health.sock"""

STATUS_EPILOG = """\
exit codes: 0 ready (or healthy), 3 not ready, 1 no sidecar answers on the socket.

example:
  kubectl exec POD -c health-sidecar -- dynamo-health-sidecar status"""


DEMO_DESCRIPTION = """\
Start a sidecar, a simulated worker (loads for a few seconds, serves generate, sends
heartbeats) and a small kubelet that probes /live and /health, and print what happens:
the sidecar's transitions, the worker's steps and the kubelet's verdicts.

keys: h = make the worker hang (alive but silent: its heartbeat deadline ends its life),
      c = crash it (SIGKILL: its session closes), q = quit.
The kubelet restarts the worker after three live failures, and the next life begins."""


# `signal` and `status` find the sidecar as the client library does.
SOCKET_HELP = "the worker's socket (default: DYN_SIDECAR_SOCKET, else /var/run/dynamo/health.sock)"


# argparse quotes the arguments it refuses: a usage line shows this many characters of it.
USAGE_MAX = 300


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes end in one line on stderr and exit code 2, like invalid settings."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def one_line(message: str) -> str:
    """The message shortened past `USAGE_MAX` characters, and printable: an argument, which
    argparse quotes as it is, may hold a newline."""
    return printable(message if len(message) <= USAGE_MAX else message[:USAGE_MAX] + "...")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve(commands)
    _add_signal(commands)
    _add_status(commands)
    _add_demo(commands)
    return parser


def _add_serve(commands: argparse._SubParsersAction[OneLineParser]) -> None:
    """`serve`'s options, one for each setting with a flag, all from the setting's record."""
    serve_parser = commands.add_parser(
        "serve",
        help="run the sidecar: the probe port and the worker's socket",
        description="Run the sidecar until SIGTERM or SIGINT (which start the drain).",
        epilog=SERVE_EPILOG.format(flagless=_flagless()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    for option in OPTIONS:
        if option.flag:
            serve_parser.add_argument(
                option.flag, dest=option.field, metavar=option.metavar, help=_help(option)
            )


def _help(option: Option[object]) -> str:
    """The option's help with its default and its variable; `%` doubled, since argparse
    formats help with it."""
    default = (
        f"default {option.default_text}" if option.literal else f"default: {option.default_text}"
    )
    return f"{option.help} ({default}) [{option.variable}]".replace("%", "%%")


def _flagless() -> str:
    """The sentence on each setting that only a variable sets (DYN_SYSTEM_ENABLED)."""
    return " ".join(
        f"{option.variable}, which has no flag, {option.help}."
        for option in OPTIONS
        if not option.flag
    )


def _add_signal(commands: argparse._SubParsersAction[OneLineParser]) -> None:
    """`signal`: what a worker without Python runs to tell the sidecar something."""
    signal_parser = commands.add_parser(
        "signal",
        help="tell a running sidecar an endpoint is ready or not, or that the worker is alive",
        description="Tell a running sidecar something, for workers without Python.",
        epilog=SIGNAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    signal_parser.add_argument("action", choices=["ready", "notready", "heartbeat"])
    signal_parser.add_argument("endpoint", nargs="?", help="the endpoint (ready and notready)")
    signal_parser.add_argument("--socket", metavar="PATH", help=SOCKET_HELP)
    signal_parser.add_argument(
        "--pid", type=int, metavar="PID", help="the worker's pid, sent with the signal"
    )


def _add_status(commands: argparse._SubParsersAction[OneLineParser]) -> None:
    """`status`: what a person runs in the pod to see what the sidecar sees."""
    status_parser = commands.add_parser(
        "status",
        help="print what a running sidecar sees",
        description="Print what a running sidecar sees: the worker's status, life and endpoints.",
        epilog=STATUS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    status_parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    status_parser.add_argument("--socket", metavar="PATH", help=SOCKET_HELP)


def _add_demo(commands: argparse._SubParsersAction[OneLineParser]) -> None:
    """`demo`: the sidecar with a simulated worker and kubelet, to try it."""
    demo_parser = commands.add_parser(
        "demo",
        help="try it: a sidecar, a simulated worker and a small kubelet, with keys to break it",
        description=DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    demo_parser.add_argument("--port", type=int, default=9090, help="probe port (default 9090)")
    demo_parser.add_argument("--socket", metavar="PATH", help="worker socket (default: a temp dir)")
    demo_parser.add_argument(
        "--load-seconds", type=float, default=5.0, metavar="S", help="model load time (default 5)"
    )
    demo_parser.add_argument("--hang-after", type=float, metavar="S", help="hang the worker at S")
    demo_parser.add_argument("--crash-after", type=float, metavar="S", help="crash the worker at S")
    demo_parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    if args.command in ("signal", "status"):
        return run_command(args, environ)
    if args.command == "demo":
        from sidecar.demo import run_demo

        return run_demo(args)
    return run_serve(args, environ)


def run_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`signal` or `status`. The client is imported only here: a serving sidecar does not
    carry it."""
    from sidecar.client import resolve_socket
    from sidecar.commands import show_status, signal_sidecar

    socket_path = resolve_socket(args.socket, environ)
    if args.command == "status":
        return show_status(socket_path, args.json)
    endpoint = args.endpoint
    if args.action == "heartbeat" and endpoint is not None:
        return _usage("signal heartbeat takes no endpoint")
    if args.action != "heartbeat" and endpoint is None:
        return _usage(f"signal {args.action} needs an endpoint, e.g. signal {args.action} generate")
    return signal_sidecar(args.action, endpoint, socket_path, args.pid)


def run_serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    flags = {option.field: getattr(args, option.field, None) for option in OPTIONS}
    try:
        settings = load(environ, flags)
        found = discover(settings, environ)
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # The server's dependencies load only for `serve`: `status` and `signal` stay quick.
    import uvloop

    from sidecar.component import StartupError
    from sidecar.outputs.logs import configure
    from sidecar.server import serve

    configure(settings.log_format, settings.log_level)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(serve(settings, found))
    except StartupError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


def _usage(message: str) -> int:
    print(f"{PROG}: {message} (see {PROG} --help)", file=sys.stderr)
    return EXIT_USAGE
