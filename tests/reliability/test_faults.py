"""Faults under load, each ending in a documented state with nothing lost silently.

- The worker (a real process holding a session) is SIGKILLed while the kubelet probes:
  the live path fails at once (the kernel closes the session), and a new worker begins
  the next life.
- The sidecar is SIGKILLed and restarted on the same socket and state file while a worker
  keeps signalling with `sidecar.client` and `reconnect=True`: the restarted sidecar
  answers the live path 200 from its first probe, the worker's session is reopened, and
  the final state is what the worker was last told.
- The socket file is deleted under a running sidecar: documented below (the sidecar goes
  deaf to new connections and does not notice; held sessions and probes go on).
- The state file's directory is made read-only, or its disk full (a 64 KiB tmpfs):
  probes and signals go on, the failure is logged once, and the file is written again
  once the disk recovers.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Sidecar, free_port, short_socket_path, start_sidecar

from sidecar.outputs.statefile import read

from .conftest import Record, Scale
from .helpers import WORKER, Load, control, loads, log_lines, metric, metrics, probe, wait_for

pytestmark = pytest.mark.reliability

WORKER_ENV = {
    "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": '["generate"]',
    "DYN_SIDECAR_DRAIN_SECONDS": "0",
}


class Worker:
    """A `worker.py` process: a real worker using the package's client."""

    def __init__(self, socket_path: Path, **args: Any) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps({"socket": str(socket_path), **args})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def report(self, timeout: float) -> dict[str, Any]:
        """Stop the signals (SIGUSR1) and read what the worker was acknowledged."""
        self.process.send_signal(signal.SIGUSR1)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, "the worker printed no report"
        line = self.process.stdout.readline()
        assert line, self.process.stderr.read().decode() if self.process.stderr else ""
        report: dict[str, Any] = json.loads(line)
        return report

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def worker_view(socket_path: Path) -> dict[str, Any]:
    view: dict[str, Any] = control(socket_path, "GET", "/v1/worker").json()
    return view


def serving_worker(socket_path: Path) -> bool:
    try:
        view = worker_view(socket_path)
    except OSError:
        return False
    return bool(
        view["alive"] and view["live"] and view["sessions"] == 1 and view["status"] == "ready"
    )


def first_after(timeline: list[list[Any]], when: float, path: str, code: object) -> float | None:
    for began, probed, answer in timeline:
        if began >= when and probed == path and answer == code:
            return float(began)
    return None


# -- the worker killed ------------------------------------------------------------------------


def test_faults_worker_killed_while_probes_run(
    run_sidecar: Callable[..., Sidecar], scale: Scale, figure: Record
) -> None:
    sc = run_sidecar(WORKER_ENV)
    kills: list[float] = []
    detected: list[float] = []
    with loads(
        Load(
            "probe",
            port=sc.port,
            rate=200,
            seconds=30 * scale.worker_kills,
            paths=["/live", "/health"],
            timeline=True,
        )
    ) as (prober,):
        for _ in range(scale.worker_kills):
            worker = Worker(sc.socket_path, seconds=60, rate=50)
            try:
                assert wait_for(lambda: serving_worker(sc.socket_path), 10.0), sc.logs()
                time.sleep(0.3)  # the kubelet sees it live and ready
                kills.append(time.monotonic())
                worker.process.kill()
                assert wait_for(lambda: not worker_view(sc.socket_path)["alive"], 5.0)
                detected.append(time.monotonic())
            finally:
                worker.kill()
            view = worker_view(sc.socket_path)
            assert view["end_reason"] == "its session connection closed"
            assert view["live"] is False and view["status"] == "notready"
            assert set(view["endpoints"]) == {"generate"} or all(
                record["status"] == "notready" for record in view["endpoints"].values()
            )
            time.sleep(0.2)
        probes = prober.result(stop=True)

    assert probes["errors"] == {}, probes["first_errors"]
    assert sc.process.poll() is None
    # The documented state after the last kill: not live, not ready, the life ended.
    live = probe(sc.port, "/live")
    assert live.status_code == 503 and live.json()["live"] is False
    assert "its session connection closed" in live.json()["reason"]
    assert probe(sc.port, "/health").status_code == 503
    assert metric(metrics(sc.port), "dynamo_sidecar_worker_lives_total") == scale.worker_kills
    # How long after the SIGKILL the kubelet's live probe failed.
    latencies = []
    for killed in kills:
        failed = first_after(probes["timeline"], killed, "/live", 503)
        assert failed is not None
        latencies.append(round((failed - killed) * 1000, 1))
    figure("workers SIGKILLed", scale.worker_kills)
    figure("SIGKILL to the first failing /live probe, ms (probes every 10 ms)", latencies, "< 1000")
    figure(
        "SIGKILL to the sidecar's life ended, ms",
        [round((d - k) * 1000, 1) for d, k in zip(detected, kills, strict=True)],
    )
    figure("probes answered, errors", f"{probes['sent']}, {sum(probes['errors'].values())}")
    assert max(latencies) < 1000


# -- the sidecar killed and restarted ------------------------------------------------------------


def fixed_env(port: int, socket_path: Path) -> dict[str, str]:
    return {**WORKER_ENV, "DYN_SYSTEM_PORT": str(port), "DYN_SIDECAR_SOCKET": str(socket_path)}


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[list[Sidecar]]:
    """Sidecars started on one port, socket and state file; all killed afterwards."""
    started: list[Sidecar] = []
    yield started
    for sc in started:
        if sc.process.poll() is None:
            sc.process.kill()
            sc.process.wait(timeout=10)


def test_faults_sidecar_killed_and_restarted_while_the_worker_signals(
    tmp_path: Path, restartable: list[Sidecar], scale: Scale, figure: Record
) -> None:
    port, socket_path = free_port(), short_socket_path()
    env = fixed_env(port, socket_path)
    restartable.append(start_sidecar(tmp_path, env))
    worker = Worker(socket_path, reconnect=True, seconds=600, rate=100, endpoints=4)
    outages: list[float] = []
    reopened: list[float] = []
    try:
        assert wait_for(lambda: serving_worker(socket_path), 10.0)
        with loads(
            Load("probe", port=port, rate=100, seconds=600, paths=["/live"], timeline=True)
        ) as (prober,):
            for _ in range(scale.sidecar_restarts):
                time.sleep(scale.fault_seconds / 2)
                killed = time.monotonic()
                restartable[-1].process.kill()
                restartable[-1].process.wait(timeout=10)
                restartable.append(start_sidecar(tmp_path, env))
                outages.append(round((time.monotonic() - killed) * 1000))
                assert wait_for(lambda: worker_view(socket_path)["sessions"] == 1, 5.0)
                reopened.append(round((time.monotonic() - killed) * 1000))
            time.sleep(1.0)  # the worker goes on signalling the restarted sidecar
            report = worker.report(timeout=30)
            time.sleep(0.2)
            probes = prober.result(stop=True)
        sc = restartable[-1]
        status = control(socket_path, "GET", "/v1/status").json()
        expected = {"generate": "ready", **report["acked"]}
        assert status["endpoints"] == expected
        assert report["rejected"] == []
        view = worker_view(socket_path)
        assert view["alive"] and view["live"] and view["sessions"] == 1
        # One life all along: restored from the state file at each restart.
        assert view["life"] == 1
        assert metric(metrics(port), "dynamo_sidecar_worker_lives_total") == 1
        # The live path never failed: every probe answered was 200 (the others found no
        # sidecar while it restarted, or saw it killed mid-answer).
        answered = [code for _, _, code in probes["timeline"] if isinstance(code, int)]
        refused = [code for _, _, code in probes["timeline"] if not isinstance(code, int)]
        assert set(answered) == {200}
        assert set(refused) <= {"ConnectionRefusedError", "ConnectionResetError", "PartialAnswer"}
        # The restarted sidecar still sees the worker die: through the reopened session.
        worker.process.kill()
        assert wait_for(lambda: not worker_view(socket_path)["alive"], 5.0)
        assert worker_view(socket_path)["end_reason"] == "its session connection closed"
    finally:
        worker.kill()
    figure("sidecar SIGKILLs and restarts", scale.sidecar_restarts)
    figure("SIGKILL to serving again, ms", outages)
    figure("SIGKILL to the worker's session reopened, ms", reopened)
    figure(
        "worker signals acknowledged / sidecar unavailable (retried)",
        f"{report['signals']} / {report['unavailable']}",
    )
    figure("/live probes: 200 / refused while restarting", f"{len(answered)} / {len(refused)}")
    assert sc.process.poll() is None


class SignalStream:
    """Signals sent back to back on two kept-alive connections, each setting a new endpoint
    `ready`: what was sent and what was answered 200, until the sidecar goes away."""

    def __init__(self, socket_path: Path, prefix: str) -> None:
        self.prefix = prefix
        self.sent: set[str] = set()
        self.acked: set[str] = set()
        self.first_ack = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._send, args=(socket_path, f"{prefix}-{n}"), daemon=True)
            for n in range(2)
        ]
        for thread in self._threads:
            thread.start()

    def _send(self, socket_path: Path, prefix: str) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5.0)
                sock.connect(str(socket_path))
                reader = sock.makefile("rb")
                for n in range(100_000):
                    name = f"{prefix}-{n}"
                    with self._lock:
                        self.sent.add(name)
                    sock.sendall(
                        f"POST /v1/endpoints/{name}/ready HTTP/1.1\r\nHost: s\r\n"
                        "Content-Length: 0\r\n\r\n".encode()
                    )
                    if not reader.readline().startswith(b"HTTP/1.1 200 "):
                        return
                    length = 0
                    while (line := reader.readline()) not in (b"\r\n", b""):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    if len(reader.read(length)) != length:
                        return
                    with self._lock:
                        self.acked.add(name)
                    self.first_ack.set()
        except OSError:
            return  # the sidecar went away mid-exchange: that signal was never answered

    def join(self) -> None:
        for thread in self._threads:
            thread.join(10)


def lost_and_invented(stream: SignalStream, restored: dict[str, str]) -> tuple[list, list]:
    """Acknowledged signals the restarted sidecar does not have, and endpoints it has that
    were never sent: both must be empty (an unanswered signal may or may not be there)."""
    names = {name for name in restored if name.startswith(f"{stream.prefix}-")}
    lost = sorted(name for name in stream.acked if restored.get(name) != "ready")
    invented = sorted(names - stream.sent)
    return lost, invented


def test_faults_acknowledged_signal_survives_sigkill(
    tmp_path: Path, restartable: list[Sidecar], scale: Scale, figure: Record
) -> None:
    """SIGKILL 0-5 ms after an answer, while two connections signal back to back: every
    signal answered 200 is in the restarted sidecar's state."""
    port, socket_path = free_port(), short_socket_path()
    env = fixed_env(port, socket_path)
    restartable.append(start_sidecar(tmp_path, env))
    rng = random.Random(14)
    acked = 0
    for cycle in range(scale.acknowledged_kills):
        stream = SignalStream(socket_path, f"kill-{cycle}")
        assert stream.first_ack.wait(10), "no signal answered"
        time.sleep(rng.uniform(0.0, 0.005))
        restartable[-1].process.kill()
        restartable[-1].process.wait(timeout=10)
        stream.join()
        restartable.append(start_sidecar(tmp_path, env))
        restored = control(socket_path, "GET", "/v1/status").json()["endpoints"]
        assert lost_and_invented(stream, restored) == ([], []), f"cycle {cycle}"
        acked += len(stream.acked)
        # A fresh start for the next cycle, so the endpoints stay far from the limit.
        restartable[-1].process.kill()
        restartable[-1].process.wait(timeout=10)
        (socket_path.parent / "health.state.json").unlink(missing_ok=True)
        restartable.append(start_sidecar(tmp_path, env))
    figure(
        "SIGKILLs 0-5 ms after an answer: kills / signals acknowledged / lost",
        f"{scale.acknowledged_kills} / {acked} / 0",
    )


def test_faults_acknowledged_signal_survives_a_graceful_stop(
    tmp_path: Path, restartable: list[Sidecar], scale: Scale, figure: Record
) -> None:
    """SIGTERM while two connections signal back to back: the sidecar exits 0, and every
    signal answered 200 before it went is in the restarted sidecar's state."""
    port, socket_path = free_port(), short_socket_path()
    env = {**fixed_env(port, socket_path), "DYN_SIDECAR_DRAIN_SECONDS": "0.2"}
    restartable.append(start_sidecar(tmp_path, env))
    acked = 0
    for cycle in range(scale.graceful_stops):
        stream = SignalStream(socket_path, f"stop-{cycle}")
        assert stream.first_ack.wait(10), "no signal answered"
        restartable[-1].process.terminate()
        assert restartable[-1].process.wait(timeout=10) == 0
        stream.join()
        restartable.append(start_sidecar(tmp_path, env))
        restored = control(socket_path, "GET", "/v1/status").json()["endpoints"]
        assert lost_and_invented(stream, restored) == ([], []), f"cycle {cycle}"
        acked += len(stream.acked)
    figure(
        "graceful stops under a signal stream: stops / signals acknowledged / lost",
        f"{scale.graceful_stops} / {acked} / 0",
    )


def test_faults_client_retries_an_answer_cut_short(tmp_path: Path) -> None:
    """A stand-in for a sidecar SIGKILLed mid-answer (seen about once in 10 restarts at 100
    signals/s): the first connection gets the headers only, the next a whole answer."""
    from sidecar.client import Retry, SidecarClient

    path = short_socket_path()
    body = b'{"endpoint":"generate","life":1,"overall":"ready","status":"ready"}'
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(
        body
    )
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    server.settimeout(0.1)
    answered: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        answers = [head, head + body]
        while answers and not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(2.0)
                connection.recv(65536)
                answer = answers.pop(0)
                connection.sendall(answer)
                answered.append(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client = SidecarClient(path, timeout=2.0, retry=Retry(attempts=3, backoff=0.01))
        assert client.ready("generate")["status"] == "ready"
    finally:
        stop.set()
        thread.join(5)
        server.close()
    assert len(answered) == 2


# -- the socket file deleted ---------------------------------------------------------------------


def test_faults_socket_file_deleted_under_a_running_sidecar(
    run_sidecar: Callable[..., Sidecar], scale: Scale, figure: Record
) -> None:
    """The probe port goes on answering, a session already held still ends the worker's life
    when it closes, and within a second the socket file is there again (logged once), so
    a new connection reaches the sidecar."""
    sc = run_sidecar(WORKER_ENV)
    worker = Worker(sc.socket_path, seconds=0.2, rate=10)
    try:
        assert wait_for(lambda: serving_worker(sc.socket_path), 10.0)
        worker.report(timeout=10)
        sc.socket_path.unlink()
        assert wait_for(sc.socket_path.exists, 2.0), "the socket file was not created again"
        with loads(
            Load(
                "probe",
                port=sc.port,
                rate=100,
                seconds=scale.fault_seconds,
                paths=["/live", "/health"],
            )
        ) as (prober,):
            signal_cli = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "sidecar",
                    "signal",
                    "notready",
                    "generate",
                    "--socket",
                    str(sc.socket_path),
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            probes = prober.result()
        assert probes["errors"] == {}
        assert set(probes["codes"]) <= {"/live 200", "/health 200", "/health 503"}
        assert signal_cli.returncode == 0, signal_cli.stderr
        # The held session still works: the worker's death is seen.
        worker.process.kill()
        assert wait_for(lambda: probe(sc.port, "/live").status_code == 503, 5.0)
    finally:
        worker.kill()
    log = sc.logs()
    recreated = log_lines(log, "was deleted while the sidecar ran; created it again")
    assert len(recreated) == 1, recreated
    figure(
        "after the socket file is deleted",
        f"probes {probes['sent']}, no error; a signal through the new file: exit "
        f"{signal_cli.returncode}",
    )
    assert sc.stop() == 0
    assert not sc.socket_path.exists()


def test_faults_deleted_socket_file_is_recreated(sidecar: Sidecar) -> None:
    sidecar.socket_path.unlink()

    def answers() -> bool:
        try:
            return control(sidecar.socket_path, "GET", "/v1/status").status_code == 200
        except (OSError, httpx.TransportError):
            return False

    assert wait_for(answers, 3.0, interval=0.2), "no answer on the socket path within 3 s"


# -- the state file's disk read-only or full -----------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root can mount one); skipped where mounting is not allowed."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mount_point)], capture_output=True)
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def make_read_only(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


def make_writable(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)


def fill(disk: Path) -> None:
    descriptor = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(descriptor, b"\0" * 4096):
            pass
    except OSError:
        pass  # full
    finally:
        os.close(descriptor)


def unfill(disk: Path) -> None:
    (disk / "filler").unlink()


FAULTS = {"read-only": (make_read_only, make_writable), "full": (fill, unfill)}
WRITE_FAILED = "cannot write the state file"
WRITTEN_AGAIN = "is written again"


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faults_state_file_disk_read_only_or_full(
    fault: str,
    small_disk: Path,
    tmp_path: Path,
    restartable: list[Sidecar],
    scale: Scale,
    figure: Record,
) -> None:
    port, socket_path = free_port(), short_socket_path()
    state_file = small_disk / "health.state.json"
    env = {**fixed_env(port, socket_path), "DYN_SIDECAR_STATE_FILE": str(state_file)}
    restartable.append(start_sidecar(tmp_path, env))
    sc = restartable[-1]
    assert control(socket_path, "POST", "/v1/endpoints/generate/ready").status_code == 200
    assert wait_for(lambda: state_file.exists() and read(state_file) is not None, 5.0)
    break_disk, repair_disk = FAULTS[fault]

    break_disk(small_disk)
    with loads(
        Load("probe", port=port, rate=100, seconds=scale.fault_seconds, paths=["/live", "/health"]),
        Load(
            "signal",
            socket=str(socket_path),
            rate=200,
            seconds=scale.fault_seconds,
            connections=2,
            endpoints=4,
        ),
    ) as (prober, signaller):
        probes = prober.result()
        signals = signaller.result()
    assert probes["errors"] == {}, probes["first_errors"]
    assert signals["errors"] == [] and signals["wrong"] == []
    # Not one change is acknowledged that the file does not hold: each is answered 503
    # (applied, not saved) until the disk is repaired.
    refusals = {(code, body.split(": [Errno")[0]) for code, body in signals["refused"]}
    assert refusals == {
        (503, f'{{"error":"the change is applied but the state file {state_file} cannot be written')
    }, signals["refused"][:3]
    failures = log_lines(sc.logs(), WRITE_FAILED)
    assert len(failures) == 1, failures  # logged once, not per write
    # While the disk is broken, the file keeps the last state written before.
    saved = read(state_file)
    assert saved is not None and {k: v.value for k, v in saved.endpoints.items()} == {
        "generate": "ready"
    }

    repair_disk(small_disk)
    # Tried again with backoff, the file catches up with no new change, and says so.
    expected = control(socket_path, "GET", "/v1/status").json()["endpoints"]
    assert wait_for(lambda: log_lines(sc.logs(), WRITTEN_AGAIN), 5.0)
    saved = read(state_file)
    assert saved is not None and {k: v.value for k, v in saved.endpoints.items()} == expected
    assert control(socket_path, "POST", "/v1/endpoints/generate/ready").status_code == 200
    expected["generate"] = "ready"
    # And a restart on it restores it all.
    sc.process.kill()
    sc.process.wait(timeout=10)
    restartable.append(start_sidecar(tmp_path, env))
    assert control(socket_path, "GET", "/v1/status").json()["endpoints"] == expected
    figure(
        f"{fault}: signals during the fault: sent / acknowledged / 503 not saved; probes",
        f"{signals['sent']} / {signals['acked']} / {len(signals['refused'])}; "
        f"{probes['sent']} no error",
    )
    figure(f"{fault}: log", f"{failures[0].split(' ', 2)[-1][:140]}")


def test_faults_state_file_written_again_when_the_disk_recovers(
    small_disk: Path, tmp_path: Path, restartable: list[Sidecar]
) -> None:
    port, socket_path = free_port(), short_socket_path()
    state_file = small_disk / "health.state.json"
    env = {**fixed_env(port, socket_path), "DYN_SIDECAR_STATE_FILE": str(state_file)}
    restartable.append(start_sidecar(tmp_path, env))
    make_read_only(small_disk)
    refused = control(socket_path, "POST", "/v1/endpoints/generate/ready")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert wait_for(lambda: log_lines(restartable[-1].logs(), WRITE_FAILED), 5.0)
    make_writable(small_disk)

    def current() -> bool:
        saved = read(state_file)
        return (
            saved is not None
            and saved.endpoints.get("generate") is not None
            and saved.endpoints["generate"].value == "ready"
        )

    assert wait_for(current, 3.0, interval=0.1), "the file still holds the state before the failure"


def test_faults_sidecar_killed_while_the_disk_fails_restores_the_last_state_written(
    small_disk: Path, tmp_path: Path, restartable: list[Sidecar]
) -> None:
    """Documented: what was not written is lost at a restart, after one warning in the log."""
    port, socket_path = free_port(), short_socket_path()
    state_file = small_disk / "health.state.json"
    env = {**fixed_env(port, socket_path), "DYN_SIDECAR_STATE_FILE": str(state_file)}
    restartable.append(start_sidecar(tmp_path, env))
    assert control(socket_path, "POST", "/v1/endpoints/generate/ready").status_code == 200
    assert wait_for(lambda: read(state_file) is not None, 5.0)
    fill(small_disk)
    refused = control(socket_path, "POST", "/v1/endpoints/generate/notready")
    assert refused.status_code == 503
    assert refused.json()["error"] == (
        f"the change is applied but the state file {state_file} cannot be written: "
        "[Errno 28] No space left on device"
    )
    assert wait_for(lambda: log_lines(restartable[-1].logs(), WRITE_FAILED), 5.0)
    restartable[-1].process.kill()
    restartable[-1].process.wait(timeout=10)
    restartable.append(start_sidecar(tmp_path, env))
    assert control(socket_path, "GET", "/v1/status").json()["endpoints"] == {"generate": "ready"}
    assert probe(port, "/health").status_code == 200
    assert os.path.exists(state_file)
