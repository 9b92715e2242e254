"""The active checks as one adapter (`sidecar/component.py`): mirror mode and canaries.

Each is built only when its setting asks for it (docs/protocol.md section 8), since they
bring httpx: the mirror copies a frontend's health path in frontend mode and a worker's
status server in worker mode (section 8.1); canaries gate one endpoint (section 8.2). Their
loops are the prober's (`sidecar/inputs/prober.py`), their rules the core's
(`sidecar/core/checks.py`); this module turns the settings into them and shows their figures
in `/metrics` and `GET /v1/worker`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sidecar.component import Adapter, Kind, Reading
from sidecar.core.health import HealthState
from sidecar.settings import Mode, Settings

if TYPE_CHECKING:
    from sidecar.inputs.canary import CanaryWatch
    from sidecar.inputs.mirror import UpstreamMirror
    from sidecar.inputs.prober import Prober


class ActiveChecks(Adapter):
    """Mirror mode and canaries, each None when its setting is off."""

    def __init__(self, settings: Settings, state: HealthState, clock: Callable[[], float]) -> None:
        self._mirror: UpstreamMirror | None = None
        self._canary: CanaryWatch | None = None
        if settings.upstream_status_url is not None:
            from sidecar.inputs.mirror import FRONTEND, WORKER, UpstreamMirror

            self._mirror = UpstreamMirror(
                settings.upstream_status_url,
                state,
                settings.upstream_interval,
                settings.upstream_misses,
                clock,
                FRONTEND if settings.mode is Mode.FRONTEND else WORKER,
            )
        if settings.canary_url is not None:
            from sidecar.inputs.canary import CanaryWatch

            # The settings refuse a canary without an endpoint to hold.
            assert settings.canary_endpoint is not None
            self._canary = CanaryWatch(
                settings.canary_url,
                settings.canary_method,
                settings.canary_body,
                settings.canary_expect,
                settings.canary_timeout,
                settings.canary_wait,
                settings.canary_endpoint,
                settings.canary_failures,
                state,
                clock,
            )

    async def run(self, stopping: asyncio.Event) -> None:
        await asyncio.gather(*(check.run(stopping) for check in self._checks()))

    def readings(self) -> Sequence[Reading]:
        readings: list[Reading] = []
        if self._mirror is not None:
            readings += _mirror_readings(self._mirror)
        if self._canary is not None:
            readings += _canary_readings(self._canary)
        return readings

    def view(self) -> dict[str, object]:
        """What `GET /v1/worker` (so `status`) shows of them: both keys, None when off."""
        return {
            "upstream": None if self._mirror is None else self._mirror.view(),
            "canary": None if self._canary is None else self._canary.view(),
        }

    async def close(self) -> None:
        for check in self._checks():
            await check.aclose()

    def _checks(self) -> list[Prober[Any]]:
        return [check for check in (self._mirror, self._canary) if check is not None]


def _mirror_readings(mirror: UpstreamMirror) -> tuple[Reading, ...]:
    """The mirror's figures, read at scrape time: a miss rate and a slow status server show
    before the life ends."""
    return (
        Reading(
            Kind.COUNTER,
            "dynamo_sidecar_upstream_polls",
            "Polls of the mirrored status server.",
            lambda: mirror.polls,
        ),
        Reading(
            Kind.COUNTER,
            "dynamo_sidecar_upstream_misses",
            "Polls it did not answer usably.",
            lambda: mirror.missed,
        ),
        Reading(
            Kind.GAUGE,
            "dynamo_sidecar_upstream_consecutive_misses",
            "Misses in a row.",
            lambda: mirror.consecutive_misses,
        ),
        Reading(
            Kind.GAUGE,
            "dynamo_sidecar_upstream_latency_seconds",
            "The last poll's latency.",
            lambda: mirror.last_latency,
        ),
    )


def _canary_readings(canary: CanaryWatch) -> tuple[Reading, ...]:
    """The canaries' figures, read at scrape time: failures in a row show before they hold."""
    return (
        Reading(
            Kind.COUNTER,
            "dynamo_sidecar_canary_requests",
            "Canary requests sent.",
            lambda: canary.sent,
        ),
        Reading(
            Kind.COUNTER,
            "dynamo_sidecar_canary_passed",
            "Canaries that passed.",
            lambda: canary.passed,
        ),
        Reading(
            Kind.COUNTER,
            "dynamo_sidecar_canary_failed",
            "Canaries that failed.",
            lambda: canary.failed,
        ),
        Reading(
            Kind.GAUGE,
            "dynamo_sidecar_canary_consecutive_failures",
            "Failed canaries in a row.",
            lambda: canary.consecutive_failures,
        ),
        Reading(
            Kind.GAUGE,
            "dynamo_sidecar_canary_latency_seconds",
            "The last canary's latency.",
            lambda: canary.last_latency,
        ),
    )
