"""The process watch against real processes: found, killed with SIGKILL, replaced, vanishing.

Every worker stand-in is a real process whose argv carries a marker unique to the test, so
the pattern matches it alone. They are children of the test process, which is also what the
watch would see when a sidecar starts its own worker (`demo`): a child that runs another
program is watched, only copies of the sidecar itself are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest

from sidecar.core.health import HealthState
from sidecar.core.records import Status, Subject, Transition
from sidecar.inputs import process_table
from sidecar.inputs.process import CMDLINE_CHARS, CPU_SAMPLE_SECONDS, ProcessWatch
from sidecar.inputs.process_table import Identity, identify

SLEEPER = "import time; time.sleep(60)"
# The bound the contract sets, measured from the kill to the state's change.
EXIT_BOUND = 1.0
WAIT = 5.0

Spawn = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def marker() -> str:
    return f"fake-worker-{uuid.uuid4().hex}"


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start worker stand-ins; every one is killed and reaped afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*argv: str, code: str = SLEEPER) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-c", code, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def new_state() -> HealthState:
    return HealthState(
        required=("generate",), starting=Status.NOTREADY, started_at=time.monotonic()
    )


def watching(marker: str, **options: Any) -> tuple[HealthState, ProcessWatch]:
    state = new_state()
    return state, ProcessWatch(re.compile(re.escape(marker)), state, **options)


def life_events(state: HealthState) -> list[Transition]:
    events: list[Transition] = []

    def record(transition: Transition) -> None:
        if transition.subject is Subject.LIFE:
            events.append(transition)

    state.subscribe(record)
    return events


def kill(process: subprocess.Popen[bytes]) -> float:
    """Send SIGKILL; returns when. The process stays a zombie until reaped, as workers do."""
    killed = time.monotonic()
    os.kill(process.pid, signal.SIGKILL)
    return killed


def reap(process: subprocess.Popen[bytes]) -> float:
    killed = kill(process)
    process.wait(timeout=WAIT)
    return killed


def in_loop(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


async def until(check: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll every 10 ms from the event loop, so the watch runs in between."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@contextlib.asynccontextmanager
async def running(watch: ProcessWatch) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(watch.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=WAIT)


def holds_pidfd() -> bool:
    """Whether this process holds a pidfd: the watch waits on the exit instead of polling."""
    links = []
    for fd in os.scandir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            links.append(os.readlink(fd.path))
    return "anon_inode:[pidfd]" in links


async def exit_latency(
    state: HealthState, watch: ProcessWatch, worker: subprocess.Popen[bytes], event_driven: bool
) -> float:
    """Run the watch, make the worker ready, SIGKILL it; seconds until its life ended."""
    events = life_events(state)
    async with running(watch):
        assert await until(lambda: state.life.pid == worker.pid)
        assert holds_pidfd() is event_driven
        state.set_endpoint("generate", Status.READY, time.monotonic())
        assert state.live() == (True, "")
        killed = kill(worker)
        assert await until(lambda: not state.alive, timeout=EXIT_BOUND + WAIT)
    ended = [event for event in events if event.new == "ended"]
    assert len(ended) == 1
    assert state.live() == (False, f"worker life 1 ended: its process {worker.pid} exited")
    assert state.endpoints["generate"].status is Status.NOTREADY
    assert state.status is Status.NOTREADY
    return ended[0].at - killed


# -- finding the worker ----------------------------------------------------------------------


def test_watch_step_finds_the_worker_and_records_its_pid(marker: str, spawn: Spawn) -> None:
    worker = spawn(marker)
    state, watch = watching(marker)
    try:
        watch.step()
        assert (watch.pid, state.life.pid, state.life.number, state.alive) == (
            worker.pid,
            worker.pid,
            1,
            True,
        )
        assert not watch.absent.is_set()
    finally:
        watch.close_now()


def test_watch_step_without_a_worker_finds_nothing(marker: str) -> None:
    # This process holds the pattern in its memory, not in its command line.
    state, watch = watching(marker)
    watch.step()
    assert (watch.pid, state.life.pid, watch.snapshot()) == (None, None, None)
    assert watch.absent.is_set()


# The sidecar, run by a parent whose command line carries the pattern too, with a fork of
# itself; after a first scan it starts its own worker, the youngest match of all.
SIDECAR = r"""
import json, os, re, subprocess, sys, time
import psutil
from sidecar.core.health import HealthState
from sidecar.core.records import Status
from sidecar.inputs.process import ProcessWatch
marker = sys.argv[-1]
fork = os.fork()
if fork == 0:
    time.sleep(30)
    os._exit(0)
worker = None
try:
    state = HealthState(required=(), starting=Status.NOTREADY, started_at=time.monotonic())
    watch = ProcessWatch(re.compile(re.escape(marker)), state)
    watch.step()
    before = state.life.pid
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    watch.step()
    others = [os.getppid(), os.getpid(), fork]
    matching = [pid for pid in others if marker in " ".join(psutil.Process(pid).cmdline())]
    print(json.dumps({"before": before, "found": state.life.pid, "worker": worker.pid,
                      "others": others, "matching": matching}))
    watch.close_now()
finally:
    os.kill(fork, 9)
    os.waitpid(fork, 0)
    if worker is not None:
        worker.kill()
        worker.wait()
"""
PARENT = (
    "import subprocess, sys; "
    "sys.exit(subprocess.call([sys.executable, '-c', sys.argv[1], *sys.argv[2:]]))"
)


def test_watch_excludes_the_sidecar_its_ancestors_and_its_forks(marker: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, SIDECAR, "--watch-process", marker],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = parent.communicate(timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(timeout=WAIT)
    assert parent.returncode == 0, err
    seen = json.loads(out)
    # The parent, the sidecar and its fork all match, and are older than the worker.
    assert seen["matching"] == seen["others"]
    assert seen["before"] is None
    assert seen["found"] == seen["worker"]


def test_watch_picks_the_oldest_of_several_matches(marker: str, spawn: Spawn) -> None:
    workers = []
    for _ in range(3):
        workers.append(spawn(marker))
        time.sleep(0.05)  # start times are counted in clock ticks of 10 ms
    state, watch = watching(marker)
    try:
        watch.step()
        assert state.life.pid == workers[0].pid
    finally:
        watch.close_now()


# -- noticing the exit -------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_watch_sigkill_ends_the_life_within_a_second(loop: str, marker: str, spawn: Spawn) -> None:
    worker = spawn(marker)
    state, watch = watching(marker)

    async def main() -> None:
        latency = await exit_latency(state, watch, worker, event_driven=True)
        assert latency < EXIT_BOUND

    in_loop(loop, main)


@pytest.mark.parametrize("how", ["flag", "enosys"])
def test_watch_polling_fallback_notices_the_exit_within_a_second(
    how: str,
    marker: str,
    spawn: Spawn,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if how == "enosys":

        def refused(pid: int) -> int:
            raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

        monkeypatch.setattr(os, "pidfd_open", refused, raising=False)
    worker = spawn(marker)
    state, watch = watching(marker, use_pidfd=how == "enosys")
    caplog.set_level(logging.WARNING, logger="dynamo_health_sidecar")

    async def main() -> None:
        latency = await exit_latency(state, watch, worker, event_driven=False)
        assert latency < EXIT_BOUND

    in_loop("asyncio", main)
    assert watch.use_pidfd is False
    warnings = [record.getMessage() for record in caplog.records]
    if how == "enosys":
        assert len(warnings) == 1
        assert "pidfd_open" in warnings[0] and "polling" in warnings[0]
    else:
        assert warnings == []


def test_watch_step_notices_an_unreaped_exit(marker: str, spawn: Spawn) -> None:
    worker = spawn(marker)
    state, watch = watching(marker)
    watch.step(100.0)
    kill(worker)
    deadline = time.monotonic() + WAIT
    while state.alive and time.monotonic() < deadline:
        watch.step(101.0)
    assert state.live() == (False, f"worker life 1 ended: its process {worker.pid} exited")
    assert (state.life.ended_at, watch.pid, watch.absent.is_set()) == (101.0, None, True)


def test_watch_new_process_after_an_exit_begins_the_next_life(marker: str, spawn: Spawn) -> None:
    first = spawn(marker)
    state, watch = watching(marker)
    events = life_events(state)

    async def main() -> None:
        async with running(watch):
            assert await until(lambda: state.life.pid == first.pid)
            reap(first)
            assert await until(lambda: not state.alive)
            second = spawn(marker)
            spawned = time.monotonic()
            assert await until(lambda: state.alive)
            # Scanning again every scan_interval, not at the pidfd's slow safety poll.
            assert time.monotonic() - spawned < watch.scan_interval + EXIT_BOUND
            assert (state.life.number, state.life.pid, watch.pid) == (2, second.pid, second.pid)

    in_loop("asyncio", main)
    assert [(event.name, event.new) for event in events] == [
        ("worker life 1", "ended"),
        ("worker life 2", "alive"),
    ]


def test_watch_reused_pid_is_a_new_worker(
    marker: str, spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = spawn(marker)
    state, watch = watching(marker, use_pidfd=False)
    events = life_events(state)
    # A process just started may miss the first scan (seen once in CI): scan until it is found.
    deadline = time.monotonic() + WAIT
    while state.life.pid != worker.pid and time.monotonic() < deadline:
        watch.step(100.0)
        time.sleep(0.01)
    assert state.life.pid == worker.pid, "the watch never found the worker"
    real = identify

    def later(pid: int) -> Identity | None:
        # The same pid, a process started a second later: another process.
        identity = real(pid)
        if identity is None or pid != worker.pid:
            return identity
        return dataclasses.replace(identity, started=identity.started + 1.0)

    monkeypatch.setattr(process_table, "identify", later)
    watch.step(101.0)
    assert [(event.name, event.new, event.reason) for event in events] == [
        ("worker life 1", "ended", f"its process {worker.pid} exited"),
        ("worker life 2", "alive", ""),
    ]
    assert (state.life.number, state.life.pid) == (2, worker.pid)


def test_watch_identify_tells_processes_apart_by_start_time(marker: str, spawn: Spawn) -> None:
    worker = spawn(marker)
    identity = identify(worker.pid)
    assert identity is not None
    assert identity == identify(worker.pid)
    assert identity.pid == worker.pid
    assert identity != dataclasses.replace(identity, started=identity.started + 0.01)
    mine = identify(os.getpid())
    assert mine is not None
    assert mine < identity  # this process is the older one
    kill(worker)
    deadline = time.monotonic() + WAIT
    while identify(worker.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert identify(worker.pid) is None  # a zombie, not yet reaped
    worker.wait(timeout=WAIT)
    assert identify(worker.pid) is None


# -- reporting the worker ----------------------------------------------------------------


def test_watch_snapshot_reports_pid_cpu_and_memory(marker: str, spawn: Spawn) -> None:
    worker = spawn(marker, code="while True: pass")
    _, watch = watching(marker)
    try:
        watch.step()
        info = watch.snapshot()
        assert info is not None
        assert (info.pid, marker in info.cmdline) == (worker.pid, True)
        assert info.rss_bytes > 0
        assert info.create_time == pytest.approx(psutil.Process(worker.pid).create_time())
        # A busy loop, measured since the previous snapshot (a loaded machine may be slow
        # to start it: look a few times).
        deadline = time.monotonic() + WAIT
        while info is not None and info.cpu_percent <= 10.0 and time.monotonic() < deadline:
            time.sleep(0.2)
            info = watch.snapshot()
        assert info is not None and info.cpu_percent > 10.0
    finally:
        watch.close_now()


def test_watch_snapshots_close_together_share_one_cpu_sample(marker: str, spawn: Spawn) -> None:
    spawn(marker)
    clock = [100.0]
    watch = ProcessWatch(re.compile(re.escape(marker)), new_state(), clock=lambda: clock[0])
    try:
        watch.step()
        first = watch.snapshot()
        clock[0] += CPU_SAMPLE_SECONDS / 2  # a second gauge of the same scrape, say
        assert watch.snapshot() is first
        clock[0] += CPU_SAMPLE_SECONDS
        later = watch.snapshot()
        assert first is not None and later is not None and later is not first
    finally:
        watch.close_now()


def test_watch_snapshot_shortens_a_long_command_line(marker: str, spawn: Spawn) -> None:
    spawn(marker, "x" * 500)
    _, watch = watching(marker)
    try:
        watch.step()
        info = watch.snapshot()
        assert info is not None
        assert len(info.cmdline) == CMDLINE_CHARS
        assert info.cmdline.endswith("...")
    finally:
        watch.close_now()


def test_watch_snapshot_is_none_once_the_worker_is_gone(marker: str, spawn: Spawn) -> None:
    worker = spawn(marker)
    _, unreaped = watching(marker)
    _, reaped = watching(marker, use_pidfd=False)
    unreaped.step()
    reaped.step()
    assert unreaped.snapshot() is not None and reaped.snapshot() is not None
    kill(worker)
    deadline = time.monotonic() + WAIT
    while unreaped.snapshot() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert unreaped.snapshot() is None  # the exit is not yet noticed by a step
    worker.wait(timeout=WAIT)
    assert reaped.snapshot() is None
    assert reaped.pid == worker.pid
    unreaped.close_now()
    reaped.close_now()


# -- robustness --------------------------------------------------------------------------


CHURN = """while :; do sh -c 'sleep 0.0$(( $$ % 4 )); :' "$MARKER"; /bin/true "$MARKER"; done"""


def test_watch_processes_vanishing_mid_scan_raise_nothing(
    marker: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A shell (the marker only in its environment) starting matching processes one after the
    # other, each living 0 to 30 ms, some (`true`) gone before any scan can read them.
    churn = subprocess.Popen(
        ["sh", "-c", CHURN],
        env={**os.environ, "MARKER": marker},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    caplog.set_level(logging.WARNING, logger="dynamo_health_sidecar")
    watches = [watching(marker, use_pidfd=use_pidfd) for use_pidfd in (True, False)]
    try:
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            for _, watch in watches:
                watch.step()
                watch.snapshot()
    finally:
        churn.kill()
        churn.wait(timeout=WAIT)
        for _, watch in watches:
            watch.close_now()
    assert caplog.records == []
    # Both watches did find processes and see them go, again and again.
    assert all(state.life.number > 3 for state, _ in watches)


def test_watch_errors_are_logged_once_and_the_watch_goes_on(
    marker: str,
    spawn: Spawn,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = spawn(marker)
    state, watch = watching(marker, scan_interval=0.02)
    caplog.set_level(logging.DEBUG, logger="dynamo_health_sidecar")
    real = psutil.process_iter
    failures: list[int] = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        failures.append(1)
        raise RuntimeError("proc is unreadable")

    monkeypatch.setattr(psutil, "process_iter", broken)

    async def main() -> None:
        async with running(watch):
            assert await until(lambda: len(failures) >= 5)
            monkeypatch.setattr(psutil, "process_iter", real)
            assert await until(lambda: state.life.pid == worker.pid)

    in_loop("asyncio", main)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "proc is unreadable" in warnings[0]


def test_watch_close_releases_the_pidfd_and_leaves_the_life_alone(
    marker: str, spawn: Spawn
) -> None:
    worker = spawn(marker)
    state, watch = watching(marker)
    before = len(os.listdir("/proc/self/fd"))
    watch.step()
    assert len(os.listdir("/proc/self/fd")) == before + 1
    watch.close_now()
    assert len(os.listdir("/proc/self/fd")) == before
    assert (watch.pid, state.alive, state.life.pid) == (None, True, worker.pid)
    assert watch.absent.is_set()


def test_watch_run_stops_when_asked_and_closes(marker: str, spawn: Spawn) -> None:
    worker = spawn(marker)
    state, watch = watching(marker)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(watch.run(stop))
        assert await until(lambda: watch.pid == worker.pid)
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, timeout=WAIT)
        assert time.monotonic() - started < 0.5  # not after the slow safety poll

    in_loop("asyncio", main)
    assert (watch.pid, state.alive) == (None, True)
