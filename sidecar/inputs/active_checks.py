"""Mirror mode and canaries, built only when asked for: they bring httpx.

The two watchers themselves live in `mirror.py` and `canary.py`; this module turns the
settings into them (the mirror copies a frontend's health path in frontend mode, a worker's
status server in worker mode), registers their figures in `/metrics` and shows them in
`GET /v1/worker`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from sidecar.core.health import HealthState
from sidecar.outputs.metrics import ProbeMetrics
from sidecar.settings import Mode, Settings

if TYPE_CHECKING:
    from sidecar.inputs.canary import CanaryWatch
    from sidecar.inputs.mirror import UpstreamMirror


@dataclasses.dataclass
class ActiveChecks:
    """Mirror mode and canaries: imported only when asked for (they bring httpx)."""

    mirror: UpstreamMirror | None = None
    canary: CanaryWatch | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        state: HealthState,
        metrics: ProbeMetrics,
        clock: Callable[[], float],
    ) -> ActiveChecks:
        checks = cls()
        if settings.upstream_status_url is not None:
            from sidecar.inputs.mirror import FRONTEND, WORKER, UpstreamMirror

            # A frontend-mode sidecar mirrors a Dynamo frontend's health path (its instances),
            # a worker-mode one a worker's system status server (its endpoints).
            checks.mirror = mirror = UpstreamMirror(
                settings.upstream_status_url,
                state,
                settings.upstream_interval,
                settings.upstream_misses,
                clock,
                FRONTEND if settings.mode is Mode.FRONTEND else WORKER,
            )
            metrics.add_counter(
                "dynamo_sidecar_upstream_polls",
                "Polls of the mirrored status server.",
                lambda: mirror.polls,
            )
            metrics.add_counter(
                "dynamo_sidecar_upstream_misses",
                "Polls it did not answer usably.",
                lambda: mirror.missed,
            )
            metrics.add_gauge(
                "dynamo_sidecar_upstream_consecutive_misses",
                "Misses in a row.",
                lambda: mirror.consecutive_misses,
            )
            metrics.add_gauge(
                "dynamo_sidecar_upstream_latency_seconds",
                "The last poll's latency.",
                lambda: mirror.last_latency,
            )
        if settings.canary_url is not None:
            from sidecar.inputs.canary import CanaryWatch

            assert settings.canary_endpoint is not None
            checks.canary = canary = CanaryWatch(
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
            metrics.add_counter(
                "dynamo_sidecar_canary_requests", "Canary requests sent.", lambda: canary.sent
            )
            metrics.add_counter(
                "dynamo_sidecar_canary_passed", "Canaries that passed.", lambda: canary.passed
            )
            metrics.add_counter(
                "dynamo_sidecar_canary_failed", "Canaries that failed.", lambda: canary.failed
            )
            metrics.add_gauge(
                "dynamo_sidecar_canary_consecutive_failures",
                "Failed canaries in a row.",
                lambda: canary.consecutive_failures,
            )
            metrics.add_gauge(
                "dynamo_sidecar_canary_latency_seconds",
                "The last canary's latency.",
                lambda: canary.last_latency,
            )
        return checks

    def loops(self, stopping: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
        return [check.run(stopping) for check in (self.mirror, self.canary) if check is not None]

    def view(self) -> dict[str, object]:
        """What `GET /v1/worker` (so `status`) shows of them."""
        return {
            "upstream": None if self.mirror is None else self.mirror.view(),
            "canary": None if self.canary is None else self.canary.view(),
        }
