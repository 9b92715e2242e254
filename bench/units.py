"""Units and the way the report writes numbers, so every table shows them alike."""

from __future__ import annotations

KIB = 1024
MIB = 1024 * 1024


def ms(us: float) -> str:
    """Microseconds (what wrk and kubeprobe report) as milliseconds (what the targets say)."""
    return f"{us / 1000:.2f} ms"


def mb(n: float) -> str:
    """Bytes as MB of 2**20 bytes, the unit of the memory targets."""
    return f"{n / MIB:.1f} MB"


def per_s(rate: float) -> str:
    """A rate with thousands separators: rates here run to tens of thousands a second."""
    return f"{rate:,.0f}/s"
