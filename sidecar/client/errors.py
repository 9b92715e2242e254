"""The client's errors, and the one mapping of a socket's failures onto them.

Both transports raise exactly these, from the same `stream_failures`, so a worker catches the
same thing whichever client it uses (docs/protocol.md, sections 4.3 and 4.6).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

# Before Python 3.10 (socket) and 3.11 (asyncio) these are not the builtin TimeoutError, and a
# worker may vendor this package into an older interpreter than the sidecar's.
TIMEOUTS: tuple[type[Exception], ...] = (TimeoutError, socket.timeout, asyncio.TimeoutError)
STREAM_FAILURES: tuple[type[Exception], ...] = (OSError, *TIMEOUTS)
# The one error of an answer cut short, wherever the cut fell and whichever client saw it.
HUNG_UP = "the sidecar hung up before its answer ended"


class SidecarError(Exception):
    """Anything that went wrong talking to the sidecar: catch this to catch them all."""


class SidecarUnavailable(SidecarError):
    """The sidecar cannot take the request now; the only error `Retry` retries.

    Either nothing answered on the socket (it is missing, refuses, hangs, or hung up before
    its answer ended, as a sidecar killed mid-answer does) and `error` is the socket's error;
    or the sidecar answered 503 (it applied a change it could not save to its state file yet,
    or it is stopping and takes no more changes: docs/protocol.md, section 9.3) and `error` is
    that answer as a `SidecarRejected`, with the sidecar's message. `retry_after` is the
    seconds of a 503's `Retry-After`, when it had one. A worker that starts before its sidecar
    sees this.
    """

    def __init__(
        self,
        socket_path: str,
        error: BaseException,
        timeout: float | None = None,
        retry_after: float | None = None,
    ):
        self.socket_path = socket_path
        self.error = error
        self.retry_after = retry_after
        if isinstance(error, SidecarRejected):
            where = f" {error.request}" if error.request else ""
            message = f"the sidecar at {socket_path} answered{where} with {error.status}: "
            message += error.message
        elif isinstance(error, TIMEOUTS) and timeout is not None:
            message = f"no answer from the sidecar at {socket_path} within {timeout:g}s"
        else:
            message = f"no sidecar at {socket_path}: {error}"
        super().__init__(message)


class SidecarRejected(SidecarError):
    """The sidecar answered 4xx or 5xx other than 503: the request is wrong, and retrying
    will not help.

    `status` is the HTTP status code and `message` the sidecar's `error` line, which says what
    is wrong and what is allowed (docs/protocol.md, section 4.3).
    """

    def __init__(self, status: int, message: str, request: str = "") -> None:
        self.status = status
        self.message = message
        self.request = request
        where = f" {request}" if request else ""
        super().__init__(f"the sidecar refused{where} with {status}: {message}")


class SidecarProtocolError(SidecarError):
    """Something answered on the socket, but not the sidecar's HTTP/1.1 and JSON."""


@contextlib.contextmanager
def stream_failures(socket_path: str, timeout: float) -> Iterator[None]:
    """The socket's failures as client errors, the same for both transports.

    An answer cut short (the connection closed before the status line, among the headers or
    in the body: the decoder's `EOFError`) is the sidecar unavailable, as when it is not there
    at all: a sidecar killed mid-answer is restarting, and `Retry` should try again.
    """
    try:
        yield
    except STREAM_FAILURES as exc:
        raise SidecarUnavailable(socket_path, exc, timeout) from exc
    except EOFError as exc:
        raise SidecarUnavailable(socket_path, ConnectionResetError(HUNG_UP), timeout) from exc
