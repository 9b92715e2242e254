"""What the sidecar is made of for one set of settings: the state and its adapters.

This is the only module that knows every adapter. It builds each one its settings turn on,
in the order `serve` starts them (docs/architecture.md): the Kubernetes reporter first, so
that the state file's restoration is reported too; the probe port, the worker's socket and
the sd_notify socket, so that a path or port that cannot be had changes nothing; the state
file, which restores the state; then the loops that feed it. They close in reverse: the
inputs stop before the state file's last write, and from then on the worker's socket answers
a change 503 (not saved) until it closes, so nothing answered 2xx is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sidecar.component import Adapter
from sidecar.core.health import HealthState
from sidecar.core.verdict import Verdicts
from sidecar.http_servers import ProbeServer, WorkerSocketServer
from sidecar.inputs.active_checks import ActiveChecks
from sidecar.inputs.deadlines import DeadlineWatch
from sidecar.inputs.notify import NotifyListener
from sidecar.inputs.worker_api import WorkerApi, build_control_app, nothing_to_save
from sidecar.kube.api import official_api
from sidecar.kube.discovery import InCluster
from sidecar.kube.reporter import KubeReporting
from sidecar.outputs.metrics import ProbeMetrics
from sidecar.outputs.probe_port import build_probe_app, probe_paths
from sidecar.outputs.state_writer import StateFile
from sidecar.settings import Mode, Settings


@dataclass(frozen=True)
class Sidecar:
    """The state and the adapters around it, in the order they start."""

    state: HealthState
    adapters: Sequence[Adapter]
    probe: ProbeServer


def build_state(settings: Settings, now: float) -> HealthState:
    return HealthState(
        required=settings.required_endpoints,
        starting=settings.starting_status,
        started_at=now,
        liveness=settings.liveness,
        heartbeat_timeout=settings.heartbeat_timeout,
        frontend=settings.mode is Mode.FRONTEND,
    )


def build(
    settings: Settings,
    cluster: InCluster | None,
    clock: Callable[[], float],
    stopping: asyncio.Event,
) -> Sidecar:
    """Every adapter the settings turn on, reporting to `cluster` when there is one;
    `stopping` ends the worker's held sessions."""
    state = build_state(settings, clock())
    verdicts = Verdicts(state, settings.frontend_shape)
    metrics = ProbeMetrics(state, probe_paths(settings), clock=clock)
    probe = ProbeServer(
        build_probe_app(settings, verdicts, metrics, clock), settings.host, settings.port
    )
    state_file = _state_file(settings, state, clock)
    adapters: list[Adapter] = []
    api = WorkerApi(
        settings,
        state,
        verdicts,
        stopping,
        clock=clock,
        adapter_views=lambda: _views(adapters),
        saved=nothing_to_save if state_file is None else state_file.writer.saved,
    )
    adapters += [
        *_kube_reporting(settings, cluster, state, clock),
        probe,
        WorkerSocketServer(build_control_app(api), settings.socket_path),
        *_notify(settings, state, clock),
        *([] if state_file is None else [state_file]),
        *_loops(settings, state, clock),
    ]
    for adapter in adapters:
        for reading in adapter.readings():
            metrics.add(reading)
    return Sidecar(state, tuple(adapters), probe)


def _kube_reporting(
    settings: Settings,
    cluster: InCluster | None,
    state: HealthState,
    clock: Callable[[], float],
) -> list[Adapter]:
    if cluster is None:
        return []
    assert cluster.pod is not None  # discovery finds a cluster only with its pod
    return [
        KubeReporting(
            cluster.pod, official_api(cluster, clock), settings.kube_condition, state, clock
        )
    ]


def _state_file(
    settings: Settings, state: HealthState, clock: Callable[[], float]
) -> StateFile | None:
    if settings.state_file is None:
        return None
    # With the process watch on, the pod shares its process namespace, so a saved pid can
    # be checked; without it, a pid from another namespace means nothing here.
    process_gone = None if settings.watch_process is None else _process_gone
    return StateFile(settings.state_file, state, clock, process_gone)


def _process_gone(pid: int) -> bool:
    from sidecar.inputs.process_table import identify

    return identify(pid) is None


def _notify(settings: Settings, state: HealthState, clock: Callable[[], float]) -> list[Adapter]:
    if settings.notify_socket is None:
        return []
    return [NotifyListener(settings.notify_socket, state, clock)]


def _loops(settings: Settings, state: HealthState, clock: Callable[[], float]) -> list[Adapter]:
    loops: list[Adapter] = []
    if settings.watch_process is not None:
        # Imported only when on: psutil is the process watch's alone (about 1 MB).
        from sidecar.inputs.process import ProcessWatch

        loops.append(ProcessWatch(settings.watch_process, state, clock))
    loops.append(DeadlineWatch(state, clock))
    loops.append(ActiveChecks(settings, state, clock))
    return loops


def _views(adapters: Sequence[Adapter]) -> Mapping[str, object]:
    merged: dict[str, object] = {}
    for adapter in adapters:
        merged.update(adapter.view())
    return merged
