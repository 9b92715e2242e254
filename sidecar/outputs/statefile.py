"""The state file (`DYN_SIDECAR_STATE_FILE`): the worker's life, kept across sidecar restarts.

Written atomically (write, fsync, rename, fsync the directory) after every visible change,
off the event loop so a slow disk never delays a probe; read back once at start. A file
that is corrupt, of another format, or from another worker life is ignored with a warning:
a fresh start is always safe, a wrong restore is not.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sidecar.core.records import (
    LEASE_ID_PATTERN,
    MAX_LEASE_TTL,
    MIN_LEASE_TTL,
    EndCause,
    Instance,
    SavedState,
    Status,
)
from sidecar.settings import NAME_PATTERN

FORMAT = 2
# A file of the format before leases and unknown instance fields (format 1) is read too, so
# upgrading the sidecar beside a running worker keeps the worker's life.
READABLE_FORMATS = (1, 2)
# The largest state the limits allow (4,096 endpoints, 6 MiB of instances) with room to
# spare; the file and its temporary copy still fit the chart's 16 MiB volume.
MAX_BYTES = 7 * 1024 * 1024
MAX_U64 = 2**64 - 1
FILE_MODE = 0o640

logger = logging.getLogger("dynamo_health_sidecar")


class CorruptStateFile(ValueError):
    """The state file cannot be trusted; `str()` says why."""


def encode(saved: SavedState, written_at: float) -> bytes:
    """The file's bytes: compact JSON, keys sorted, each instance's record as it was encoded
    when the instance was registered (so a write costs a join, not an encoding, per instance)."""
    life = {
        "number": saved.life,
        "alive": saved.alive,
        "ever_ready": saved.ever_ready,
        "pid": saved.pid,
        "end_reason": saved.end_reason,
        "end_cause": saved.end_cause.value if saved.end_cause else None,
        "heartbeats": saved.heartbeats,
        "declared": saved.declared.value if saved.declared else None,
        "status_text": saved.status_text,
    }
    endpoints = {name: status.value for name, status in saved.endpoints.items()}
    return b"".join(
        (
            b'{"endpoints":',
            _compact(endpoints),
            b',"format":%d,"instances":[' % FORMAT,
            b",".join([instance.record for instance in saved.instances]),
            b'],"leases":',
            _compact(saved.leases),
            b',"life":',
            _compact(life),
            b',"written_at":',
            _compact(written_at),
            b"}",
        )
    )


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def decode(data: bytes) -> SavedState:
    """The saved state, or `CorruptStateFile` naming the first thing that is wrong."""
    if len(data) > MAX_BYTES:
        raise CorruptStateFile(f"it has {len(data)} bytes, over the limit of {MAX_BYTES}")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise CorruptStateFile(f"it is not JSON: {exc}") from None
    keys = {"format", "written_at", "life", "endpoints", "instances"}
    if not isinstance(document, dict):
        _object(document, "the file", keys | {"leases"})
    format_ = document.get("format")
    if type(format_) is not int or format_ not in READABLE_FORMATS:
        raise CorruptStateFile(f"its format is {format_!r}; this sidecar reads formats 1 and 2")
    top = _object(document, "the file", keys if format_ == 1 else keys | {"leases"})
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
        optional={"end_cause"},
    )
    declared = life["declared"]
    cause = life.get("end_cause")
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
        instances=tuple(
            _instance(item, n, format_) for n, item in enumerate(_list(top["instances"]))
        ),
        leases=_leases(top.get("leases", {})),
        end_cause=None if cause is None else _cause(cause),
    )


def _object(
    value: Any, what: str, keys: set[str], optional: frozenset[str] | set[str] = frozenset()
) -> dict[str, Any]:
    # An optional key is one a later version added to a format: older files lack it.
    if not isinstance(value, dict) or set(value) - optional != keys:
        raise CorruptStateFile(f"{what} is not an object with the keys {', '.join(sorted(keys))}")
    return value


def _cause(value: Any) -> EndCause:
    try:
        return EndCause(value)
    except ValueError:
        causes = ", ".join(cause.value for cause in EndCause)
        raise CorruptStateFile(f"life.end_cause is not one of {causes}") from None


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


def _leases(value: Any) -> Mapping[str, float]:
    if not isinstance(value, dict):
        raise CorruptStateFile("leases is not an object")
    for lease_id, ttl in value.items():
        if not LEASE_ID_PATTERN.fullmatch(lease_id):
            raise CorruptStateFile(f"lease {lease_id[:40]!r} is not 16 hexadecimal digits")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise CorruptStateFile(f"lease {lease_id} has a TTL that is not a number")
        if not MIN_LEASE_TTL <= ttl <= MAX_LEASE_TTL:
            raise CorruptStateFile(
                f"lease {lease_id} has a TTL outside {MIN_LEASE_TTL:g} to {MAX_LEASE_TTL:g}"
            )
    return {lease_id: float(ttl) for lease_id, ttl in value.items()}


def _instance(value: Any, n: int, format_: int) -> Instance:
    keys = {"namespace", "component", "endpoint", "instance_id", "transport", "model"}
    item = _object(value, f"instance {n}", keys if format_ == 1 else keys | {"extra", "lease"})
    if not isinstance(item["transport"], dict):
        raise CorruptStateFile(f"instance {n} has a transport that is not an object")
    extra = item.get("extra", {})
    if not isinstance(extra, dict):
        raise CorruptStateFile(f"instance {n} has extra fields that are not an object")
    lease = item.get("lease")
    if lease is not None and not (isinstance(lease, str) and LEASE_ID_PATTERN.fullmatch(lease)):
        raise CorruptStateFile(f"instance {n} has a lease that is not 16 hexadecimal digits")
    return Instance(
        namespace=_name(item["namespace"], f"instance {n} namespace"),
        component=_name(item["component"], f"instance {n} component"),
        endpoint=_name(item["endpoint"], f"instance {n} endpoint"),
        instance_id=_integer(item["instance_id"], f"instance {n} instance_id", 0, MAX_U64),
        transport=item["transport"],
        model=_boolean(item["model"], f"instance {n} model"),
        extra=extra,
        lease=lease,
    )


def read(path: Path) -> SavedState | None:
    """The saved state, None when there is no file, `CorruptStateFile` when it is bad.

    Opened so that nothing placed at the path can mislead or block the start: a symbolic
    link is not followed, a FIFO or device does not block (`O_NONBLOCK`) and is refused
    once `fstat` shows it is not a regular file.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CorruptStateFile(_unopenable(path, exc)) from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise CorruptStateFile(f"it is not a regular file but {_kind(info.st_mode)}")
        if info.st_size > MAX_BYTES:
            raise CorruptStateFile(f"it has {info.st_size} bytes, over the limit of {MAX_BYTES}")
        data = _read_all(descriptor)
    except OSError as exc:
        raise CorruptStateFile(f"it cannot be read: {exc.strerror}") from None
    finally:
        os.close(descriptor)
    return decode(data)


def _read_all(descriptor: int) -> bytes:
    chunks, size = [], 0
    while size <= MAX_BYTES and (chunk := os.read(descriptor, 1024 * 1024)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _unopenable(path: Path, exc: OSError) -> str:
    """Why the path cannot be opened, naming what is there when that is the reason."""
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link, which the sidecar does not follow"
    with contextlib.suppress(OSError):
        mode = path.lstat().st_mode
        if not stat.S_ISREG(mode):
            return f"it is not a regular file but {_kind(mode)}"
    return f"it cannot be read: {exc.strerror}"


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "something else")


def _temporary_glob(path: Path) -> str:
    return f".{glob.escape(path.name)}.*.tmp"


def remove_leftovers(path: Path) -> None:
    """Remove the temporary copies a killed sidecar left beside the state file: each is as
    large as the state, and a few would fill the chart's small in-memory volume."""
    for leftover in path.parent.glob(_temporary_glob(path)):
        try:
            if stat.S_ISDIR(leftover.lstat().st_mode):
                continue
            leftover.unlink()
        except OSError as exc:
            logger.warning("cannot remove the leftover temporary file %s: %s", leftover, exc)
            continue
        logger.info(
            "removed %s, a temporary copy of the state file left by a killed sidecar", leftover
        )


def write_atomic(path: Path, data: bytes) -> None:
    """Replace the file in one step: a reader sees the old state or the new, never half.

    The temporary copy has a name nobody can predict and is created with `O_EXCL` and
    `O_NOFOLLOW`, so a link or file planted beside the state file is never written through.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor = os.open(temporary, flags, FILE_MODE)
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
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def encode_and_write(path: Path, saved: SavedState, written_at: float) -> None:
    write_atomic(path, encode(saved, written_at))
