"""The state file: its format, its atomic writes, and a real sidecar restarted on it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from conftest import Sidecar, wait_until
from hypothesis import given
from hypothesis import strategies as st

from sidecar.component import NotSaved
from sidecar.core.health import HealthState
from sidecar.core.records import (
    MAX_ENDPOINTS,
    MAX_INSTANCES,
    CapacityError,
    EndCause,
    Instance,
    SavedState,
    Status,
)
from sidecar.outputs.state_writer import StateFileWriter
from sidecar.outputs.statefile import (
    MAX_BYTES,
    CorruptStateFile,
    decode,
    encode,
    read,
    remove_leftovers,
    write_atomic,
)

READY, NOTREADY = Status.READY, Status.NOTREADY
MISSED = EndCause.HEARTBEAT_MISSED
NOT_A_STATE = (
    "the file is not an object with the keys endpoints, format, instances, leases, life, written_at"
)
NOT_A_FORMAT_1_STATE = (
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


def test_statefile_keeps_why_a_life_ended_as_a_value() -> None:
    saved = saved_state(alive=False, end_reason="no heartbeat for 5s", end_cause=MISSED)
    assert decode(encode(saved, 0.0)).end_cause is MISSED


def test_statefile_reads_a_file_from_before_the_end_cause_was_kept() -> None:
    document = json.loads(encode(saved_state(alive=False, end_cause=MISSED), 0.0))
    del document["life"]["end_cause"]
    assert decode(json.dumps(document).encode()).end_cause is None


def test_statefile_keeps_every_digit_of_an_instance_id() -> None:
    assert b'"instance_id":18446744073709551615' in encode(saved_state(), 0.0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "it is not JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"[]", NOT_A_STATE),
        (b'{"format": 1}', NOT_A_FORMAT_1_STATE),
        (b'{"format": 2}', NOT_A_STATE),
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
        (["format"], 3, "its format is 3; this sidecar reads formats 1 and 2"),
        (["format"], True, "its format is True; this sidecar reads formats 1 and 2"),
        (["leases"], [], "leases is not an object"),
        (["leases"], {"XYZ": 10}, "lease 'XYZ' is not 16 hexadecimal digits"),
        (
            ["leases"],
            {"00112233aabbccdd": "10"},
            "lease 00112233aabbccdd has a TTL that is not a number",
        ),
        (
            ["leases"],
            {"00112233aabbccdd": 0},
            "lease 00112233aabbccdd has a TTL outside 0.1 to 3600",
        ),
        (["instances", 0, "extra"], [], "instance 0 has extra fields that are not an object"),
        (
            ["instances", 0, "lease"],
            "x",
            "instance 0 has a lease that is not 16 hexadecimal digits",
        ),
        (["life", "number"], 0, "life.number is not an integer from 1 to 18446744073709551615"),
        (["life", "alive"], "yes", "life.alive is not true or false"),
        (["life", "pid"], -1, "life.pid is not an integer from 1 to 2147483647"),
        (["life", "declared"], "maybe", "life.declared is not ready or notready"),
        (
            ["life", "end_cause"],
            "crashed",
            "life.end_cause is not one of exited, heartbeat-missed, unresponsive",
        ),
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


# -- whatever sits at the path ------------------------------------------------------------


def read_in_a_thread(path: Path) -> str:
    """What `read` says, from a thread, so a read that blocks fails the test, not hangs it."""
    said: list[str] = []

    def attempt() -> None:
        try:
            said.append(f"read {read(path)}")
        except CorruptStateFile as exc:
            said.append(str(exc))

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(2.0)
    assert said, "read() blocked"
    return said[0]


def test_statefile_symbolic_link_is_refused_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_bytes(encode(saved_state(), 0.0))
    (tmp_path / "state.json").symlink_to(target)
    said = read_in_a_thread(tmp_path / "state.json")
    assert said == "it is a symbolic link, which the sidecar does not follow"


def test_statefile_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "state.json")
    said = read_in_a_thread(tmp_path / "state.json")
    assert said == "it is not a regular file but a FIFO"


def test_statefile_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()
    assert read_in_a_thread(tmp_path / "state.json") == "it is not a regular file but a directory"


def test_statefile_socket_is_refused(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(tmp_path / "state.json"))
        said = read_in_a_thread(tmp_path / "state.json")
    assert said == "it is not a regular file but a socket"


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_statefile_character_device_is_refused(tmp_path: Path) -> None:
    os.mknod(tmp_path / "state.json", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's
    said = read_in_a_thread(tmp_path / "state.json")
    assert said == "it is not a regular file but a character device"


def test_statefile_file_over_the_limit_is_refused_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    with path.open("wb") as file:
        file.truncate(MAX_BYTES + 1)  # sparse: nothing is read to find out
    said = read_in_a_thread(path)
    assert said == f"it has {MAX_BYTES + 1} bytes, over the limit of {MAX_BYTES}"


def test_statefile_write_never_follows_a_link_planted_at_a_temporary_name(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    # The names a write could have used before: the pid alone was predictable.
    (tmp_path / f".state.json.{os.getpid()}.tmp").symlink_to(victim)
    write_atomic(tmp_path / "state.json", b"new")
    assert victim.read_bytes() == b"precious"
    assert (tmp_path / "state.json").read_bytes() == b"new"


def test_statefile_leftover_temporary_copies_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    (tmp_path / ".state.json.123.0f0f0f0f0f0f0f0f.tmp").write_bytes(b"half a state")
    (tmp_path / ".state.json.456.tmp").write_bytes(b"an older sidecar's")
    (tmp_path / ".other.json.789.tmp").write_bytes(b"not ours")
    remove_leftovers(path)
    assert sorted(os.listdir(tmp_path)) == [".other.json.789.tmp"]


def test_statefile_leftovers_of_a_name_with_glob_characters_are_found(tmp_path: Path) -> None:
    path = tmp_path / "a**[b].json"
    (tmp_path / ".a**[b].json.1.ff.tmp").write_bytes(b"half a state")
    (tmp_path / ".aXX[b].json.1.ff.tmp").write_bytes(b"not ours")
    remove_leftovers(path)
    assert os.listdir(tmp_path) == [".aXX[b].json.1.ff.tmp"]


def test_statefile_fifo_at_the_path_does_not_block_the_start(
    run_sidecar: Callable[..., Sidecar], tmp_path: Path
) -> None:
    state_file = tmp_path / "fifo.state.json"
    os.mkfifo(state_file)
    sidecar = run_sidecar({"DYN_SIDECAR_STATE_FILE": str(state_file)})
    assert sidecar.probe("/health").status_code == 503
    assert (
        f"WARNING ignoring the state file {state_file}: it is not a regular file but a FIFO; "
        "starting fresh" in sidecar.logs()
    )


# -- answered means durable: group commit ---------------------------------------------------


def run_writer(
    path: Path, scenario: Callable[[HealthState, StateFileWriter], Awaitable[object]]
) -> tuple[StateFileWriter, object]:
    async def main() -> tuple[StateFileWriter, object]:
        state = HealthState(required=(), starting=NOTREADY, started_at=0.0)
        writer = StateFileWriter(path, state)
        stop = asyncio.Event()
        task = asyncio.create_task(writer.run(stop))
        try:
            result = await scenario(state, writer)
        finally:
            stop.set()
            await task
        return writer, result

    return asyncio.run(main())


def test_statefile_saved_returns_once_the_file_holds_the_change(tmp_path: Path) -> None:
    path = tmp_path / "state.json"

    async def scenario(state: HealthState, writer: StateFileWriter) -> object:
        state.set_endpoint("generate", READY, 1.0)
        await writer.saved()
        saved = read(path)  # no wait, no sleep: the file already holds it
        return saved.endpoints if saved else None

    _, endpoints = run_writer(path, scenario)
    assert endpoints == {"generate": READY}


def test_statefile_concurrent_changes_share_writes(tmp_path: Path) -> None:
    path = tmp_path / "state.json"

    async def scenario(state: HealthState, writer: StateFileWriter) -> object:
        async def request(n: int) -> None:
            state.set_endpoint(f"e{n}", READY, 1.0)
            await writer.saved()

        await asyncio.gather(*(request(n) for n in range(200)))
        return writer.writes

    _, writes = run_writer(path, scenario)
    saved = read(path)
    assert saved is not None and len(saved.endpoints) == 200
    assert isinstance(writes, int) and 1 <= writes <= 3, writes


def test_statefile_saved_without_a_change_does_not_write(tmp_path: Path) -> None:
    async def scenario(state: HealthState, writer: StateFileWriter) -> object:
        state.set_endpoint("generate", READY, 1.0)
        await writer.saved()
        before = writer.writes
        state.set_endpoint("generate", READY, 2.0)  # the same status: nothing to save
        await writer.saved()
        return writer.writes - before

    _, extra = run_writer(tmp_path / "state.json", scenario)
    assert extra == 0


def test_statefile_saved_refuses_while_the_file_cannot_be_written(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "state.json"

    async def scenario(state: HealthState, writer: StateFileWriter) -> object:
        said = []
        for status in (READY, NOTREADY):
            state.set_endpoint("generate", status, 1.0)
            try:
                await writer.saved()
            except NotSaved as exc:
                said.append(str(exc))
        return said

    writer, said = run_writer(path, scenario)
    message = (
        f"the change is applied but the state file {path} cannot be written: "
        "[Errno 2] No such file or directory"
    )
    assert said == [message, message]
    assert writer.writes == 0 and writer.failures >= 1


def test_statefile_failed_write_is_tried_again_without_a_new_change(tmp_path: Path) -> None:
    path = tmp_path / "later" / "state.json"

    async def scenario(state: HealthState, writer: StateFileWriter) -> object:
        state.set_endpoint("generate", READY, 1.0)
        with contextlib.suppress(NotSaved):
            await writer.saved()
        path.parent.mkdir()
        for _ in range(100):  # backoff starts at 0.1 s
            await asyncio.sleep(0.02)
            if path.exists():
                return True
        return False

    writer, written = run_writer(path, scenario)
    assert written is True and writer.failures >= 1


def test_statefile_saved_refuses_once_the_writer_has_stopped(tmp_path: Path) -> None:
    async def main() -> str:
        state = HealthState(required=(), starting=NOTREADY, started_at=0.0)
        writer = StateFileWriter(tmp_path / "state.json", state)
        stop = asyncio.Event()
        stop.set()
        await writer.run(stop)
        state.set_endpoint("generate", READY, 1.0)
        try:
            await writer.saved()
        except NotSaved as exc:
            return str(exc)
        return "saved"

    assert asyncio.run(main()) == "the sidecar is stopping and takes no more changes"


# -- the largest state the limits allow ------------------------------------------------------


def largest_state() -> HealthState:
    """4,096 endpoints and as many instances as fit, every name at its longest."""
    state = HealthState(required=(), starting=NOTREADY, started_at=0.0)
    for n in range(MAX_ENDPOINTS):
        state.set_endpoint(f"{n:04d}".ljust(128, "e"), READY, 1.0)
    name = "n" * 128
    transport = {"nats_tcp": "t" * 200}
    with contextlib.suppress(CapacityError):
        for n in range(MAX_INSTANCES):
            state.register_instance(Instance(name, name, name, 2**64 - 1 - n, transport, True), 1.0)
    return state


def test_statefile_largest_state_round_trips_within_the_read_limit() -> None:
    state = largest_state()
    data = encode(state.save(), 1.0)
    assert len(data) <= MAX_BYTES
    assert decode(data) == state.save()
    assert len(state.instances) < MAX_INSTANCES  # the byte budget, not the count, stopped it


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_statefile_largest_state_fits_the_charts_volume_with_its_copy(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(volume)], check=True)
    try:
        data = encode(largest_state().save(), 1.0)
        write_atomic(volume / "health.state.json", data)
        write_atomic(volume / "health.state.json", data)  # the copy beside the old file
        assert read(volume / "health.state.json") is not None
    finally:
        subprocess.run(["umount", str(volume)], check=True)


def test_statefile_restarted_sidecar_reads_the_largest_state_back_whole(
    run_sidecar: Callable[..., Sidecar], tmp_path: Path
) -> None:
    state = largest_state()
    state_file = tmp_path / "largest.state.json"
    state_file.write_bytes(encode(state.save(), 1.0))
    sidecar = run_sidecar({"DYN_SIDECAR_STATE_FILE": str(state_file)})
    worker = sidecar.control("GET", "/v1/worker").json()
    assert len(worker["endpoints"]) == MAX_ENDPOINTS
    assert worker["instances"] == len(state.instances)
    assert "ignoring the state file" not in sidecar.logs()
