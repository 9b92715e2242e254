"""When the results of an active check in a row are enough to act on the worker's health.

The kubelet's prober keeps one rule apart from its probes: a result is published once it has
come `failureThreshold` times in a row (docs/protocol.md section 7.1). The active checks keep
theirs the same way, here, apart from their requests and their pacing, so that every rule that
decides health lives in the core:

- the mirror (docs/protocol.md sections 6.5 and 8.1): `misses` misses in a row end the
  worker's life, but only once the status server has answered in that life, since a worker
  still importing its libraries is not hung;
- canaries (docs/protocol.md section 8.2): `failures` failures in a row hold the gated
  endpoint `notready`, a pass releases it, a new life starts the count again, and a canary
  that began in another life than the one it is heard in judged the old worker and counts
  for nothing.

Each rule is told one result at a time and answers with what the state must be told (`Act`);
it does no I/O and reads no clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Act(enum.Enum):
    """What one more result asks of the state."""

    NOTHING = "nothing"  # counted; not enough in a row to change anything
    END_LIFE = "end-life"  # the worker is hung: end its life (docs/protocol.md section 6.2)
    HOLD = "hold"  # hold the gated endpoint notready
    RELEASE = "release"  # the endpoint is again what the worker says
    UNCOUNTED = "uncounted"  # it judged a worker whose life has ended since


@dataclass
class Misses:
    """The mirror's rule: `threshold` misses in a row end the life that its server answered in."""

    threshold: int
    # Misses since the last answer.
    in_a_row: int = 0
    # The life in which the status server last answered: it arms the rule for that life only.
    answered_in: int | None = None

    @property
    def end_reason(self) -> str:
        """Why the life ends, as the live path and the life's transition say it."""
        return f"its status server did not answer {self.threshold} times"

    def armed(self, life: int) -> bool:
        """Whether misses can end `life`: the status server answered in it."""
        return self.answered_in == life

    def answered(self, life: int) -> None:
        """A usable answer, copied into `life` (a new one, if the answer began it)."""
        self.in_a_row = 0
        self.answered_in = life

    def missed(self, life: int) -> Act:
        """A poll without a usable answer, while `life` is the current one."""
        self.in_a_row += 1
        if self.in_a_row >= self.threshold and self.armed(life):
            return Act.END_LIFE
        return Act.NOTHING


@dataclass
class Failures:
    """The canaries' rule: `threshold` failures in a row hold the endpoint, a pass releases it."""

    threshold: int
    # The life the run of failures belongs to; a run of another life counts as none.
    life: int | None = None
    run: int = 0

    def in_a_row(self, life: int) -> int:
        """Failures in a row in `life`: a new life is a new worker, and earlier failures say
        nothing about it."""
        return self.run if life == self.life else 0

    def holding(self, life: int) -> bool:
        """Whether enough canaries failed in a row in `life` to hold the endpoint."""
        return self.in_a_row(life) >= self.threshold

    def passed(self, began_in: int, life: int) -> Act:
        """A canary that began in `began_in` passed, heard while `life` is the current one."""
        if began_in != life:
            return Act.UNCOUNTED
        self.life, self.run = life, 0
        return Act.RELEASE

    def failed(self, began_in: int, life: int) -> Act:
        """A canary that began in `began_in` failed, heard while `life` is the current one. Every
        failure past the threshold holds again: the state keeps the latest reason."""
        if began_in != life:
            return Act.UNCOUNTED
        self.life, self.run = life, self.in_a_row(life) + 1
        return Act.HOLD if self.run >= self.threshold else Act.NOTHING
