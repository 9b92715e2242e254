"""Progress lines for the person watching the run.

They go to stderr, so stdout carries the report alone and can be redirected to a file.
"""

from __future__ import annotations

import sys
import time


def log(message: str) -> None:
    """One time-stamped progress line on stderr (flushed: a run is long and piped)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
