"""The supervisor: build the sidecar, start its adapters in order, wait, drain, close.

It owns the signals, not uvicorn: a handler only sets an event, and `serve` reads top to
bottom: build, start every adapter (sidecar/assembly.py gives the order), run their loops,
wait for a signal or a loop that fails, drain, then close the adapters in reverse order
(docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import time
from collections.abc import Callable, Collection
from typing import Any

from sidecar.assembly import build
from sidecar.component import Adapter, AdapterStopped
from sidecar.core.health import HealthState
from sidecar.core.records import Subject, Transition
from sidecar.kube.cluster import Discovery
from sidecar.settings import Settings

logger = logging.getLogger("dynamo_health_sidecar")


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


def describe_start(settings: Settings, address: str) -> str:
    required = ",".join(settings.required_endpoints) or "none (every announced endpoint counts)"
    timeout = settings.heartbeat_timeout
    heartbeat = "off" if timeout is None else f"{timeout:g}s"
    return (
        f"serving probes on http://{address} (health {settings.health_path}, live "
        f"{settings.live_path}, ready /ready, metrics /metrics) and the worker's socket on "
        f"{settings.socket_path}; mode {settings.mode.value}, required endpoints {required}, "
        f"starting status {settings.starting_status.value}, liveness {settings.liveness.value}, "
        f"heartbeat timeout {heartbeat}, drain {settings.drain_seconds:g}s, state file "
        f"{settings.state_file or 'off'}, sd_notify {settings.notify_socket or 'off'}, process "
        f"watch {settings.watch_process.pattern if settings.watch_process else 'off'}"
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


async def serve(settings: Settings, found: Discovery) -> int:
    """Run the sidecar until SIGTERM or SIGINT, reporting to the cluster `found` if any;
    returns the exit code.

    A `StartupError` from an adapter's start closes those already started, in reverse, and
    reaches the caller, which prints it."""
    raise_descriptor_limit()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    for signum in HABIT_SIGNALS:
        loop.add_signal_handler(signum, ignore_signal, signum)

    clock = time.monotonic
    stopping = asyncio.Event()
    sidecar = build(settings, found.cluster, clock, stopping)
    sidecar.state.subscribe(log_transition)
    running: dict[Adapter, asyncio.Task[None]] = {}
    async with contextlib.AsyncExitStack() as stack:
        for adapter in sidecar.adapters:
            adapter.start()
            stack.push_async_callback(close, adapter, running)
        # Every socket is bound and the state restored before any loop runs: a probe can
        # only ever see the restored state.
        for adapter in sidecar.adapters:
            running[adapter] = asyncio.create_task(adapter.run(stopping))
        logger.info(describe_start(settings, sidecar.probe.address()))
        if found.off_reason:
            logger.info("Kubernetes reporting is off (DYN_SIDECAR_KUBE=auto): %s", found.off_reason)
        exit_code = await until_stopped(stop, running.values())
        if exit_code == 0:
            stop.clear()
            await drain(sidecar.state, settings.drain_seconds, stop, clock)
        # The inputs' loops end and held sessions close (the worker's life goes on); then
        # the adapters close in reverse (sidecar/assembly.py): the inputs, the state file's
        # last write, the sockets, and the probe port and the reporter last.
        stopping.set()
    ignore_late_signals(loop)
    logger.info("stopped")
    return exit_code


async def until_stopped(stop: asyncio.Event, loops: Collection[asyncio.Task[None]]) -> int:
    """Wait for a signal (0) or for an adapter's loop to fail (1); a loop that returns has
    nothing more to do, and the others go on."""
    stopped = asyncio.ensure_future(stop.wait())
    pending: set[asyncio.Future[Any]] = {stopped, *loops}
    while True:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if stopped in done:
            return 0
        for task in done:
            failure = task.exception()
            if failure is None:
                continue
            stopped.cancel()
            if isinstance(failure, AdapterStopped):
                logger.error("%s; shutting down", failure)
            else:
                logger.error("a loop of the sidecar failed; shutting down", exc_info=failure)
            return 1


async def close(adapter: Adapter, running: dict[Adapter, asyncio.Task[None]]) -> None:
    """Close one adapter, then let its loop finish what closing asked of it (the state
    file's last write, say)."""
    await adapter.close()
    task = running.get(adapter)
    if task is not None:
        await asyncio.gather(task, return_exceptions=True)


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
