"""A socket file left by an earlier run: replaced when nobody listens on it, refused otherwise.

The worker's socket and the sd_notify socket share one rule, so that neither a mistyped path
that names a file nor a second sidecar on the same volume is ever unlinked.
"""

from __future__ import annotations

import errno
import logging
import socket
import stat
from pathlib import Path

logger = logging.getLogger("dynamo_health_sidecar")


class SocketFileError(OSError):
    """The socket file cannot be created at its path; `str()` is the line a user sees."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


def remove_stale_socket(path: Path, kind: socket.SocketKind) -> None:
    """Unlink a socket file of `kind` nobody listens on; refuse anything else."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SocketFileError(f"cannot inspect {path}: {exc}", exc.errno) from None
    if not stat.S_ISSOCK(mode):
        raise SocketFileError(
            f"{path} exists and is not a socket; refusing to replace it", errno.EEXIST
        )
    probe = socket.socket(socket.AF_UNIX, kind)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink(missing_ok=True)
        logger.info("replaced the stale socket %s left by a previous run", path)
        return
    except OSError as exc:
        if exc.errno == errno.EPROTOTYPE:
            other = "datagram" if kind is socket.SOCK_STREAM else "stream"
            raise SocketFileError(
                f"{path} is a {other} socket in use; refusing to replace it", errno.EADDRINUSE
            ) from None
        raise SocketFileError(f"cannot check the socket {path}: {exc}", exc.errno) from None
    finally:
        probe.close()
    raise SocketFileError(
        f"{path} is in use by another running process; is a sidecar already there?",
        errno.EADDRINUSE,
    )
