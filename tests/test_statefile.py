"""The state file: its format, its atomic writes, and a real sidecar restarted on it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Sidecar, wait_until
from hypothesis import given
from hypothesis import strategies as st

from sidecar.health import HealthState, Instance, SavedState, Status
from sidecar.statefile import (
    FORMAT,
    CorruptStateFile,
    StateFileWriter,
    decode,
    encode,
    read,
    write_atomic,
)

READY, NOTREADY = Status.READY, Status.NOTREADY
NOT_A_STATE = (
    "the file is not an object with the keys endpoints, format, instances, life, written_at"
)


def saved_state(**changes: object) -> SavedState:
    fields: dict[str, object] = {
        "life": 3,
        "alive": True,
        "ever_ready": True,
        "pid": 4242,
        "end_reason": "",
        "heartbeats": False,
        "declared": None,
        "status_text": "serving",
        "endpoints": {"generate": READY, "load_metrics": NOTREADY},
        "instances": (
            Instance("dynamo", "backend", "generate", 2**64 - 1, {"nats_tcp": "x"}, True),
        ),
    }
    fields.update(changes)
    return SavedState(**fields)  # type: ignore[arg-type]


def test_statefile_round_trips_a_saved_state() -> None:
    saved = saved_state()
    assert decode(encode(saved, 1700000000.0)) == saved


def test_statefile_keeps_every_digit_of_an_instance_id() -> None:
    assert b'"instance_id":18446744073709551615' in encode(saved_state(), 0.0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "it is not JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"[]", NOT_A_STATE),
        (b'{"format": 1}', NOT_A_STATE),
    ],
)
def test_statefile_rejects_a_file_that_is_not_a_state(data: bytes, message: str) -> None:
    with pytest.raises(CorruptStateFile) as caught:
        decode(data)
    assert str(caught.value) == message


def mutated(path: list[str], value: object) -> bytes:
    document = json.loads(encode(saved_state(), 0.0))
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["format"], 2, f"its format is 2, not {FORMAT}"),
        (["life", "number"], 0, "life.number is not an integer from 1 to 18446744073709551615"),
        (["life", "alive"], "yes", "life.alive is not true or false"),
        (["life", "pid"], -1, "life.pid is not an integer from 1 to 2147483647"),
        (["life", "declared"], "maybe", "life.declared is not ready or notready"),
        (["endpoints"], {"gen erate": "ready"}, "an endpoint is not a valid name"),
        (["endpoints"], {"generate": "up"}, "endpoint generate is not ready or notready"),
        (["instances"], {}, "instances is not a list"),
        (
            ["instances", 0, "instance_id"],
            2**64,
            "instance 0 instance_id is not an integer from 0 to 18446744073709551615",
        ),
        (["instances", 0, "transport"], [], "instance 0 has a transport that is not an object"),
    ],
)
def test_statefile_rejects_each_bad_field_naming_it(
    path: list[str], value: object, message: str
) -> None:
    with pytest.raises(CorruptStateFile) as caught:
        decode(mutated(path, value))
    assert str(caught.value) == message


@given(st.binary(max_size=512))
def test_statefile_any_bytes_give_a_state_or_corrupt_state_file(data: bytes) -> None:
    try:
        result = decode(data)
    except CorruptStateFile:
        return
    assert isinstance(result, SavedState)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)


@given(st.sampled_from(["format", "written_at", "life", "endpoints", "instances"]), json_values)
def test_statefile_any_value_in_any_field_is_loaded_or_refused_cleanly(
    key: str, value: object
) -> None:
    try:
        result = decode(mutated([key], value))
    except CorruptStateFile:
        return
    assert isinstance(result, SavedState)


def test_statefile_missing_file_reads_as_none(tmp_path: Path) -> None:
    assert read(tmp_path / "absent.json") is None


def test_statefile_write_replaces_the_file_whole_with_mode_0640(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, b"old")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_statefile_writer_coalesces_a_burst_into_the_latest_state(tmp_path: Path) -> None:
    path = tmp_path / "state.json"

    async def scenario() -> StateFileWriter:
        state = HealthState(required=("generate",), starting=NOTREADY, started_at=0.0)
        writer = StateFileWriter(path, state)
        stop = asyncio.Event()
        task = asyncio.create_task(writer.run(stop))
        for n in range(50):
            state.set_endpoint(f"e{n}", READY, 1.0)
        state.set_endpoint("generate", READY, 1.0)
        await asyncio.sleep(0.2)
        stop.set()
        await task
        return writer

    writer = asyncio.run(scenario())
    saved = read(path)
    assert saved is not None
    assert saved.endpoints["generate"] is READY
    assert len(saved.endpoints) == 51
    assert 1 <= writer.writes < 51


def test_statefile_writer_counts_failures_and_keeps_running(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "state.json"

    async def scenario() -> StateFileWriter:
        state = HealthState(required=(), starting=NOTREADY, started_at=0.0)
        writer = StateFileWriter(path, state)
        stop = asyncio.Event()
        task = asyncio.create_task(writer.run(stop))
        state.set_endpoint("generate", READY, 1.0)
        await asyncio.sleep(0.1)
        stop.set()
        await task
        return writer

    writer = asyncio.run(scenario())
    assert writer.failures >= 1
    assert writer.writes == 0


# -- a real sidecar, killed and started again on the same file ----------------------------


def restart(run_sidecar: Callable[..., Sidecar], old: Sidecar, env: dict[str, str]) -> Sidecar:
    old.process.kill()
    old.process.wait(timeout=5)
    return run_sidecar({**env, "DYN_SIDECAR_SOCKET": str(old.socket_path)})


def test_statefile_sigkilled_sidecar_restarts_with_a_ready_worker_still_live(
    run_sidecar: Callable[..., Sidecar],
) -> None:
    env = {"DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate"}
    first = run_sidecar(env)
    first.control("POST", "/v1/endpoints/generate/ready")
    state_file = first.socket_path.with_name("health.state.json")
    assert wait_until(
        lambda: state_file.exists() and b'"generate":"ready"' in state_file.read_bytes()
    )
    second = restart(run_sidecar, first, env)
    live = second.probe("/live")
    assert live.status_code == 200
    assert live.json()["endpoints"] == {"generate": "ready"}
    assert second.probe("/health").status_code == 200
    assert "worker life 1: saved -> alive" in second.logs()


def test_statefile_restart_keeps_an_ended_life_ended(run_sidecar: Callable[..., Sidecar]) -> None:
    env = {
        "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate",
        "DYN_SIDECAR_HEARTBEAT_TIMEOUT": "0.5",
    }
    first = run_sidecar(env)
    # Ready first: the heartbeat arms the deadline, so nothing ends before both are in.
    first.control("POST", "/v1/endpoints/generate/ready")
    first.control("POST", "/v1/heartbeat")
    assert wait_until(lambda: first.probe("/live").status_code == 503, timeout=3.0)
    state_file = first.socket_path.with_name("health.state.json")
    assert wait_until(lambda: b'"alive":false' in state_file.read_bytes())
    second = restart(run_sidecar, first, env)
    body = second.probe("/live").json()
    assert body["live"] is False
    assert body["reason"] == "worker life 1 ended: no heartbeat for 0.5s"


def test_statefile_corrupt_file_is_ignored_with_a_warning(
    run_sidecar: Callable[..., Sidecar],
) -> None:
    first = run_sidecar({"DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate"})
    first.stop(signal.SIGKILL)
    state_file = first.socket_path.with_name("health.state.json")
    state_file.write_bytes(b'{"format": 1, "life": ')
    second = run_sidecar(
        {
            "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate",
            "DYN_SIDECAR_SOCKET": str(first.socket_path),
        }
    )
    assert second.probe("/health").json()["endpoints"] == {"generate": "notready"}
    assert f"WARNING ignoring the state file {state_file}: it is not JSON" in second.logs()


def test_statefile_off_writes_nothing(run_sidecar: Callable[..., Sidecar]) -> None:
    sidecar = run_sidecar({"DYN_SIDECAR_STATE_FILE": "off"})
    sidecar.control("POST", "/v1/endpoints/generate/ready")
    assert sidecar.stop() == 0
    assert os.listdir(sidecar.socket_path.parent) == []
