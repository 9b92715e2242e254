"""The `dynamo-health-sidecar` command: thin wiring from the command line to the package."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

import uvloop

from sidecar import __version__
from sidecar.logs import configure
from sidecar.server import StartupError, serve
from sidecar.settings import OPTIONS, SettingsError, load

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
line that names it. DYN_SYSTEM_ENABLED, which has no flag, must be true or unset.

serves:
  probe port     the health path, the live path, /ready, /metrics and /sidecar/live
  worker socket  PUT /v1/endpoints/NAME, POST /v1/endpoints/NAME/ready (or /notready),
                 POST /v1/instances, DELETE /v1/instances/ID, POST /v1/heartbeat,
                 POST /v1/session, GET /v1/status

example:
  dynamo-health-sidecar serve --port 9090 --endpoints generate --socket /tmp/health.sock"""


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes end in one line on stderr and exit code 2, like invalid settings."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve_parser = commands.add_parser(
        "serve",
        help="run the sidecar: the probe port and the worker's socket",
        description="Run the sidecar until SIGTERM or SIGINT (which start the drain).",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    for option in OPTIONS:
        if option.flag:
            serve_parser.add_argument(
                option.flag,
                dest=option.field,
                metavar="VALUE",
                help=f"{option.help} [{option.variable}]",
            )
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    flags = {option.field: getattr(args, option.field, None) for option in OPTIONS}
    try:
        settings = load(environ, flags)
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure(settings.log_format, settings.log_level)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(serve(settings))
    except StartupError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
