"""Coverage-guided fuzzing of the pure parsers with atheris (libFuzzer), where installed.

Atheris fits the parsers that take bytes or text alone (sd_notify datagrams, the state
file, settings, the worker socket's body checks); the real sockets and the real process
are fuzzed with hypothesis in test_fuzz.py. Each target runs in its own process for a
bounded number of inputs (short) or a bounded time (long); a crash fails the test and
leaves the input that caused it in the test's temporary directory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Record, Scale

pytestmark = pytest.mark.reliability
pytest.importorskip("atheris", reason="atheris is not installed (optional: pip install atheris)")

TARGETS = Path(__file__).with_name("atheris_targets.py")


@pytest.mark.parametrize("target", ["datagram", "state_file", "setting", "socket_body"])
def test_atheris_parser_takes_any_bytes(
    target: str, tmp_path: Path, scale: Scale, figure: Record
) -> None:
    bound = [f"-runs={scale.atheris_runs}"] if scale.atheris_runs else ["-max_total_time=60"]
    result = subprocess.run(
        [
            sys.executable,
            str(TARGETS),
            target,
            *bound,
            f"-artifact_prefix={tmp_path}/",
            "-print_final_stats=1",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stderr
    assert result.returncode == 0, output[-4000:]
    done = [line for line in output.splitlines() if line.startswith("Done ")]
    assert done, output[-2000:]
    figure(f"atheris {target}", done[0])
