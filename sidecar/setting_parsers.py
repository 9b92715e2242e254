"""How the text of a setting becomes its value, or the one line that refuses it.

Every parser takes the source (the variable or flag the text came from) and the text, and
returns the value or raises `SettingsError` whose `str()` is the line the user sees: the
source, the value (shortened past `SHOWN_MAX` characters), and what is allowed
(docs/protocol.md section 1.2). Dynamo's own variables are read as Dynamo 1.6.1 reads them
(docs/protocol.md section 10.12): whitespace around ignored, a double-quoted string unquoted.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import os
import re
import urllib.parse
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sidecar.core.records import MAX_ENDPOINTS, Status
from sidecar.kube.rules import check_api_url, check_service_account_dir

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,128}")
NAME_RULE = "1 to 128 characters of A-Z a-z 0-9 _ . -"
# RFC 3986 path characters without percent escapes: Starlette matches decoded paths.
PATH_PATTERN = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/-]{0,1023}")
PATH_RULE = (
    "at most 1024 characters of letters, digits and - . _ ~ ! $ & ' ( ) * + , ; = : @ /, "
    "and no segment that starts with : or * (Dynamo refuses those)"
)
SUN_PATH_MAX = 107
# Linux's limits on a path (4,096 bytes with its NUL) and on one name in it: longer ones
# fail with ENAMETOOLONG.
PATH_MAX = 4095
NAME_MAX = 255
# The state file's temporary copy is `.NAME.PID.RANDOM.tmp`: at most 30 bytes longer.
STATE_FILE_NAME_MAX = NAME_MAX - 30
# An IPv6 scope (after `%`) is an interface name (at most 15 bytes) or its index.
SCOPE_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,15}")
# An error line shows a value up to this many characters, and longer ones shortened.
SHOWN_MAX = 200
CANARY_METHODS = ("GET", "POST", "PUT")
SECONDS_PATTERN = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")

E = TypeVar("E", bound=enum.Enum)


class SettingsError(ValueError):
    """A setting is invalid; `str()` is the one line shown to the user."""


def shown(text: str) -> str:
    """A value as an error line shows it: quoted and escaped, and past `SHOWN_MAX`
    characters its beginning and end with its length."""
    if len(text) <= SHOWN_MAX:
        return repr(text)
    return f"{text[: SHOWN_MAX - 50]!r}...{text[-40:]!r} ({len(text)} characters)"


def invalid(source: str, text: str, allowed: str) -> SettingsError:
    """The usual refusal: `SOURCE='text' is invalid: what is allowed`."""
    return SettingsError(f"{source}={shown(text)} is invalid: {allowed}")


def printable(text: str) -> str:
    """`text` with each character that does not print (a newline, a lone surrogate) escaped
    as Python writes it, so that it stays on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def reshown(line: str, source: str, named: str, text: str) -> str:
    """`line`, which names `source={named!r}` in full (kube's messages), showing `text`,
    and printable (the paths it names)."""
    return printable(line.replace(f"{source}={named!r}", f"{source}={shown(text)}", 1))


def _dynamo_text(text: str) -> str:
    """A text variable as Dynamo's configuration (figment) reads it: stripped, and a
    double-quoted string unquoted, its escapes decoded."""
    value = text.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        if isinstance(decoded, str):
            return decoded
    return value


def parse_enabled(source: str, text: str) -> bool:
    """Only true: false would leave a sidecar that serves no probes (docs/protocol.md 2.1)."""
    value = text.strip()
    if value == "false":
        raise SettingsError(
            f"{source}={shown(text)} turns the probe server off, and a sidecar that serves no "
            "probes is a misconfiguration: set it to true or unset it"
        )
    if value != "true":
        raise invalid(source, text, "expected true, in lowercase as Dynamo reads it")
    return True


def parse_port(source: str, text: str) -> int:
    """Dynamo's integer: an optional sign, decimal digits (leading zeros too), whitespace
    around. A negative port (Dynamo's off) and 0 (any free port) serve no probe the kubelet
    can find."""
    match = re.fullmatch(r"([+-]?)0*([0-9]+)", text.strip())
    if match is None:
        raise invalid(source, text, "expected a port from 1 to 65535")
    sign, digits = match.groups()
    if sign == "-" and digits != "0":
        raise SettingsError(
            f"{source}={shown(text)} turns the probe server off, and a sidecar that serves no "
            "probes is a misconfiguration: use a port from 1 to 65535"
        )
    if digits == "0":
        raise SettingsError(
            f"{source}={shown(text)} asks for any free port, which no probe can find: use a "
            "port from 1 to 65535"
        )
    if len(digits) > 5 or int(digits) > 65535:
        raise invalid(source, text, "expected a port from 1 to 65535")
    return int(digits)


def parse_host(source: str, text: str) -> str:
    """An IP address, normalised; an IPv6 scope must be an interface's name or index."""
    value = text.strip()
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        address = None
    scope = getattr(address, "scope_id", None)
    if address is None or (scope is not None and not SCOPE_PATTERN.fullmatch(scope)):
        raise invalid(source, text, "expected an IP address, such as 0.0.0.0, :: or 127.0.0.1")
    return str(address)


def parse_path(source: str, text: str) -> str:
    """A URL path the probe port can route as Dynamo does (docs/protocol.md section 2.1)."""
    value = _dynamo_text(text)
    if not PATH_PATTERN.fullmatch(value) or re.search(r"/[:*]", value):
        raise invalid(source, text, f"expected a URL path that starts with / and has {PATH_RULE}")
    return value


def parse_status(source: str, text: str) -> Status:
    """Dynamo's spellings only, lowercase: Dynamo refuses `Ready`, so the sidecar does too."""
    try:
        return Status(_dynamo_text(text))
    except ValueError:
        raise invalid(
            source, text, "expected ready or notready, in lowercase as Dynamo reads it"
        ) from None


def parse_endpoint_list(source: str, text: str) -> tuple[str, ...]:
    """Dynamo's JSON list, the same list after a shell ate its quotes, or names and commas;
    repeated names count once."""
    value = text.strip()
    items: list[object]
    if value.startswith("[") and value.endswith("]"):
        try:
            decoded = json.loads(value)
        except (ValueError, RecursionError):
            decoded = None
        if isinstance(decoded, list) and all(isinstance(item, str) for item in decoded):
            items = decoded
        else:
            # `export X="["generate"]"` leaves `[generate]`: the shell ate the quotes.
            items = [part.strip().strip("'\"") for part in value[1:-1].split(",")]
            if items == [""]:
                items = []
    else:
        items = [part.strip() for part in value.split(",")]
    names: list[str] = []
    for item in items:
        if not isinstance(item, str) or not NAME_PATTERN.fullmatch(item):
            raise invalid(
                source,
                text,
                f"endpoint names are {NAME_RULE}, given as "
                '["generate"], [generate] or generate,clear_kv_blocks',
            )
        names.append(item)
    unique = tuple(dict.fromkeys(names))
    if len(unique) > MAX_ENDPOINTS:
        raise invalid(source, text, f"the sidecar keeps at most {MAX_ENDPOINTS} endpoints")
    return unique


def _last_name(text: str) -> str:
    """The path's last name as written (pathlib drops a last `.`)."""
    return text.rpartition("/")[2]


def parse_socket(source: str, text: str) -> Path:
    """A file path short enough for `sockaddr_un`, or binding fails only later."""
    name = _last_name(text)
    if "\0" in text or text.endswith("/") or not text.startswith("/") or name in (".", ".."):
        raise invalid(source, text, "expected an absolute file path for the Unix socket")
    if len(os.fsencode(text)) > SUN_PATH_MAX:
        raise invalid(source, text, f"a Unix socket path is at most {SUN_PATH_MAX} bytes")
    return Path(text)


def parse_pattern(source: str, text: str) -> re.Pattern[str]:
    """A Python regular expression; what `re` says is wrong with one ends the line."""
    if not text.strip():
        raise invalid(source, text, "expected a regular expression, such as ^python3? -m dynamo")
    try:
        # A warning (a possible nested set) would be a second line on stderr.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return re.compile(text)
    except re.error as exc:
        reason = str(exc)
    except RecursionError:
        reason = "it is nested too deeply"
    except OverflowError as exc:  # a repetition count over 2**32
        reason = str(exc)
    if len(reason) > SHOWN_MAX:  # a group name it quotes
        reason = reason[:SHOWN_MAX] + "..."
    raise invalid(source, text, f"expected a regular expression ({printable(reason)})")


def parse_state_file(source: str, text: str) -> Path | None:
    """A file path the system can look up, with room for its temporary copy, or off."""
    if text.strip().lower() == "off":
        return None
    name = _last_name(text)
    if "\0" in text or text.endswith("/") or not text.startswith("/") or name in (".", ".."):
        raise invalid(source, text, "expected an absolute file path, or off")
    problem = length_problem(text, spare=NAME_MAX - STATE_FILE_NAME_MAX)
    if problem is None and len(os.fsencode(name)) > STATE_FILE_NAME_MAX:
        problem = f"the file's name is at most {STATE_FILE_NAME_MAX} bytes, leaving room for its "
        problem += "temporary copy beside it"
    if problem is not None:
        raise invalid(source, text, problem)
    return Path(text)


def length_problem(text: str, spare: int) -> str | None:
    """Why the system could never look the path up (ENAMETOOLONG), or None; `spare` bytes
    stay free for the longer path the sidecar makes from it."""
    data = os.fsencode(text)
    if len(data) + spare > PATH_MAX:
        return f"a path is at most {PATH_MAX - spare} bytes"
    if any(len(name) > NAME_MAX for name in data.split(b"/")):
        return f"each name in a path is at most {NAME_MAX} bytes"
    return None


def parse_seconds(source: str, text: str) -> float:
    """A wait that may be 0 (no wait), up to a day."""
    value = text.strip()
    if not SECONDS_PATTERN.fullmatch(value) or float(value) > 86400:
        raise invalid(
            source, text, "expected a number of seconds from 0 to 86400, such as 5 or 2.5"
        )
    return float(value)


def parse_timeout(source: str, text: str) -> float:
    """A timeout or an interval: 0 would fire at once, or poll without pause."""
    value = text.strip()
    if not SECONDS_PATTERN.fullmatch(value) or not 0 < float(value) <= 86400:
        raise invalid(
            source, text, "expected a number of seconds above 0 and up to 86400, such as 30 or 2.5"
        )
    return float(value)


def parse_name(source: str, text: str) -> str:
    """An endpoint's name, as the worker's socket accepts it (docs/protocol.md section 4.2)."""
    if not NAME_PATTERN.fullmatch(text):
        raise invalid(source, text, f"endpoint names are {NAME_RULE}")
    return text


def parse_url(source: str, text: str) -> str:
    """An http(s) URL the active checks can request (docs/protocol.md section 8)."""
    value = text.strip()
    try:
        parts = urllib.parse.urlsplit(value)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:  # a bracket out of place, or a port that is not a number
        raise invalid(source, text, "expected an http:// or https:// URL with a host") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not port_ok
        or not _requestable(value)
    ):
        raise invalid(source, text, "expected an http:// or https:// URL with a host")
    return value


def _requestable(url: str) -> bool:
    """Whether httpx, which sends the active checks' requests, can build one for `url`: its
    host must be a name (IDNA) or an address, and the rest encodable (no bytes that were not
    UTF-8). Imported here: only a sidecar with an active check loads it."""
    import httpx

    try:
        httpx.Request("GET", url)
    except (httpx.InvalidURL, ValueError):  # ValueError: IDNAError and UnicodeEncodeError
        return False
    return True


def parse_count(source: str, text: str) -> int:
    """How many in a row: at least one, and few enough to mean something."""
    value = text.strip()
    if not re.fullmatch(r"[0-9]{1,4}", value) or not 1 <= int(value) <= 1000:
        raise invalid(source, text, "expected a whole number from 1 to 1000")
    return int(value)


def parse_method(source: str, text: str) -> str:
    """The canary's method, in any case: the methods a health request or a completion uses."""
    value = text.strip().upper()
    if value not in CANARY_METHODS:
        raise invalid(
            source, text, f"expected {', '.join(CANARY_METHODS[:-1])} or {CANARY_METHODS[-1]}"
        )
    return value


def parse_json(source: str, text: str) -> str:
    """Strict JSON in UTF-8, kept as written: it is sent as it is."""
    try:
        json.loads(text, parse_constant=_no_constant)
        text.encode()
    except UnicodeEncodeError:
        raise invalid(source, text, "expected JSON in UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise invalid(source, text, f"expected JSON ({exc})") from None
    return text


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_expect(source: str, text: str) -> tuple[tuple[int, int], ...]:
    """Codes and ranges, `200-299` or `200,204`: each range as (first, last)."""
    ranges = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*([1-5][0-9]{2})\s*(?:-\s*([1-5][0-9]{2})\s*)?", part)
        if not match or int(match[2] or match[1]) < int(match[1]):
            raise invalid(
                source, text, "expected status codes from 100 to 599, such as 200-299 or 200,204"
            )
        ranges.append((int(match[1]), int(match[2] or match[1])))
    return tuple(ranges)


def checked(check: Callable[[str, str], str | None]) -> Callable[[str, str], str]:
    """A parser from one of `kube`'s validators, which return the error line or None."""

    def parse(source: str, text: str) -> str:
        value = text.strip()
        error = check(source, value)
        if error is not None:
            raise SettingsError(reshown(error, source, value, text))
        return value

    return parse


def enum_parser(kind: type[E]) -> Callable[[str, str], E]:
    """A parser of one of `kind`'s values, in any case, whitespace around ignored."""
    allowed = " or ".join(", ".join(m.value for m in kind).rsplit(", ", 1))

    def parse(source: str, text: str) -> E:
        try:
            return kind(text.strip().lower())
        except ValueError:
            raise invalid(source, text, f"expected {allowed}") from None

    return parse


def parse_service_account_dir(source: str, text: str) -> Path:
    """A directory whose `ca.crt` the system can still look up."""
    value = checked(check_service_account_dir)(source, text)
    problem = length_problem(value, spare=len("/ca.crt"))
    if problem is not None:
        raise invalid(source, text, problem)
    return Path(value)


def parse_api_url(source: str, text: str) -> str:
    """The API server's URL without the `/` the client would double."""
    return checked(check_api_url)(source, text).rstrip("/")
