"""The state file (`DYN_SIDECAR_STATE_FILE`): the worker's life, kept across sidecar restarts.

Written atomically (write, fsync, rename, fsync the directory) after every visible change,
off the event loop so a slow disk never delays a probe; read back once at start. A file
that is corrupt, of another format, or from another worker life is ignored with a warning:
a fresh start is always safe, a wrong restore is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sidecar.health import HealthState, Instance, SavedState, Status
from sidecar.settings import NAME_PATTERN

FORMAT = 1
MAX_BYTES = 32 * 1024 * 1024
MAX_U64 = 2**64 - 1
FILE_MODE = 0o640

logger = logging.getLogger("dynamo_health_sidecar")


class CorruptStateFile(ValueError):
    """The state file cannot be trusted; `str()` says why."""


def encode(saved: SavedState, written_at: float) -> bytes:
    document = {
        "format": FORMAT,
        "written_at": written_at,
        "life": {
            "number": saved.life,
            "alive": saved.alive,
            "ever_ready": saved.ever_ready,
            "pid": saved.pid,
            "end_reason": saved.end_reason,
            "heartbeats": saved.heartbeats,
            "declared": saved.declared.value if saved.declared else None,
            "status_text": saved.status_text,
        },
        "endpoints": {name: status.value for name, status in saved.endpoints.items()},
        "instances": [
            {
                "namespace": i.namespace,
                "component": i.component,
                "endpoint": i.endpoint,
                "instance_id": i.instance_id,
                "transport": i.transport,
                "model": i.model,
            }
            for i in saved.instances
        ],
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def decode(data: bytes) -> SavedState:
    """The saved state, or `CorruptStateFile` naming the first thing that is wrong."""
    if len(data) > MAX_BYTES:
        raise CorruptStateFile(f"it has {len(data)} bytes, over the limit of {MAX_BYTES}")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise CorruptStateFile(f"it is not JSON: {exc}") from None
    top = _object(document, "the file", {"format", "written_at", "life", "endpoints", "instances"})
    if top["format"] != FORMAT:
        raise CorruptStateFile(f"its format is {top['format']!r}, not {FORMAT}")
    life = _object(
        top["life"],
        "life",
        {
            "number",
            "alive",
            "ever_ready",
            "pid",
            "end_reason",
            "heartbeats",
            "declared",
            "status_text",
        },
    )
    declared = life["declared"]
    return SavedState(
        life=_integer(life["number"], "life.number", 1, MAX_U64),
        alive=_boolean(life["alive"], "life.alive"),
        ever_ready=_boolean(life["ever_ready"], "life.ever_ready"),
        pid=None if life["pid"] is None else _integer(life["pid"], "life.pid", 1, 2**31 - 1),
        end_reason=_text(life["end_reason"], "life.end_reason"),
        heartbeats=_boolean(life["heartbeats"], "life.heartbeats"),
        declared=None if declared is None else _status(declared, "life.declared"),
        status_text=_text(life["status_text"], "life.status_text"),
        endpoints=_endpoints(top["endpoints"]),
        instances=tuple(_instance(item, n) for n, item in enumerate(_list(top["instances"]))),
    )


def _object(value: Any, what: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != keys:
        raise CorruptStateFile(f"{what} is not an object with the keys {', '.join(sorted(keys))}")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise CorruptStateFile("instances is not a list")
    return value


def _integer(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CorruptStateFile(f"{what} is not an integer from {low} to {high}")
    return value


def _boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise CorruptStateFile(f"{what} is not true or false")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > 4096:
        raise CorruptStateFile(f"{what} is not a string of at most 4096 characters")
    return value


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise CorruptStateFile(f"{what} is not a valid name")
    return value


def _status(value: Any, what: str) -> Status:
    if value not in ("ready", "notready"):
        raise CorruptStateFile(f"{what} is not ready or notready")
    return Status(value)


def _endpoints(value: Any) -> Mapping[str, Status]:
    if not isinstance(value, dict):
        raise CorruptStateFile("endpoints is not an object")
    return {_name(name, "an endpoint"): _status(s, f"endpoint {name}") for name, s in value.items()}


def _instance(value: Any, n: int) -> Instance:
    keys = {"namespace", "component", "endpoint", "instance_id", "transport", "model"}
    item = _object(value, f"instance {n}", keys)
    if not isinstance(item["transport"], dict):
        raise CorruptStateFile(f"instance {n} has a transport that is not an object")
    return Instance(
        namespace=_name(item["namespace"], f"instance {n} namespace"),
        component=_name(item["component"], f"instance {n} component"),
        endpoint=_name(item["endpoint"], f"instance {n} endpoint"),
        instance_id=_integer(item["instance_id"], f"instance {n} instance_id", 0, MAX_U64),
        transport=item["transport"],
        model=_boolean(item["model"], f"instance {n} model"),
    )


def read(path: Path) -> SavedState | None:
    """The saved state, None when there is no file, `CorruptStateFile` when it is bad."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CorruptStateFile(f"it cannot be read: {exc}") from None
    return decode(data)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace the file in one step: a reader sees the old state or the new, never half."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class StateFileWriter:
    """Writes the latest state after each change, coalescing bursts, beside the event loop."""

    def __init__(
        self, path: Path, state: HealthState, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.state = state
        self.wall_clock = wall_clock
        self.writes = 0
        self.failures = 0
        self._dirty = asyncio.Event()
        self._failing = False
        state.on_change(self._dirty.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Write whenever the state changed, until `stop`; then write the last state once."""
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                dirty = asyncio.ensure_future(self._dirty.wait())
                await asyncio.wait({dirty, stopped}, return_when=asyncio.FIRST_COMPLETED)
                dirty.cancel()
                if self._dirty.is_set():
                    await self.write()
        finally:
            stopped.cancel()
        if self._dirty.is_set():
            await self.write()

    async def write(self) -> None:
        # The bytes are taken on the loop, so they are one consistent state.
        self._dirty.clear()
        data = encode(self.state.save(), self.wall_clock())
        try:
            await asyncio.to_thread(write_atomic, self.path, data)
        except OSError as exc:
            self.failures += 1
            if not self._failing:
                logger.warning("cannot write the state file %s: %s", self.path, exc)
            self._failing = True
            return
        if self._failing:
            logger.info("the state file %s is written again", self.path)
        self._failing = False
        self.writes += 1
