"""The real NVIDIA Dynamo 1.6.1 frontend and workers on loopback, for comparing the sidecar with it.

    python tests/dynamo_real.py      # install (or find) the Dynamo venv, print its python

`pip install ai-dynamo==1.6.1` cannot resolve here (it requires `aisimulate` and a GPU stack), yet
the frontend and the Python bindings run without them. So Dynamo gets a venv of its own, outside
the clone so that it outlives it: the two Dynamo wheels with `--no-deps`, then only the packages
that `python -m dynamo.frontend` and `tests/dynamo_worker.py` import. A marker file names what was
installed, so a second call is instant; a lock keeps two runs from installing at once.

Where PyPI cannot be reached, `dynamo_python()` returns None and `why_unavailable()` gives pip's
own error line, for `pytest.skip`. The processes run on the file discovery backend (a shared
`DYN_FILE_KV` directory) and the TCP request plane, every listener on 127.0.0.1; each is killed
and reaped when its context ends, its output kept in a log file for failure messages.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DYNAMO_VERSION = "1.6.1"
VENV_ENV = "DYN_SIDECAR_TEST_DYNAMO_VENV"
DEFAULT_VENV = Path(f"/var/cache/dynamo-health-sidecar/dynamo-{DYNAMO_VERSION}")
# Installed with --no-deps: their declared dependencies (aisimulate, transformers, ...) are not
# needed to serve HTTP and discovery, and aisimulate does not resolve at all.
DYNAMO_WHEELS = (f"ai-dynamo=={DYNAMO_VERSION}", f"ai-dynamo-runtime=={DYNAMO_VERSION}")
# What the frontend and the worker script import, with their own dependencies.
RUNTIME_PACKAGES = (
    "uvloop",
    "packaging",
    "typing-extensions",
    "pyyaml",
    "msgspec",
    "pydantic<=2.13.5",
)
IMPORT_CHECK = "import dynamo.frontend.main, dynamo.llm, dynamo.common.utils.graceful_shutdown"
PIP_TIMEOUT_S = 600.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
WORKER_SCRIPT = Path(__file__).with_name("dynamo_worker.py")
LOOPBACK = "127.0.0.1"


class DynamoUnavailable(RuntimeError):
    """Dynamo cannot be installed here; the message is pip's error line (or the failing step)."""


def venv_dir() -> Path:
    return Path(os.environ.get(VENV_ENV, str(DEFAULT_VENV)))


def marker_text() -> str:
    """What the marker records: a change of version or package list forces a fresh install."""
    return "\n".join((*DYNAMO_WHEELS, *RUNTIME_PACKAGES)) + "\n"


def error_line(output: str) -> str:
    """pip's last `ERROR:` line (the one that says why), else the last line it printed."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["(no output)"])[-1]


def run_step(args: Sequence[str], log: Path) -> None:
    """Run one install step, its output appended to `log`; a failure raises its error line."""
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(args)}\n")
        sink.flush()
        done = subprocess.run(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=PIP_TIMEOUT_S,
            check=False,
        )
        sink.write(done.stdout)
    if done.returncode != 0:
        raise DynamoUnavailable(error_line(done.stdout))


def pip_install(python: Path, log: Path, *args: str) -> None:
    # Few retries: with no route to PyPI the answer is a quick, clear error, not minutes of retry.
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    run_step([*pip, "--retries", "2", "--timeout", "30", *args], log)


def install(venv: Path) -> Path:
    """Make the Dynamo venv at `venv` unless its marker says it is complete; return its python.

    Raises DynamoUnavailable when a step fails (no network to PyPI, above all).
    """
    python = venv / "bin" / "python"
    marker = venv / "INSTALLED"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and marker.read_text() == marker_text() and python.is_file():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        log = venv.parent / f"{venv.name}.install.log"
        log.write_text("")
        run_step([sys.executable, "-m", "venv", str(venv)], log)
        pip_install(python, log, "--no-deps", *DYNAMO_WHEELS)
        pip_install(python, log, *RUNTIME_PACKAGES)
        run_step([str(python), "-c", IMPORT_CHECK], log)
        marker.write_text(marker_text())
    return python


@functools.cache
def _installed() -> Path | str:
    """Install once per test process; the reason for failure is kept for `why_unavailable`."""
    try:
        return install(venv_dir())
    except DynamoUnavailable as err:
        return str(err)


def dynamo_python() -> Path | None:
    """The python of the Dynamo venv, installing it on first use; None where it cannot be had."""
    result = _installed()
    return result if isinstance(result, Path) else None


def why_unavailable() -> str:
    """Why `dynamo_python()` is None: pip's error line, to pass to `pytest.skip`."""
    result = _installed()
    return "" if isinstance(result, Path) else f"Dynamo {DYNAMO_VERSION} not installable: {result}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def dynamo_env(discovery_dir: Path, extra: Mapping[str, str] | None) -> dict[str, str]:
    """The environment of every Dynamo process: one discovery directory, loopback planes, none of
    the caller's own `DYN_` settings, then `extra` (Dynamo's `DYN_...` knobs, for a test)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DYN_")}
    return {
        **env,
        "DYN_FILE_KV": str(discovery_dir),
        "DYN_TCP_RPC_HOST": LOOPBACK,
        "DYN_TCP_RESPONSE_STREAM_HOST": LOOPBACK,
        "DYN_EVENT_PLANE_HOST": LOOPBACK,
        # Python output straight to the log, so READY lines and tracebacks appear in order.
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }


@dataclass
class RealProcess:
    """A Dynamo process of ours, with its combined stdout and stderr in a log file."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def failure(self, what: str) -> str:
        """A message for a failed start: what went wrong and the log's last lines."""
        tail = "\n".join(self.log().splitlines()[-30:])
        return f"{what} (exit code {self.process.poll()}); log {self.log_path}:\n{tail}"

    def kill(self) -> None:
        """SIGKILL the process group: no clean-up, as when a pod's container is killed."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, Dynamo's graceful path; returns the exit code once the process is gone."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


@dataclass
class RealFrontend(RealProcess):
    port: int

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


@dataclass
class RealWorker(RealProcess):
    instance_id: int


@contextlib.contextmanager
def spawn(args: Sequence[str], env: dict[str, str], name: str) -> Iterator[RealProcess]:
    """Start a process in a session of its own; on exit kill the whole group and reap it. The log
    is removed after a clean exit and kept, for its path in the message, after an exception."""
    log_path = Path(tempfile.mkdtemp(prefix="dynamo-real-")) / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True
        )
    running = RealProcess(process, log_path)
    try:
        yield running
    finally:
        if process.poll() is None:
            running.kill()
    shutil.rmtree(log_path.parent)


@dataclass(frozen=True)
class Exchange:
    """One answer as sent: status, headers in order with their names as sent, the body's bytes."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header `name` (given in lower case), whatever case it was sent in."""
        return next((value for key, value in self.headers if key.lower() == name), None)


def exchange(port: int, method: str, path: str, timeout: float = 5.0) -> Exchange:
    """One request on a new connection, as a kubelet probe sends it; OSError if none answers."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return Exchange(response.status, response.getheaders(), response.read())
    finally:
        connection.close()


def health_answers(port: int) -> bool:
    """`/health` gives any HTTP answer: the frontend's router is serving."""
    try:
        exchange(port, "GET", "/health", timeout=2.0)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def real_frontend(
    python: Path, discovery_dir: Path, port: int | None = None, env: Mapping[str, str] | None = None
) -> Iterator[RealFrontend]:
    """`python -m dynamo.frontend` on 127.0.0.1:`port` (a free one by default), ready when its
    `/health` answers; `env` adds Dynamo settings (`DYN_HTTP_GRACEFUL_SHUTDOWN_TIMEOUT_SECS`...)."""
    port = free_port() if port is None else port
    args = [
        str(python), "-m", "dynamo.frontend",
        "--discovery-backend", "file", "--request-plane", "tcp",
        "--http-host", LOOPBACK, "--http-port", str(port),
    ]  # fmt: skip
    with spawn(args, dynamo_env(discovery_dir, env), "frontend") as started:
        frontend = RealFrontend(started.process, started.log_path, port)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not health_answers(port):
            if frontend.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(frontend.failure("the Dynamo frontend did not serve /health"))
            time.sleep(0.05)
        yield frontend


def ready_id(log: str) -> int | None:
    found = re.search(r"^READY (\d+)$", log, re.MULTILINE)
    return int(found.group(1)) if found else None


@contextlib.contextmanager
def real_worker(
    python: Path,
    discovery_dir: Path,
    namespace: str,
    component: str,
    endpoints: Sequence[str],
    model: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[RealWorker]:
    """`tests/dynamo_worker.py` serving `namespace.component.<each endpoint>`, ready once all are
    in discovery (with `model`, it also registers a model card of that name); `env` adds Dynamo
    settings such as `DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS`."""
    args = [str(python), str(WORKER_SCRIPT), namespace, component, *endpoints]
    if model is not None:
        args += ["--model", model]
    with spawn(args, dynamo_env(discovery_dir, env), f"worker-{component}") as started:
        deadline = time.monotonic() + START_TIMEOUT_S
        while (instance_id := ready_id(started.log())) is None:
            if started.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(started.failure("the Dynamo worker did not become READY"))
            time.sleep(0.05)
        yield RealWorker(started.process, started.log_path, instance_id)


if __name__ == "__main__":
    began = time.monotonic()
    found = dynamo_python()
    print(found or why_unavailable(), f"({time.monotonic() - began:.1f} s)")
    sys.exit(0 if found else 1)
