"""The bookkeeping of the worker's lives (docs/protocol.md section 6.1): the current life's
record, the sessions that hold lives, and the heartbeat deadline its signals set.

`Lives` keeps the records and decides nothing: the state says when a life begins or ends,
and publishes each. The state sets the current life's plain fields itself (what the worker
declared, its status text, the watched pid, whether it has been ready); what takes more than
setting one field (a life's beginning and end, its sessions, a signal's marks) is done here.
"""

from __future__ import annotations

from sidecar.core.records import EndCause, Life, SavedState
from sidecar.core.views import LifeView


class Lives:
    """The current life, and the session tokens that outlive it."""

    def __init__(self, started_at: float) -> None:
        self.current = Life(number=1, began_at=started_at)
        # The open sessions that hold a life (worker mode): kept apart from the life's own,
        # since a session still open when a new life begins watches that life too.
        self._open_sessions: set[int] = set()
        self._last_token = 0

    @property
    def alive(self) -> bool:
        return self.current.ended_at is None

    def view(self) -> LifeView:
        """The current life as readers outside the core see it."""
        life = self.current
        return LifeView(
            number=life.number,
            began_at=life.began_at,
            ended_at=life.ended_at,
            end_reason=life.end_reason,
            end_cause=life.end_cause,
            ever_ready=life.ever_ready,
            pid=life.pid,
            status_text=life.status_text,
            sessions=len(life.sessions),
            declared=life.declared,
            last_activity=life.last_activity,
        )

    def heartbeat_deadline(self, timeout: float | None) -> float | None:
        """When silence ends the current life: armed by its first heartbeat, moved by every
        signal; None when nothing is armed."""
        life = self.current
        if timeout is None or not self.alive or life.last_heartbeat is None:
            return None
        assert life.last_signal is not None
        return life.last_signal + timeout

    # -- changes ---------------------------------------------------------------------------

    def begin(self, now: float) -> Life:
        """A new life begins; returns the one that ended."""
        previous = self.current
        # A session still open belongs to a worker that is still there: it watches the new
        # life too (a worker that was silent past its heartbeat deadline, then spoke again).
        self.current = Life(
            number=previous.number + 1, began_at=now, sessions=set(self._open_sessions)
        )
        return previous

    def end(self, reason: str, cause: EndCause, now: float) -> None:
        life = self.current
        life.ended_at, life.end_reason, life.end_cause = now, reason, cause

    def signal(self, now: float, pid: int | None, activity: bool) -> bool:
        """The worker spoke in the current life; returns whether its pid changed, which the
        state file keeps."""
        life = self.current
        life.last_signal = now
        if activity:
            life.last_activity = now
        if pid is None or pid == life.pid:
            return False
        life.pid = pid
        return True

    def heartbeat(self, now: float) -> bool:
        """Returns whether it is the life's first, the one that arms the deadline."""
        first = self.current.last_heartbeat is None
        self.current.last_heartbeat = now
        return first

    def new_session(self) -> int:
        """A token for a session, never given before."""
        self._last_token += 1
        return self._last_token

    def hold(self, token: int) -> None:
        """The session holds the current life, and every life that begins while it is open."""
        self._open_sessions.add(token)
        self.current.sessions.add(token)

    def session_closed(self, token: int) -> None:
        """The session holds no life that begins from now on."""
        self._open_sessions.discard(token)

    def leave(self, token: int) -> bool:
        """The session lets go of the current life; returns whether it was the last one
        holding it while it ran (a session of an ended or older life changes nothing)."""
        life = self.current
        if token not in life.sessions or not self.alive:
            return False
        life.sessions.discard(token)
        return not life.sessions

    def restore(self, saved: SavedState, now: float) -> None:
        """Continue the saved life. Time spent in the old process is not known to this clock,
        so its durations restart at `now`, and a restored heartbeat deadline gives the worker
        a full timeout."""
        self.current = life = Life(
            number=saved.life,
            began_at=now,
            ever_ready=saved.ever_ready,
            pid=saved.pid,
            declared=saved.declared,
            status_text=saved.status_text,
            last_signal=now,
            last_heartbeat=now if saved.heartbeats else None,
        )
        if not saved.alive:
            life.ended_at, life.end_reason, life.end_cause = now, saved.end_reason, saved.end_cause
