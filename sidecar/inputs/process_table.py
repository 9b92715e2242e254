"""The processes of the pod, read from `/proc`: who is the worker, and is it still the same one.

A process is identified by its pid and its start time, so a pid reused by a later process is a
new worker. The start time is read as the kernel keeps it, in clock ticks after boot: unlike
psutil's `create_time()`, it does not move when the wall clock is set, so a clock step cannot
look like a restart.

Which process is the worker:
- every process whose command line matches, except zombies, the sidecar itself, its ancestors
  (a shell that started the sidecar with the pattern as a flag) and its descendants that are
  copies of it (forks share the sidecar's command line, pattern included). A child that runs
  another program (as `demo` starts its simulated worker) is watched like any other process;
- of several, the oldest (lowest start time, then lowest pid): the worker's main process, not
  the children it forked, which share its command line.

`process.py` watches the one found here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import psutil  # type: ignore[import-untyped]

_SCAN_ATTRS = ["pid", "ppid", "cmdline", "status"]
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, order=True)
class Identity:
    """One process over time: its pid, and when it started (seconds after boot).

    Ordered by start time, then pid: the smaller of two is the older process.
    """

    started: float
    pid: int


def identify(pid: int) -> Identity | None:
    """The identity of the running process with this pid; None when it is gone or a zombie."""
    try:
        if psutil.LINUX:
            with open(f"{psutil.PROCFS_PATH}/{pid}/stat", "rb") as stat:
                data = stat.read()
            # The name (field 2) is in parentheses and may hold anything, spaces included.
            fields = data[data.rindex(b")") + 2 :].split()
            # fields[0] is the state (field 3), fields[19] the start time in ticks (field 22).
            if fields[0] in (b"Z", b"X", b"x"):
                return None
            return Identity(int(fields[19]) / _CLOCK_TICKS, pid)
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return Identity(float(process.create_time()), pid)
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


def find_oldest(pattern: re.Pattern[str]) -> tuple[Identity, str] | None:
    """The oldest process whose command line matches, that is not the sidecar or one of its
    copies, and its command line; None when there is none."""
    me = os.getpid()
    parents: dict[int, int] = {}
    cmdlines: dict[int, str] = {}
    matches: list[int] = []
    for process in psutil.process_iter(_SCAN_ATTRS):
        info = process.info
        pid = int(info["pid"])
        parents[pid] = int(info["ppid"] or 0)
        arguments = info["cmdline"]
        if not arguments or info["status"] == psutil.STATUS_ZOMBIE:
            continue  # kernel threads, zombies, and what we may not read
        cmdline = " ".join(arguments)
        cmdlines[pid] = cmdline
        if pattern.search(cmdline):
            matches.append(pid)
    if not matches:
        return None
    excluded = _ancestors(me, parents) | _copies(me, parents, cmdlines)
    candidates = [
        identity
        for pid in matches
        if pid not in excluded and (identity := identify(pid)) is not None
    ]
    if not candidates:
        return None
    oldest = min(candidates)
    return oldest, cmdlines[oldest.pid]


def _ancestors(pid: int, parents: dict[int, int]) -> set[int]:
    """The process itself and its parent chain."""
    chain: set[int] = set()
    while pid and pid not in chain:
        chain.add(pid)
        pid = parents.get(pid, 0)
    return chain


def _copies(pid: int, parents: dict[int, int], cmdlines: dict[int, str]) -> set[int]:
    """The descendants of a process that still run its command line (its forks)."""
    own = cmdlines.get(pid)
    if own is None:
        return set()
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    copies: set[int] = set()
    seen = {pid}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if child in seen:
            continue
        seen.add(child)
        if cmdlines.get(child) == own:
            copies.add(child)
        todo.extend(children.get(child, []))
    return copies
