"""The worker's side of the health sidecar's Unix socket, in the Python standard library alone.

A worker tells the sidecar what it serves; the sidecar answers the kubelet's probes. This
package imports nothing outside the standard library, and itself only by relative imports, so
a worker may vendor the directory as it is::

    from sidecar.client import Retry, SidecarClient

    client = SidecarClient(retry=Retry.patient())  # the sidecar may start after the worker
    with client.open_session():  # the sidecar sees this worker die, even on SIGKILL
        load_model()
        client.ready("generate")  # the health path answers 200 from now on
        with client.start_heartbeats(interval=5.0):  # a hung worker fails the live path
            serve_forever()
        client.notready("generate")

`AsyncSidecarClient` has the same methods as coroutines. The socket is the `socket_path`
argument, else `DYN_SIDECAR_SOCKET`, else `/var/run/dynamo/health.sock`. Every failure is a
`SidecarError`: `SidecarUnavailable` when the sidecar cannot take the request now (nothing
answers on the socket, the answer is cut short, or the sidecar answers 503), the only kind
that `Retry` retries, and `SidecarRejected` when the sidecar refuses a request
(docs/protocol.md, section 4.6).

The package is one core without I/O and two thin transports over it. `calls` builds every
request's bytes, `answers` decodes what comes back (from bytes handed to it), `retry` decides
when to try again, and `errors` maps a socket's failures to the errors above; `sync` (sockets,
threads) and `aio` (asyncio streams) only move the bytes, and `heartbeats` holds the two
loops that beat.
"""

from .aio import AsyncSession, AsyncSidecarClient
from .answers import JSONObject
from .calls import DEFAULT_SOCKET, DEFAULT_TIMEOUT, SOCKET_ENV, EndpointStatus, resolve_socket
from .errors import SidecarError, SidecarProtocolError, SidecarRejected, SidecarUnavailable
from .heartbeats import AsyncHeartbeats, Heartbeats, HeartbeatStats
from .retry import Retry
from .sync import Session, SidecarClient, UnixHTTPConnection

__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_TIMEOUT",
    "SOCKET_ENV",
    "AsyncHeartbeats",
    "AsyncSession",
    "AsyncSidecarClient",
    "EndpointStatus",
    "HeartbeatStats",
    "Heartbeats",
    "JSONObject",
    "Retry",
    "Session",
    "SidecarClient",
    "SidecarError",
    "SidecarProtocolError",
    "SidecarRejected",
    "SidecarUnavailable",
    "UnixHTTPConnection",
    "resolve_socket",
]
