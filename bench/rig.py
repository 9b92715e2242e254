"""What every measurement needs, passed as one value: the tools, how long to run, the
fleet that starts and stops servers, and the quiet gate."""

from __future__ import annotations

from dataclasses import dataclass

from fleet import Fleet
from profiles import Profile
from quiet import Quiet
from tooling import Tools


@dataclass(frozen=True)
class Rig:
    """The bench's equipment for one run."""

    tools: Tools
    profile: Profile
    fleet: Fleet
    quiet: Quiet
