"""Wiring: build the state and both apps, run both uvicorn servers in one loop, shut down.

The supervisor owns the signals, not uvicorn: a handler only sets an event, and `serve`
reads top to bottom: bind, start, wait for a signal, drain, stop, clean up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import logging
import os
import resource
import signal
import socket
import stat
import time
from collections.abc import Callable, Generator
from pathlib import Path

import uvicorn

from sidecar.component import StartupError
from sidecar.core.health import HealthState
from sidecar.core.records import Subject, Transition
from sidecar.core.verdict import Verdicts
from sidecar.http_limits import BoundedHttpToolsProtocol
from sidecar.inputs.active_checks import ActiveChecks
from sidecar.inputs.deadlines import DeadlineWatch
from sidecar.inputs.notify import NotifyListener, NotifySocketError
from sidecar.inputs.process import ProcessWatch, identify
from sidecar.inputs.socket_api import build_control_app, nothing_to_save
from sidecar.kube.api import official_api
from sidecar.kube.reporter import KubeReporter
from sidecar.outputs import statefile
from sidecar.outputs.metrics import ProbeMetrics
from sidecar.outputs.probe_port import build_probe_app, probe_paths
from sidecar.outputs.statefile import StateFileWriter
from sidecar.settings import Mode, Settings

logger = logging.getLogger("dynamo_health_sidecar")

SOCKET_MODE = 0o660
# Time for a held session to see the end of its response before connections are cut.
GRACEFUL_SECONDS = 1
KUBE_FLUSH_SECONDS = 2.0


class Server(uvicorn.Server):
    """A uvicorn server that leaves the signals to the supervisor."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def listen(self, sock: socket.socket) -> None:
        """Serve one more listening socket, as `startup` serves those it was given; it is
        closed with the others at shutdown."""
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )

        loop = asyncio.get_running_loop()
        self.servers.append(await loop.create_server(create_protocol, sock=sock))


def bind_probe_socket(host: str, port: int) -> socket.socket:
    """Listen on every interface by default: IPv6 with IPv4 mapped, or IPv4 alone."""
    candidates = (
        [(host, socket.AF_INET6 if ":" in host else socket.AF_INET)]
        if host
        else [
            ("::", socket.AF_INET6),
            ("0.0.0.0", socket.AF_INET),
        ]
    )
    last_error: OSError | None = None
    for address, family in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # "::" means every interface, IPv4 included, as on most Linux hosts.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(address != "::"))
            sock.bind((address, port))
            sock.listen(1024)
        except OSError as exc:
            sock.close()
            last_error = exc
            if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL) or host:
                break
            continue
        sock.setblocking(False)
        return sock
    shown = host or "every interface"
    raise StartupError(f"cannot listen on {shown} port {port}: {last_error}")


def bind_control_socket(path: Path) -> socket.socket:
    """Create the worker's socket with mode 0660, replacing a stale one from a previous run."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create the socket's directory {path.parent}: {exc}") from None
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask makes the file 0660 from its first moment, and listen() follows bind() at
    # once: a worker that connects as soon as the file appears is queued, not refused.
    old_umask = os.umask(0o117)
    try:
        sock.bind(str(path))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot create the worker's socket {path}: {exc}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, SOCKET_MODE)
    sock.setblocking(False)
    return sock


class SocketFile:
    """The worker's socket file: created at start, created again if someone deletes it
    while the sidecar runs (a worker could not connect any more, while the probes went on
    with a frozen state), and removed at the end only if it is still ours."""

    CHECK_SECONDS = 0.5

    def __init__(self, path: Path) -> None:
        self.path = path
        self._inode: int | None = None

    def bind(self) -> socket.socket:
        sock = bind_control_socket(self.path)
        self._inode = os.stat(self.path).st_ino
        return sock

    async def keep(self, server: Server, stopping: asyncio.Event) -> None:
        """Until `stopping`: when the file is gone, bind it again and serve it too."""
        failing = False
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.CHECK_SECONDS)
            if stopping.is_set() or self.path.exists():
                continue
            try:
                sock = self.bind()
            except StartupError as exc:
                if not failing:  # once, not every half second
                    logger.warning("the worker's socket %s is gone: %s", self.path, exc)
                failing = True
                continue
            failing = False
            await server.listen(sock)
            logger.warning(
                "the worker's socket %s was deleted while the sidecar ran; created it again",
                self.path,
            )

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()


def _remove_stale_socket(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise StartupError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        logger.info("replaced the stale socket %s left by a previous run", path)
        return
    finally:
        probe.close()
    raise StartupError(f"{path} is in use by another running process; is a sidecar already there?")


def restore(state: HealthState, path: Path, now: float, pids_visible: bool) -> None:
    """Continue the worker's life from the state file, or start fresh when it can't be trusted.

    With the process watch on, the pod shares its process namespace, so the saved pid can be
    checked: a saved live life whose process is gone is another worker life's file.
    """
    try:
        saved = statefile.read(path)
    except statefile.CorruptStateFile as exc:
        logger.warning("ignoring the state file %s: %s; starting fresh", path, exc)
        return
    if saved is None:
        return
    if pids_visible and saved.alive and saved.pid is not None and identify(saved.pid) is None:
        logger.warning(
            "ignoring the state file %s: it is from another worker life (process %d is gone); "
            "starting fresh",
            path,
            saved.pid,
        )
        return
    state.restore(saved, now)


def start_watchers(
    settings: Settings,
    state: HealthState,
    watch: ProcessWatch | None,
    stopping: asyncio.Event,
    clock: Callable[[], float],
) -> list[asyncio.Task[None]]:
    """The loops beside the servers; each returns once `stopping` is set."""
    loops = []
    if watch is not None:
        loops.append(watch.run(stopping))
    loops.append(DeadlineWatch(state, clock).run(stopping))
    return [asyncio.create_task(loop) for loop in loops]


def watch_state_file(metrics: ProbeMetrics, writer: StateFileWriter) -> None:
    metrics.add_counter(
        "dynamo_sidecar_state_file_writes",
        "Writes of the state file.",
        lambda: writer.writes,
    )
    metrics.add_counter(
        "dynamo_sidecar_state_file_write_failures",
        "Writes of the state file that failed (each is tried again with backoff).",
        lambda: writer.failures,
    )


def process_view(watch: ProcessWatch | None) -> dict[str, object] | None:
    """What `GET /v1/worker` shows of the watched process."""
    info = None if watch is None else watch.snapshot()
    return None if info is None else dataclasses.asdict(info)


def watch_process(metrics: ProbeMetrics, watch: ProcessWatch) -> None:
    def read(field: str) -> float | None:
        info = watch.snapshot()
        return None if info is None else float(getattr(info, field))

    metrics.add_gauge("dynamo_sidecar_worker_pid", "The watched worker's pid.", lambda: read("pid"))
    metrics.add_gauge(
        "dynamo_sidecar_worker_cpu_percent",
        "The watched worker's CPU use, in percent of one core.",
        lambda: read("cpu_percent"),
    )
    metrics.add_gauge(
        "dynamo_sidecar_worker_resident_memory_bytes",
        "The watched worker's resident memory.",
        lambda: read("rss_bytes"),
    )


KUBE_COUNTERS = (
    ("events_created", "events_created", "Events created on the pod."),
    ("events_updated", "events_updated", "Events whose count was raised instead of another."),
    ("condition_patches", "condition_patches", "Patches of the pod condition."),
    ("failures", "failures", "Calls to the API server that failed."),
    ("dropped", "dropped", "Reports dropped because the queue was full (oldest first)."),
    ("filtered", "filtered_events", "Events held back by the spam filter, as the kubelet's."),
    ("abandoned", "abandoned_events", "Events given up after their retries."),
)


def watch_kube(metrics: ProbeMetrics, reporter: KubeReporter) -> None:
    for field, name, documentation in KUBE_COUNTERS:
        read = functools.partial(getattr, reporter, field)
        metrics.add_counter(f"dynamo_sidecar_kube_{name}", documentation, read)
    metrics.add_gauge(
        "dynamo_sidecar_kube_queue_length",
        "Reports waiting to be sent to the API server.",
        lambda: reporter.queue_length,
    )


def watch_notify(metrics: ProbeMetrics, notify: NotifyListener) -> None:
    metrics.add_counter(
        "dynamo_sidecar_notify_datagrams",
        "sd_notify datagrams received.",
        lambda: notify.received,
    )
    metrics.add_counter(
        "dynamo_sidecar_notify_malformed_datagrams",
        "sd_notify datagrams ignored because they were malformed.",
        lambda: notify.malformed,
    )


def log_transition(transition: Transition) -> None:
    # A life that ends, or a lease whose holder vanished, is what an operator looks for.
    vanished = transition.subject is Subject.LEASE and transition.new == "gone"
    ended = transition.subject is Subject.LIFE and transition.new == "ended"
    revoked = transition.reason.startswith("revoked")
    level = logging.WARNING if ended or (vanished and not revoked) else logging.INFO
    fields = {
        "event": "transition",
        "subject": transition.subject.value,
        "name": transition.name,
        "old": transition.old,
        "new": transition.new,
        "after_seconds": round(transition.after, 3),
    }
    if transition.reason:
        fields["reason"] = transition.reason
    logger.log(level, transition.describe(), extra={"fields": fields})


def describe_start(settings: Settings, probe: socket.socket, control: Path) -> str:
    host, port = probe.getsockname()[:2]
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    required = ",".join(settings.required_endpoints) or "none (every announced endpoint counts)"
    timeout = settings.heartbeat_timeout
    heartbeat = "off" if timeout is None else f"{timeout:g}s"
    return (
        f"serving probes on http://{where} (health {settings.health_path}, live "
        f"{settings.live_path}, ready /ready, metrics /metrics) and the worker's socket on "
        f"{control}; mode {settings.mode.value}, required endpoints {required}, starting status "
        f"{settings.starting_status.value}, liveness {settings.liveness.value}, heartbeat "
        f"timeout {heartbeat}, drain {settings.drain_seconds:g}s, state file "
        f"{settings.state_file or 'off'}, sd_notify {settings.notify_socket or 'off'}, process "
        f"watch {settings.watch_process.pattern if settings.watch_process else 'off'}"
    )


def uvicorn_config(app: object) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        loop="none",
        http=BoundedHttpToolsProtocol,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
    )


# Signals a person sends by habit (reload, reopen logs, dump): by default each would kill the
# sidecar without its drain, and the pod's probes would fail until the kubelet restarts it.
HABIT_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def ignore_signal(signum: int) -> None:
    logger.warning(
        "ignoring %s: the sidecar has nothing to reload; SIGTERM drains and stops it",
        signal.Signals(signum).name,
    )


def raise_descriptor_limit() -> None:
    """Raise the soft limit of open files to the hard one: each probe, held session and client
    costs a descriptor, and a container runtime's soft default (often 1,024) is what runs out
    first under many clients, while the hard limit is there to be used."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:  # the kernel caps open files at fs.nr_open anyway
        with open("/proc/sys/fs/nr_open") as nr_open:
            hard = int(nr_open.read())
    if soft >= hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        logger.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
        return
    logger.debug("raised the open-file limit from %d to %d", soft, hard)


async def serve(settings: Settings) -> int:
    """Run the sidecar until SIGTERM or SIGINT; returns the exit code."""
    raise_descriptor_limit()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    for signum in HABIT_SIGNALS:
        loop.add_signal_handler(signum, ignore_signal, signum)

    clock = time.monotonic
    state = HealthState(
        required=settings.required_endpoints,
        starting=settings.starting_status,
        started_at=clock(),
        liveness=settings.liveness,
        heartbeat_timeout=settings.heartbeat_timeout,
        frontend=settings.mode is Mode.FRONTEND,
    )
    state.subscribe(log_transition)
    verdicts = Verdicts(state, settings.frontend_shape)
    metrics = ProbeMetrics(state, probe_paths(settings), clock=clock)
    stopping = asyncio.Event()
    reporter = None
    cluster = settings.kube_cluster
    if cluster is not None:
        assert cluster.pod is not None
        reporter = KubeReporter(cluster.pod, official_api(cluster), settings.kube_condition)
        # Before the state is restored, so its restoration and condition are reported too.
        reporter.attach(state)
        watch_kube(metrics, reporter)

    probe_sock = bind_probe_socket(settings.host, settings.port)
    socket_file = SocketFile(settings.socket_path)
    try:
        control_sock = socket_file.bind()
    except StartupError:
        probe_sock.close()
        raise
    notify = None
    if settings.notify_socket is not None:
        notify = NotifyListener(settings.notify_socket, state, clock)
        try:
            notify.start()
        except NotifySocketError as exc:
            probe_sock.close()
            control_sock.close()
            socket_file.remove()
            raise StartupError(str(exc)) from None
        watch_notify(metrics, notify)
    # Both sockets are bound (connections wait in their backlogs), so a probe can only
    # ever see the restored state.
    writer = None
    if settings.state_file is not None:
        statefile.remove_leftovers(settings.state_file)
        restore(state, settings.state_file, clock(), settings.watch_process is not None)
        writer = StateFileWriter(settings.state_file, state)
        watch_state_file(metrics, writer)

    watch = None
    if settings.watch_process is not None:
        watch = ProcessWatch(settings.watch_process, state, clock)
        watch_process(metrics, watch)
    checks = ActiveChecks.build(settings, state, metrics, clock)

    probe = Server(uvicorn_config(build_probe_app(settings, verdicts, metrics, clock)))
    control_app = build_control_app(
        settings,
        state,
        verdicts,
        stopping,
        clock,
        lambda: process_view(watch),
        checks.view,
        nothing_to_save if writer is None else writer.saved,
    )
    control = Server(uvicorn_config(control_app))
    probe_server = asyncio.create_task(probe.serve(sockets=[probe_sock]), name="probe-server")
    control_server = asyncio.create_task(
        control.serve(sockets=[control_sock]), name="control-server"
    )
    saving = asyncio.Event()
    writing = None if writer is None else asyncio.create_task(writer.run(saving))
    watchers = start_watchers(settings, state, watch, stopping, clock)
    watchers += [asyncio.create_task(loop) for loop in checks.loops(stopping)]
    watchers.append(asyncio.create_task(socket_file.keep(control, stopping)))
    logger.info(describe_start(settings, probe_sock, settings.socket_path))
    if reporter is not None:
        reporter.start()
        logger.info(
            "reporting to Kubernetes: events on pod %s/%s and its condition %s",
            reporter.pod.namespace,
            reporter.pod.name,
            reporter.condition_type,
        )
    elif settings.kube_off_reason:
        logger.info(
            "Kubernetes reporting is off (DYN_SIDECAR_KUBE=auto): %s",
            settings.kube_off_reason,
        )

    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait(
        [stopped, probe_server, control_server], return_when=asyncio.FIRST_COMPLETED
    )
    exit_code = 0
    if stopped in done:
        stop.clear()
        await drain(state, settings.drain_seconds, stop, clock)
    else:
        logger.error("a server stopped unexpectedly; shutting down")
        exit_code = 1
        stopped.cancel()

    # Ordered shutdown: stop the watchers and end held sessions (the worker's life goes
    # on); stop the worker's socket, so nothing is answered after the last write; write
    # the state a last time; stop the probes; remove the socket file if it is still ours.
    stopping.set()
    await asyncio.gather(*watchers, return_exceptions=True)
    control.should_exit = True
    await asyncio.gather(control_server, return_exceptions=True)
    saving.set()
    if writing is not None:
        await asyncio.gather(writing, return_exceptions=True)
    probe.should_exit = True
    await asyncio.gather(probe_server, return_exceptions=True)
    if notify is not None:
        notify.close()
    if reporter is not None:
        # The drain's last events go out if the API answers within this.
        await reporter.aclose(KUBE_FLUSH_SECONDS)
    socket_file.remove()
    ignore_late_signals(loop)
    logger.info("stopped")
    return exit_code


def ignore_late_signals(loop: asyncio.AbstractEventLoop) -> None:
    """Once everything is stopped, a signal changes nothing: it must not turn a clean exit
    into death by signal. Closing the loop would restore the default handlers."""
    for signum in (signal.SIGTERM, signal.SIGINT, *HABIT_SIGNALS):
        loop.remove_signal_handler(signum)
        signal.signal(signum, signal.SIG_IGN)


async def drain(
    state: HealthState, seconds: float, again: asyncio.Event, clock: Callable[[], float]
) -> None:
    """Fail readiness at once and keep answering until the worker's life ends or `seconds`
    pass, whichever is first (docs/protocol.md section 6); a second signal cuts it short."""
    state.drain(clock())
    if not state.alive:
        logger.info("draining: the worker's life has already ended; exiting now")
        return
    logger.info("draining: readiness fails, liveness holds; exiting in %gs at most", seconds)
    worker_gone = asyncio.Event()
    state.subscribe(lambda t: worker_gone.set() if t.subject is Subject.LIFE else None)
    waits = [asyncio.ensure_future(again.wait()), asyncio.ensure_future(worker_gone.wait())]
    done, pending = await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for waiter in pending:
        waiter.cancel()
    if waits[0] in done:
        logger.info("draining: a second signal; exiting now")
    elif waits[1] in done:
        logger.info("draining: the worker's life has ended; exiting now")
