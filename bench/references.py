"""The servers the sidecar is compared with or reports to: the Go `net/http` reference,
nginx, and the minimal fake Kubernetes API server of `load.py fake-kube`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fleet import Fleet, Server, free_port, http_up, tcp_open, wait_until
from tooling import HERE, Tools

# The ready body of the sidecar's health path (uptime as it was once): the references
# answer these bytes, so every server sends the same payload.
READY_BODY = (
    '{"endpoints":{"generate":"ready"},"status":"ready","uptime":{"nanos":354401046,"secs":1}}'
)


def start_go(fleet: Fleet, tools: Tools, name: str, keepalive: bool) -> Server:
    """The Go reference (bench/reference), keep-alive off as the kubelet's probes are,
    unless `keepalive` (for the keep-alive comparison)."""
    port = free_port()
    argv = [str(tools.reference), "-addr", f"127.0.0.1:{port}", "-body", READY_BODY]
    if keepalive:
        argv.append("-keepalive")
    proc = fleet.spawn(name, argv)
    wait_until(name, http_up(port), proc, fleet, timeout=15)
    return Server(name, proc, port)


def nginx_conf(root: Path, port: int) -> str:
    """One worker, no access log, every path in the run directory (nginx writes nowhere
    else), and the ready body as a `return` string (quotes and backslashes escaped)."""
    body = READY_BODY.replace("\\", "\\\\").replace("'", "\\'")
    return f"""daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""


def start_nginx(fleet: Fleet, tools: Tools) -> Server:
    """nginx in the foreground (so the fleet can stop it) on its generated config."""
    port = free_port()
    root = fleet.rundir / "nginx"
    root.mkdir(exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(nginx_conf(root, port))
    proc = fleet.spawn("nginx", [tools.nginx, "-c", str(conf), "-p", str(root)])
    wait_until("nginx", http_up(port), proc, fleet, timeout=15)
    return Server("nginx", proc, port)


def start_fake_kube(fleet: Fleet) -> tuple[subprocess.Popen[bytes], int]:
    """The fake API server and its port. It runs on the load's CPUs (the bench's own): it
    is not measured, and on the servers' CPU it would compete with the sidecar that
    reports to it."""
    port = free_port()
    fake = fleet.spawn(
        "fake-kube",
        [sys.executable, str(HERE / "load.py"), "fake-kube", "--port", str(port)],
        cpus=os.sched_getaffinity(0),
    )
    try:
        wait_until("fake API server", lambda: tcp_open(port), fake, fleet, 15)
    except RuntimeError:
        fleet.stop(fake)
        raise
    return fake, port
