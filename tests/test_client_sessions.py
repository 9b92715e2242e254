"""The client's sessions and heartbeats against the real sidecar process.

Each is judged by what the kubelet would see on the probe port: a live path that passes while
the worker beats or holds its session, and fails once it stops or dies.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest
from conftest import Sidecar, short_socket_path, wait_until
from test_client_support import (
    READY_AT_START,
    SESSION_CLOSED,
    RunSidecar,
    accepting,
    code,
    sidecar_error,
    turns,
)

from sidecar.client import (
    AsyncSidecarClient,
    SidecarClient,
    SidecarRejected,
    SidecarUnavailable,
)

# A worker that holds a session through the client and sleeps until it is killed.
WORKER = """
import sys, time
from sidecar.client import SidecarClient
session = SidecarClient(sys.argv[1]).open_session()
print(session.life, flush=True)
time.sleep(120)
"""


@pytest.fixture
def sidecar(sidecar: Sidecar) -> Sidecar:
    """The shared fixture's sidecar, once its socket accepts connections."""
    return accepting(sidecar)


# -- heartbeats -----------------------------------------------------------------------------------


def test_client_heartbeats_keep_the_worker_live_until_stopped(run_sidecar: RunSidecar) -> None:
    sc = accepting(run_sidecar({"DYN_SIDECAR_HEARTBEAT_TIMEOUT": "0.5", **READY_AT_START}))
    client = SidecarClient(sc.socket_path)
    with client.start_heartbeats(0.1) as beats:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert code(sc, "/live") == 200
            time.sleep(0.05)
    assert beats.sent >= 10
    assert (beats.failures, beats.last_error, beats.running) == (0, None, False)
    assert turns(sc, "/live", 503, within=1.5) is not None
    assert sc.probe("/live").json()["reason"] == "worker life 1 ended: no heartbeat for 0.5s"


def test_client_heartbeats_survive_a_missing_sidecar(run_sidecar: RunSidecar) -> None:
    path = short_socket_path()
    beats = SidecarClient(path).start_heartbeats(0.05)
    try:
        assert wait_until(lambda: beats.failures >= 3)
        assert isinstance(beats.last_error, SidecarUnavailable)
        run_sidecar({"DYN_SIDECAR_SOCKET": str(path)})
        assert wait_until(lambda: beats.sent >= 3)
        assert beats.running
    finally:
        beats.stop()


def test_client_async_heartbeats_run_until_stopped(sidecar: Sidecar) -> None:
    client = AsyncSidecarClient(sidecar.socket_path)

    async def main() -> tuple[int, int, bool]:
        beats = client.start_heartbeats(0.05)
        async with beats:
            await asyncio.sleep(0.4)
        return beats.sent, beats.failures, beats.running

    sent, failures, running = asyncio.run(main())
    assert sent >= 4
    assert (failures, running) == (0, False)


# -- sessions -------------------------------------------------------------------------------------


def test_client_session_sigkill_of_the_worker_fails_the_live_path(sidecar: Sidecar) -> None:
    SidecarClient(sidecar.socket_path).ready("generate")
    command = [sys.executable, "-c", WORKER, str(sidecar.socket_path)]
    with subprocess.Popen(command, stdout=subprocess.PIPE) as worker:
        try:
            assert worker.stdout is not None
            assert worker.stdout.readline() == b"1\n"
            assert code(sidecar, "/live") == 200
            worker.send_signal(signal.SIGKILL)
            assert turns(sidecar, "/live", 503, within=1.0) is not None
        finally:
            worker.kill()
    assert sidecar.probe("/live").json()["reason"] == SESSION_CLOSED
    assert sidecar.probe("/health").json()["endpoints"] == {"generate": "notready"}


def test_client_session_close_fails_the_live_path(sidecar: Sidecar) -> None:
    client = SidecarClient(sidecar.socket_path)
    client.ready("generate")
    with client.open_session() as session:
        assert session.life == 1
        assert code(sidecar, "/live") == 200
    assert turns(sidecar, "/live", 503, within=1.0) is not None
    assert sidecar.probe("/live").json()["reason"] == SESSION_CLOSED


def test_client_session_reports_the_life_it_belongs_to(sidecar: Sidecar) -> None:
    client = SidecarClient(sidecar.socket_path)
    client.open_session().close()
    assert wait_until(lambda: "reason" in sidecar.probe("/live").json())
    with client.open_session() as session:
        assert session.life == 2  # the session is the first signal after life 1 ended


def test_client_session_rejected_with_an_invalid_pid(sidecar: Sidecar) -> None:
    with pytest.raises(SidecarRejected) as caught:
        SidecarClient(sidecar.socket_path).open_session(pid=0)
    assert caught.value.status == 422
    assert caught.value.message == sidecar_error(sidecar, "POST", "/v1/session", json={"pid": 0})
    assert caught.value.message.startswith("pid 0 is invalid")


def restart_under_a_session(run_sidecar: RunSidecar, sig: int) -> None:
    """Stop a sidecar with `sig` while a reconnecting session is held, start another on the same
    socket, and check the session came back to it: closing it ends the worker's life there.
    """
    first = accepting(run_sidecar(READY_AT_START))
    session = SidecarClient(first.socket_path).open_session(reconnect=True)
    try:
        first.stop(sig)
        time.sleep(0.1)  # a reopen that reached the dying sidecar has finished by now
        reopened = session.reconnects
        second = run_sidecar({**READY_AT_START, "DYN_SIDECAR_SOCKET": str(first.socket_path)})
        assert wait_until(lambda: session.reconnects > reopened)
        assert session.life == 1  # the life survived the restart (state file)
        assert code(second, "/live") == 200
    finally:
        session.close()
    assert turns(second, "/live", 503, within=1.0) is not None
    assert second.probe("/live").json()["reason"] == SESSION_CLOSED


def test_client_session_reconnects_after_the_sidecar_restarts(run_sidecar: RunSidecar) -> None:
    restart_under_a_session(run_sidecar, signal.SIGTERM)


def test_client_session_reconnects_after_the_sidecar_is_killed(run_sidecar: RunSidecar) -> None:
    restart_under_a_session(run_sidecar, signal.SIGKILL)


def test_client_session_is_not_reopened_against_a_stopping_sidecar(
    run_sidecar: RunSidecar,
) -> None:
    """A session opened while the sidecar stops would be ended at once: the sidecar answers
    503 instead, so a reconnecting client waits for the next sidecar rather than spinning."""
    first = accepting(run_sidecar({**READY_AT_START, "DYN_SIDECAR_DRAIN_SECONDS": "0"}))
    session = SidecarClient(first.socket_path).open_session(reconnect=True)
    try:
        assert first.stop() == 0
        assert session.reconnects == 0
    finally:
        session.close()


def test_client_async_session_close_fails_the_live_path(sidecar: Sidecar) -> None:
    client = AsyncSidecarClient(sidecar.socket_path)
    seen: list[object] = []

    async def main() -> None:
        await client.ready("generate")
        async with await client.open_session() as session:
            seen.extend([session.life, code(sidecar, "/live")])

    asyncio.run(main())
    assert seen == [1, 200]
    assert turns(sidecar, "/live", 503, within=1.0) is not None
    assert sidecar.probe("/live").json()["reason"] == SESSION_CLOSED
