"""Log configuration (sidecar/outputs/logs.py): what reaches stderr at each level."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Iterator

import pytest

from sidecar.outputs import logs
from sidecar.outputs.logs import configure
from sidecar.settings import LogFormat, LogLevel

INVALID = "Invalid HTTP request received."
# Short, so that a window ends within a test; every wait below is a few windows long.
WINDOW = 0.2


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root, httpx, uvicorn_error = (
        logging.getLogger(),
        logging.getLogger("httpx"),
        logging.getLogger("uvicorn.error"),
    )
    handlers, root_level, httpx_level = root.handlers[:], root.level, httpx.level
    uvicorn_level, uvicorn_filters = uvicorn_error.level, uvicorn_error.filters[:]
    yield
    root.handlers[:] = handlers
    root.setLevel(root_level)
    httpx.setLevel(httpx_level)
    uvicorn_error.setLevel(uvicorn_level)
    uvicorn_error.filters[:] = uvicorn_filters


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What `serve`'s logging writes to stderr, with windows of `WINDOW` seconds."""
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    monkeypatch.setattr(logs, "WARNING_WINDOW_SECONDS", WINDOW)
    configure(LogFormat.TEXT, LogLevel.INFO)
    return buffer


def messages(stderr: io.StringIO) -> list[str]:
    """The messages of the lines written, without their time and level."""
    return [line.split(" ", 2)[2] for line in stderr.getvalue().splitlines()]


@pytest.mark.parametrize("level", [LogLevel.INFO, LogLevel.WARNING, LogLevel.ERROR])
def test_http_client_request_lines_are_hidden_unless_debugging(level: LogLevel) -> None:
    configure(LogFormat.TEXT, level)
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    assert logging.getLogger("httpx").isEnabledFor(logging.WARNING)


def test_http_client_request_lines_are_shown_when_debugging() -> None:
    configure(LogFormat.TEXT, LogLevel.DEBUG)
    assert logging.getLogger("httpx").isEnabledFor(logging.INFO)


def test_a_repeated_server_warning_is_logged_once_then_counted_once_a_window(
    stderr: io.StringIO,
) -> None:
    uvicorn_error = logging.getLogger("uvicorn.error")

    async def flood() -> None:
        for _ in range(5):
            uvicorn_error.warning(INVALID)
        await asyncio.sleep(WINDOW * 1.5)
        # Within the window the count opened: held back in turn.
        uvicorn_error.warning(INVALID)
        await asyncio.sleep(WINDOW * 1.5)
        # Both windows over, a quiet one between: logged at once.
        await asyncio.sleep(WINDOW * 1.5)
        uvicorn_error.warning(INVALID)

    asyncio.run(flood())
    assert messages(stderr) == [
        INVALID,
        f"{INVALID} (4 more in {WINDOW:g}s, not logged)",
        f"{INVALID} (1 more in {WINDOW:g}s, not logged)",
        INVALID,
    ]


def test_server_warnings_of_different_messages_are_counted_apart(
    stderr: io.StringIO,
) -> None:
    uvicorn_error = logging.getLogger("uvicorn.error")

    async def flood() -> None:
        for _ in range(3):
            uvicorn_error.warning(INVALID)
            uvicorn_error.warning("Unsupported upgrade request.")
        await asyncio.sleep(WINDOW * 1.5)

    asyncio.run(flood())
    assert sorted(messages(stderr)) == [
        INVALID,
        f"{INVALID} (2 more in {WINDOW:g}s, not logged)",
        "Unsupported upgrade request.",
        f"Unsupported upgrade request. (2 more in {WINDOW:g}s, not logged)",
    ]


def test_server_errors_are_never_held_back(
    stderr: io.StringIO,
) -> None:
    uvicorn_error = logging.getLogger("uvicorn.error")

    async def errors() -> None:
        for _ in range(3):
            uvicorn_error.error("Exception in ASGI application")

    asyncio.run(errors())
    assert messages(stderr) == ["Exception in ASGI application"] * 3


def test_server_warnings_outside_an_event_loop_are_all_logged(
    stderr: io.StringIO,
) -> None:
    uvicorn_error = logging.getLogger("uvicorn.error")
    for _ in range(3):
        uvicorn_error.warning(INVALID)
    assert messages(stderr) == [INVALID] * 3
