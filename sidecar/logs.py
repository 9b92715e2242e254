"""Log lines a person can read (`text`) or a collector can parse (`json`), one per event."""

from __future__ import annotations

import json
import logging
import sys
import time

from sidecar.settings import LogFormat, LogLevel

LOGGER_NAME = "dynamo_health_sidecar"


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
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request of the mirror's polls and the canaries at INFO: shown only
    # when debugging, else they bury the transitions.
    quiet = logging.NOTSET if level is LogLevel.DEBUG else logging.WARNING
    logging.getLogger("httpx").setLevel(quiet)
    return logging.getLogger(LOGGER_NAME)
