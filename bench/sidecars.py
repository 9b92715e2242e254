"""How the bench starts the sidecar and marks it ready, the same way for every figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import load
from fleet import Fleet, Server, free_port, wait_until
from tooling import Tools


def serve_argv(command: Sequence[str], port: int, sock: Path, *flags: str) -> list[str]:
    """`serve` on 127.0.0.1 only, with no drain wait, so a stop is immediate and the next
    measurement does not wait for it."""
    return [
        *command,
        "serve",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--socket", str(sock),
        "--drain-seconds", "0",
        *flags,
    ]  # fmt: skip


def answering(port: int, sock: Path) -> bool:
    """Both of the sidecar's doors answer: the probe port (any status) and the worker's
    socket (`GET /v1/status` is 200). Raises OSError while either is not open yet."""
    load.probe(port, "/health", timeout=1.0)
    status, _ = load.unix_request(str(sock), "GET", "/v1/status", timeout=1.0)
    return status == 200


def start_sidecar(
    fleet: Fleet, tools: Tools, name: str, mode: str = "worker", extra: Sequence[str] = ()
) -> Server:
    """A sidecar with reporting off (no cluster here), `generate` its one endpoint in
    worker mode, up on both doors."""
    port = free_port()
    sock = fleet.rundir / f"{name}.sock"
    flags = ["--kube", "off", "--mode", mode]
    if mode == "worker":
        flags += ["--endpoints", "generate"]
    proc = fleet.spawn(name, serve_argv(tools.sidecar, port, sock, *flags, *extra))
    wait_until(f"sidecar {name}", lambda: answering(port, sock), proc, fleet, timeout=30)
    return Server(name, proc, port, sock)


def set_ready(server: Server, endpoint: str = "generate") -> None:
    """Mark the endpoint ready over the socket, and check the probe port says so."""
    assert server.socket_path is not None
    status, body = load.unix_request(
        str(server.socket_path), "POST", f"/v1/endpoints/{endpoint}/ready"
    )
    if status != 200:
        raise RuntimeError(f"{server.name}: ready gave {status} {body[:200]!r}")
    code, _ = load.probe(server.port)
    if code != 200:
        raise RuntimeError(f"{server.name}: /health is {code} after ready")
