"""The sidecar with one or more changes applied at run time, to measure what each would buy.

    python bench/variants.py VARIANT[,VARIANT...] serve [the sidecar's serve flags]

Nothing in `sidecar/` is edited: each variant patches the imported modules (or blocks an
import) before `sidecar.cli.main` runs, in this process only. The variants are prototypes
of the suggestions in bench/README.md, not drop-in code. `hotspots.py` runs them.

- `baseline`: the sidecar as it is.
- `no-proxy-headers`: uvicorn's `proxy_headers=False` (no middleware on every request).
- `asgi-probe`: the health, ready, live and self-live paths answered by a plain ASGI
  function (same bytes, codes and metrics); everything else still goes to the Starlette app.
- `raw-probe`: the probe port served by an asyncio protocol on httptools, one write per
  answer, without uvicorn (health, ready, live and self-live only: the ceiling of Python).
- `switch-interval`: `sys.setswitchinterval(0.0005)` (tests whether the state file's
  writer thread delays the loop through the GIL).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any


def no_proxy_headers() -> None:
    """The probe port's config without proxy_headers: no ProxyHeadersMiddleware call (and
    no X-Forwarded-For parsing) per request."""
    import sidecar.http_servers

    original = sidecar.http_servers.uvicorn_config

    def config(app: object) -> Any:
        made = original(app)
        made.proxy_headers = False
        return made

    sidecar.http_servers.uvicorn_config = config


def _fast_paths(settings: Any, verdicts: Any, clock: Callable[[], float]) -> dict[str, Any]:
    """path -> a function giving the Answer, for the paths a probe uses."""
    from sidecar.core.verdict import Answer
    from sidecar.settings import READY_PATH, SELF_LIVE_PATH, Mode

    self_live = Answer(200, b'{"status":"live"}')
    if settings.mode is Mode.FRONTEND:
        health = verdicts.frontend_health
        live = verdicts.frontend_live
    else:

        def health() -> Any:
            return verdicts.health(clock())

        def live() -> Any:
            return verdicts.live(clock())

    paths = {
        READY_PATH: health,
        settings.health_path: health,
        settings.live_path: live,
        SELF_LIVE_PATH: lambda: self_live,
    }
    return paths


def asgi_probe() -> None:
    """The probe paths answered before Starlette (its middleware, router, Request and
    Response objects); anything else falls through to the real app, unchanged."""
    import sidecar.assembly

    original = sidecar.assembly.build_probe_app

    def build(settings: Any, verdicts: Any, metrics: Any, clock: Any = time.monotonic) -> Any:
        fallback = original(settings, verdicts, metrics, clock)
        paths = _fast_paths(settings, verdicts, clock)
        json_type = (b"content-type", b"application/json")

        async def app(scope: Any, receive: Any, send: Any) -> None:
            answer = paths.get(scope.get("path")) if scope["type"] == "http" else None
            if answer is None or scope["method"] not in ("GET", "HEAD"):
                await fallback(scope, receive, send)
                return
            result = answer()
            metrics.count(scope["path"], result.code)
            length = (b"content-length", str(len(result.body)).encode())
            await send(
                {
                    "type": "http.response.start",
                    "status": result.code,
                    "headers": [length, json_type],
                }
            )
            await send({"type": "http.response.body", "body": result.body})

        return app

    sidecar.assembly.build_probe_app = build


REASONS = {200: b"OK", 503: b"Service Unavailable", 404: b"Not Found", 405: b"Method Not Allowed"}


class DateHeader:
    """The `date` header's value, formatted at most once a second (as uvicorn does)."""

    def __init__(self) -> None:
        self.at, self.value = 0.0, b""

    def __call__(self) -> bytes:
        now = time.time()
        if now - self.at >= 1.0:
            self.at, self.value = now, formatdate(now, usegmt=True).encode()
        return self.value


class RawProbeProtocol(asyncio.Protocol):
    """One connection of the raw probe port: httptools parses, one write answers (status
    line, headers and body together: one syscall, one segment)."""

    def __init__(
        self, paths: dict[str, Any], metrics: Any, httptools: Any, date: DateHeader
    ) -> None:
        self.paths, self.metrics, self.httptools, self.date = paths, metrics, httptools, date
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except self.httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url  # httptools may deliver the URL in pieces

    def on_message_complete(self) -> None:
        path = self.httptools.parse_url(self.url).path.decode("latin-1")
        self.url = b""
        method = self.parser.get_method()
        answer = self.paths.get(path)
        if answer is None:
            code, body = 404, b'{"error":"no such path"}'
        elif method not in (b"GET", b"HEAD"):
            code, body = 405, b'{"error":"read-only"}'
        else:
            result = answer()
            code, body = result.code, result.body
            self.metrics.count(path, code)
        keep = self.parser.should_keep_alive()
        head = b"HTTP/1.1 %d %s\r\ndate: %s\r\ncontent-length: %d\r\n" % (
            code,
            REASONS.get(code, b""),
            self.date(),
            len(body),
        )
        head += b"content-type: application/json\r\n"
        if not keep:
            head += b"connection: close\r\n"
        self.transport.write(head + b"\r\n" + (b"" if method == b"HEAD" else body))
        if not keep:
            self.transport.close()


class RawServer:
    """Stands in for the probe port's uvicorn.Server: serves the given socket until
    it is stopped, the two things the sidecar uses of a uvicorn.Server here."""

    def __init__(self, paths: dict[str, Any], metrics: Any, httptools: Any) -> None:
        self.paths, self.metrics, self.httptools = paths, metrics, httptools
        self.should_exit = False

    def stop(self) -> None:
        self.should_exit = True

    async def serve(self, sockets: list[Any]) -> None:
        loop = asyncio.get_running_loop()
        date = DateHeader()
        server = await loop.create_server(
            lambda: RawProbeProtocol(self.paths, self.metrics, self.httptools, date),
            sock=sockets[0],
        )
        while not self.should_exit:
            await asyncio.sleep(1.0)
        server.close()
        await server.wait_closed()


def raw_probe() -> None:
    """The probe port without uvicorn or Starlette: what Python itself can do."""
    import httptools

    import sidecar.assembly
    import sidecar.http_servers

    original_build = sidecar.assembly.build_probe_app
    original_server = sidecar.http_servers.Server
    # The probe app's id -> its fast paths and metrics: the server for that app (and only
    # that one; the socket's keeps uvicorn) is replaced.
    marker: dict[int, tuple[dict[str, Any], Any]] = {}

    def build(settings: Any, verdicts: Any, metrics: Any, clock: Any = time.monotonic) -> Any:
        app = original_build(settings, verdicts, metrics, clock)
        marker[id(app)] = (_fast_paths(settings, verdicts, clock), metrics)
        return app

    def make_server(config: Any) -> Any:
        found = marker.get(id(config.app))
        if found is None:
            return original_server(config)
        paths, metrics = found
        return RawServer(paths, metrics, httptools)

    sidecar.assembly.build_probe_app = build
    sidecar.http_servers.Server = make_server  # type: ignore[misc,assignment]


def switch_interval() -> None:
    """A shorter GIL switch interval: if the state file's writer thread delays the loop
    through the GIL, this shortens the delay."""
    sys.setswitchinterval(0.0005)


APPLY = {
    "baseline": lambda: None,
    "no-proxy-headers": no_proxy_headers,
    "asgi-probe": asgi_probe,
    "raw-probe": raw_probe,
    "switch-interval": switch_interval,
}


def main() -> int:
    """Apply the variants, then run the sidecar's own command line in this process."""
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    wanted = [v for v in sys.argv[1].split(",") if v]
    unknown = [v for v in wanted if v not in APPLY]
    if unknown:
        print(f"unknown variants {unknown}; known: {', '.join(APPLY)}", file=sys.stderr)
        return 2
    for name in wanted:
        APPLY[name]()
    from sidecar.cli import main as sidecar_main

    sys.argv = ["dynamo-health-sidecar", *sys.argv[2:]]
    result = sidecar_main()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
