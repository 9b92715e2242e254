"""Coverage-guided fuzzing (atheris, libFuzzer) of the sidecar's pure parsers.

`python atheris_targets.py TARGET [libFuzzer flags]`, run by test_atheris.py. Each target
accepts any bytes; the only allowed outcomes are a value or the parser's own refusal.
Anything else (another exception, a hang) is a crash that libFuzzer reports and saves.
"""

from __future__ import annotations

import json
import re
import sys

import atheris

with atheris.instrument_imports(include=["sidecar"]):
    from sidecar import settings
    from sidecar.inputs import notify
    from sidecar.inputs import socket_api as control_app
    from sidecar.outputs import statefile


def datagram(data: bytes) -> None:
    try:
        parsed = notify.parse_datagram(data)
    except notify.MalformedDatagram:
        return
    assert isinstance(parsed, dict)


def state_file(data: bytes) -> None:
    try:
        statefile.decode(data)
    except statefile.CorruptStateFile:
        return


# Each setting as a variable, and as a flag where it has one.
SOURCES = [(option.field, option.variable, False) for option in settings.OPTIONS] + [
    (option.field, option.flag, True) for option in settings.OPTIONS if option.flag
]
MIB = 1024 * 1024


def setting(data: bytes) -> None:
    """Any text for any variable or flag, up to 1 MiB (after a second byte 0xFF, the third
    repeats the rest up to 2**20 times): Settings, or SettingsError with one printable line
    that names the setting and shows the value shortened. The crashes this target found (a
    socket path of `/.`, a service-account directory name over 255 bytes, a URL with a
    bracket out of place) are fixed, and pinned by tests in test_fuzz.py and test_cli.py."""
    if len(data) < 2:
        return
    field, name, as_flag = SOURCES[data[0] % len(SOURCES)]
    repeated = data[1] == 0xFF and len(data) > 2
    payload, repeat = (data[3:], 1 << (data[2] % 21)) if repeated else (data[2:], 1)
    text = (payload.decode("utf-8", "surrogateescape") * repeat)[:MIB]
    if not text and not as_flag:
        return  # an empty variable is unset
    try:
        settings.load({}, {field: text}) if as_flag else settings.load({name: text})
    except settings.SettingsError as exc:
        message = str(exc)
        assert message.startswith(f"{name}={settings.shown(text)} "), message[:300]
        assert message.isprintable(), message[:300]
    finally:
        re.purge()  # re caches 512 patterns; of 1 MiB each, they would fill the memory limit


def socket_body(data: bytes) -> None:
    """What the worker socket's routes do with a body, past the 64 KiB check."""
    if len(data) > control_app.MAX_BODY:
        return
    try:
        body = (
            None
            if not data.strip()
            else json.loads(data, parse_constant=control_app._refuse_constant)
        )
    except (ValueError, RecursionError):
        return  # 400
    for check in (
        control_app.parse_instance,
        control_app.check_pid,
        lambda value: control_app.check_status(
            control_app.require_object(value, ("status",)).get("status")
        ),
    ):
        try:
            check(body)
        except control_app.ApiError as exc:
            assert exc.status_code == 422 and exc.message


TARGETS = {
    "datagram": datagram,
    "state_file": state_file,
    "setting": setting,
    "socket_body": socket_body,
}


def main() -> None:
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
