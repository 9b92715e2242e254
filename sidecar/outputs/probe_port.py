"""The read-only Starlette app on `DYN_SYSTEM_PORT`, the one the kubelet probes.

Every route is `GET` (Starlette adds `HEAD`), and each answer is computed from the state
in memory: no await on anything, no I/O beyond the response itself (docs/protocol.md section 3).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sidecar.core.verdict import Answer, FrontendShape, Verdicts, dumps_in_order
from sidecar.http_answers import JSON, routing_refusal
from sidecar.outputs.metrics import ProbeMetrics
from sidecar.settings import METRICS_PATH, READY_PATH, SELF_LIVE_PATH, Mode, Settings

SELF_LIVE_BODY = b'{"status":"live"}'


def build_probe_app(
    settings: Settings,
    verdicts: Verdicts,
    metrics: ProbeMetrics,
    clock: Callable[[], float] = time.monotonic,
) -> Starlette:
    """The probe app for one state; its routes can only read."""

    def answer(path: str, result: Answer) -> Response:
        metrics.count(path, result.code)
        return Response(result.body, status_code=result.code, media_type=JSON)

    if settings.mode is Mode.FRONTEND:

        def health(path: str) -> Response:
            return answer(path, verdicts.frontend_health())

        def live(path: str) -> Response:
            return answer(path, verdicts.frontend_live())

    else:

        def health(path: str) -> Response:
            return answer(path, verdicts.health(clock()))

        def live(path: str) -> Response:
            return answer(path, verdicts.live(clock()))

    async def health_route(request: Request) -> Response:
        return health(settings.health_path)

    async def ready_route(request: Request) -> Response:
        return health(READY_PATH)

    async def live_route(request: Request) -> Response:
        return live(settings.live_path)

    async def self_live_route(request: Request) -> Response:
        return answer(SELF_LIVE_PATH, Answer(200, SELF_LIVE_BODY))

    async def metrics_route(request: Request) -> Response:
        metrics.count(METRICS_PATH, 200)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route(settings.health_path, health_route, methods=["GET"]),
        Route(settings.live_path, live_route, methods=["GET"]),
        Route(METRICS_PATH, metrics_route, methods=["GET"]),
        Route(SELF_LIVE_PATH, self_live_route, methods=["GET"]),
    ]
    if settings.health_path != READY_PATH:
        routes.append(Route(READY_PATH, ready_route, methods=["GET"]))
    refuse = probe_refusal(settings, metrics)
    app = Starlette(routes=routes, exception_handlers={HTTPException: refuse})
    # The kubelet follows a redirect (only to the same host): a probe must get its answer here.
    app.router.redirect_slashes = False
    return app


def probe_refusal(
    settings: Settings, metrics: ProbeMetrics
) -> Callable[[Request, Exception], Awaitable[Response]]:
    """The router's 404 and 405, counted like any answer: the sidecar's JSON, which names what
    is served (docs/protocol.md sections 3.2 and 10.3), or Dynamo 1.6.1's own (section 3.6)."""

    def explain(request: Request, code: int, allowed: str) -> str:
        if code == 405:
            return f"{request.method} is not allowed: the probe port is read-only (GET, HEAD)"
        return f"no such path; the probe port serves {', '.join(sorted(metrics.paths))}"

    async def refuse(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        metrics.count(request.url.path, exc.status_code)
        if settings.frontend_shape is FrontendShape.DYNAMO_1_6_1:
            return refuse_as_dynamo_1_6_1(request, exc.status_code)
        return routing_refusal(request, exc, explain)

    return refuse


def refuse_as_dynamo_1_6_1(request: Request, code: int) -> Response:
    """Dynamo 1.6.1's frontend refusals: a JSON 404 naming the request as sent (raw path, no
    query), and a 405 with no body and no content type (docs/protocol.md section 3.6)."""
    if code == 405:
        return Response(status_code=405, headers={"allow": "GET,HEAD"})
    path = request.scope.get("raw_path", request.scope["path"].encode()).split(b"?")[0]
    message = f"Route not found: {request.method} {path.decode('latin-1')}"
    body = dumps_in_order({"message": message, "type": "Not Found", "code": code})
    return Response(body, status_code=code, media_type=JSON)


def probe_paths(settings: Settings) -> tuple[str, ...]:
    """Every path the probe port answers, for metrics labels and messages."""
    return tuple(
        dict.fromkeys(
            (settings.health_path, settings.live_path, READY_PATH, METRICS_PATH, SELF_LIVE_PATH)
        )
    )
