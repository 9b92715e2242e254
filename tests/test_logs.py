"""Log configuration (sidecar/logs.py): what reaches stderr at each level."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from sidecar.logs import configure
from sidecar.settings import LogFormat, LogLevel


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root, httpx = logging.getLogger(), logging.getLogger("httpx")
    handlers, root_level, httpx_level = root.handlers[:], root.level, httpx.level
    yield
    root.handlers[:] = handlers
    root.setLevel(root_level)
    httpx.setLevel(httpx_level)


@pytest.mark.parametrize("level", [LogLevel.INFO, LogLevel.WARNING, LogLevel.ERROR])
def test_http_client_request_lines_are_hidden_unless_debugging(level: LogLevel) -> None:
    configure(LogFormat.TEXT, level)
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    assert logging.getLogger("httpx").isEnabledFor(logging.WARNING)


def test_http_client_request_lines_are_shown_when_debugging() -> None:
    configure(LogFormat.TEXT, LogLevel.DEBUG)
    assert logging.getLogger("httpx").isEnabledFor(logging.INFO)
