"""What the kernel says a process (or the whole machine) has used, read from /proc.

Every reading covers a process tree: nginx answers from a worker its master started, so
the master alone would read as idle.
"""

from __future__ import annotations

import contextlib
import os
import resource
from pathlib import Path

from units import KIB

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []  # the process is gone: it has no children either
    return [int(x) for x in text.split()]


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (nginx's worker, say)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(_children(current))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process tree, from /proc/PID/stat (clock ticks)."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def cpu_ns_precise(pid: int) -> int | None:
    """CPU time in nanoseconds of every live thread of a process tree (/proc/.../schedstat),
    or None where the kernel has no schedstat. Idle CPU is a few ticks a minute: the
    clock ticks of /proc/PID/stat are too coarse for it."""
    total, read = 0, False
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    total += int((task / "schedstat").read_text().split()[0])
                    read = True
    return total if read else None


def rss_bytes(pid: int) -> int:
    """VmRSS of a process tree."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * KIB
    return total


def machine_busy_seconds() -> float:
    """user + nice + system time of every CPU (irq and softirq left out)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return (int(fields[0]) + int(fields[1]) + int(fields[2])) / CLK_TCK


def own_cpu_seconds() -> float:
    """CPU of this process and of every child it has waited for (the load tools)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total
