"""The JSON answers and refusals both HTTP apps give: the probe port and the worker's socket.

Both answer compact JSON with sorted keys as `application/json` (docs/protocol.md sections 3.2
and 4.2), and both turn the router's own refusals (404: no such path, 405: a method the path
does not serve) into `{"error": ...}` with a sorted `Allow` header. They live here, at the
package's top, so that an input (the socket API) and an output (the probe port) share them
without either importing the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from sidecar.core.verdict import dumps, refusal_headers

JSON = "application/json"

# What a refusal says, from the request, its status code (404 or 405) and the methods the
# path serves (the sorted `Allow`; empty on a 404): each app names what it serves.
Explain = Callable[[Request, int, str], str]


def json_response(
    value: object, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """`value` as the sidecar's JSON: one encoding, so every answer's bytes are a function of
    its value (docs/protocol.md section 10.1)."""
    return Response(dumps(value), status_code=status_code, headers=headers, media_type=JSON)


def error_response(
    message: str, status_code: int, headers: Mapping[str, str] | None = None
) -> Response:
    """A refusal as `{"error": message}`, the one shape every refusal has (docs/protocol.md
    sections 3.2 and 4.3)."""
    return json_response({"error": message}, status_code, headers)


def routing_refusal(request: Request, exc: Exception, explain: Explain) -> Response:
    """The router's 404 or 405 as a JSON refusal that `explain` words. `Allow` is sorted:
    Starlette joins it from a set, whose order would change from one start to the next."""
    assert isinstance(exc, HTTPException)
    headers = refusal_headers(exc.headers)
    message = explain(request, exc.status_code, headers.get("Allow", ""))
    return error_response(message, exc.status_code, headers)
