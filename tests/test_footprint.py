"""What a serving sidecar loads: only what its settings use (docs/architecture.md).

Each module a sidecar imports and never uses is memory in every worker pod; these tests build
the sidecar of some settings in a fresh interpreter, load its servers' configurations as
`serve` does, and read what was imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

BUILD = """
import asyncio, json, os, sys, time
from sidecar.assembly import build
from sidecar.http_servers import ProbeServer, WorkerSocketServer
from sidecar.settings import load

settings = load(os.environ)
sidecar = build(settings, None, time.monotonic, asyncio.Event())
for adapter in sidecar.adapters:
    if isinstance(adapter, ProbeServer | WorkerSocketServer):
        adapter.server.config.load()
print(json.dumps(sorted(sys.modules)))
"""
UNUSED_BY_DEFAULT = ("psutil", "sidecar.client", "sidecar.commands", "websockets", "httpx")


def imported(environ: dict[str, str]) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", BUILD],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("DYN_")}, **environ},
    )
    return set(json.loads(result.stdout))


def test_a_default_sidecar_imports_no_process_watch_client_websockets_or_http_client() -> None:
    assert imported({}) & set(UNUSED_BY_DEFAULT) == set()


def test_the_process_watch_brings_psutil_with_it() -> None:
    assert "psutil" in imported({"DYN_SIDECAR_WATCH_PROCESS": "^python -m worker"})


def test_an_active_check_brings_httpx_with_it() -> None:
    environ = {"DYN_SIDECAR_UPSTREAM_STATUS_URL": "http://127.0.0.1:1/health"}
    assert "httpx" in imported(environ)
