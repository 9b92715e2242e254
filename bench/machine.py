"""What the run ran on (machine, kernel, versions), printed under the table: the numbers
mean little without it."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from tooling import REPO, Tools, sidecar_python
from units import MIB

# Run in the sidecar's interpreter: the versions that matter are those it imports.
_PACKAGE_VERSIONS = (
    "import importlib.metadata as m, json, sys\n"
    "names = ['dynamo-health-sidecar', 'uvicorn', 'starlette', 'httptools',"
    " 'uvloop', 'prometheus_client']\n"
    "out = {'python': sys.version.split()[0]}\n"
    "for n in names:\n"
    "    try: out[n] = m.version(n)\n"
    "    except Exception: out[n] = 'missing'\n"
    "print(json.dumps(out))"
)


def _first_line_starting(path: str, prefix: str) -> str:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line
    return ""


def _revision() -> str:
    """The sidecar's git revision (`-dirty` with local changes), or '' outside a checkout."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return head.stdout.strip()
    return ""


def machine() -> dict[str, Any]:
    """CPU model and count, memory, kernel, distribution, the sidecar's git revision, and
    the load average at the start (a busy machine shows in it)."""
    memory = ""
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / MIB:.1f} GiB"
    model = _first_line_starting("/proc/cpuinfo", "model name")
    distro = _first_line_starting("/etc/os-release", "PRETTY_NAME=")
    return {
        "revision": _revision(),
        "cpu": model.split(":", 1)[1].strip() if model else "",
        "cpus": os.cpu_count(),
        "memory": memory,
        "kernel": platform.release(),
        "os": distro.split("=", 1)[1].strip('"') if distro else "",
        "loadavg_start": os.getloadavg(),
    }


def versions(tools: Tools) -> dict[str, str]:
    """The versions of the sidecar's libraries, Go, nginx and wrk; one that cannot be read
    is left out (the report prints '?')."""
    found: dict[str, str] = {}
    with contextlib.suppress(Exception):
        out = subprocess.run(
            [sidecar_python(tools.sidecar), "-c", _PACKAGE_VERSIONS],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        found.update(json.loads(out.stdout))
    for name, argv in (
        ("go", [tools.go, "version"]),
        ("nginx", [tools.nginx, "-v"]),  # nginx prints its version on stderr
        ("wrk", [tools.wrk, "-v"]),
    ):
        with contextlib.suppress(Exception):
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            found[name] = (out.stdout + out.stderr).strip().splitlines()[0]
    return found
