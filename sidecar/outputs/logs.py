"""Log lines a person can read (`text`) or a collector can parse (`json`), one per event."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

from sidecar.settings import LogFormat, LogLevel

LOGGER_NAME = "dynamo_health_sidecar"
# uvicorn warns once per malformed request ("Invalid HTTP request received."): a client
# sending them in a loop gets one line, then at most one per this many seconds, a count.
WARNING_WINDOW_SECONDS = 10.0
HELD_BACK = "%s (%d more in %gs, not logged)"


class TextFormatter(logging.Formatter):
    """`2026-11-25T14:05:39.123Z INFO generate: notready -> ready after 41.2s`."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record.created)} {record.levelname} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the structured fields a transition carries."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"), default=str)


class RateLimit(logging.Filter):
    """Lets a warning through, then holds back the same message for `seconds` and logs how
    many were held back when they end, so a client cannot flood the log one request at a
    time. Errors always pass, and so does a warning logged outside an event loop, where
    nothing would log the count."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        # Each message whose window is open: how many were held back in it so far.
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or record.msg == HELD_BACK:
            return True
        message = str(record.msg)
        if message in self._held:
            self._held[message] += 1
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return True
        self._open(loop, logging.getLogger(record.name), message)
        return True

    def _open(self, loop: asyncio.AbstractEventLoop, logger: logging.Logger, message: str) -> None:
        self._held[message] = 0
        loop.call_later(self.seconds, self._close, loop, logger, message)

    def _close(self, loop: asyncio.AbstractEventLoop, logger: logging.Logger, message: str) -> None:
        held = self._held.pop(message)
        if held:
            logger.warning(HELD_BACK, message, held, self.seconds)
            # The count is this window's line: the next one is held back in turn.
            self._open(loop, logger, message)


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure(log_format: LogFormat, level: LogLevel) -> logging.Logger:
    """Send our lines and uvicorn's errors to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format is LogFormat.JSON else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.value.upper())
    # uvicorn's own start and stop lines repeat ours; its warnings and errors still show.
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.setLevel(logging.WARNING)
    uvicorn_error.filters[:] = [RateLimit(WARNING_WINDOW_SECONDS)]
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request of the mirror's polls and the canaries at INFO: shown only
    # when debugging, else they bury the transitions.
    quiet = logging.NOTSET if level is LogLevel.DEBUG else logging.WARNING
    logging.getLogger("httpx").setLevel(quiet)
    return logging.getLogger(LOGGER_NAME)
