"""What a setting is (`Option`), and the kinds of value the sidecar itself defines for them.

Kept apart from the records (`sidecar.setting_records`) so that those stay a plain list, one
declaration per setting (docs/protocol.md section 2).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class Mode(enum.Enum):
    WORKER = "worker"
    FRONTEND = "frontend"


class Kube(enum.Enum):
    ON = "on"
    OFF = "off"
    AUTO = "auto"


class LogFormat(enum.Enum):
    TEXT = "text"
    JSON = "json"


class LogLevel(enum.Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Option(Generic[T]):
    """One setting: everything `serve`'s option, the parsing and `Settings` need to know of it.
    Built by `literal` or `described`, never directly, so that `literal` tells the truth about
    `default_text`."""

    # The `Settings` attribute, and the argparse destination of the flag.
    field: str
    variable: str
    # "" when the setting has no flag, and then no metavar either.
    flag: str
    # What the value is, as `--help` names it: PORT, SECONDS, {worker,frontend}.
    metavar: str
    # What the value means; `--help` appends the default from `default_text`.
    help: str
    parse: Callable[[str, str], T]
    default: T
    # The default as `--help` and the README show it.
    default_text: str
    # Whether `default_text` is a value as a user would write it (`9090`), or words for a
    # default that no value says (off, every interface).
    literal: bool


def literal(
    field: str,
    variable: str,
    flag: str,
    *,
    metavar: str,
    parse: Callable[[str, str], T],
    default: str,
    help: str,
) -> Option[T]:
    """A setting whose default is a value a user could set: written as they would write it
    and parsed as theirs is, so the default shown is the default used."""
    return Option(
        field, variable, flag, metavar, help, parse, parse(variable, default), default, True
    )


def described(
    field: str,
    variable: str,
    flag: str,
    *,
    metavar: str,
    parse: Callable[[str, str], T],
    default: T,
    meaning: str,
    help: str,
) -> Option[T]:
    """A setting whose default no value says (a feature off, a default worked out at start):
    `meaning` says it in words."""
    return Option(field, variable, flag, metavar, help, parse, default, meaning, False)


def choices(kind: type[enum.Enum]) -> str:
    """An enumeration's values as a metavar shows them: `{worker,frontend}`."""
    return "{" + ",".join(member.value for member in kind) + "}"
