"""How long each measurement runs: the full run, and the quick smoke run for CI."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """How long each measurement runs (and how large the large states are)."""

    name: str
    round_seconds: int  # one wrk run (wrk counts whole seconds)
    rate_rounds: int  # wrk -c16, connection per request, per server
    keepalive_rounds: int  # wrk -c16, keep-alive, per server
    latency_rounds: int  # wrk -c8 for the p99 figure, per server
    paced_seconds: float  # the paced kubelet-like probers
    big_state_seconds: float  # the same, on a large state (per read mode)
    registration_under_probes: bool  # probe while 10,000 instances register (state file on)
    signal_seconds: float  # probes while the socket takes 2,000 signals/s
    visible_iterations: int  # signal to visible state
    exec_probe_runs: int  # `test -f` as a new process
    exec_starts: int  # exec to first probe answered
    idle_seconds: float  # CPU idle
    rss_warmup: int  # probes before the first RSS reading
    rss_probes: int  # probes between the two RSS readings
    endpoints: int = 1000
    instances: int = 10_000
    signal_rate: float = 2000.0
    probers: int = 8
    prober_rate: float = 50.0  # probes a second per paced prober

    @property
    def reporting_settle_seconds(self) -> float:
        """How long after ready the reporting sidecar's RSS is read: long enough for the
        reporter to have sent its events and patched its condition, within the idle
        window it runs in."""
        return min(10.0, self.idle_seconds / 2)


FULL = Profile(
    name="full",
    round_seconds=1,
    rate_rounds=10,
    keepalive_rounds=3,
    latency_rounds=10,
    paced_seconds=10,
    big_state_seconds=5,
    registration_under_probes=True,
    signal_seconds=15,
    visible_iterations=2000,
    exec_probe_runs=2000,
    exec_starts=5,
    idle_seconds=60,
    rss_warmup=20_000,
    rss_probes=1_000_000,
)
QUICK = Profile(
    name="quick",
    round_seconds=1,
    rate_rounds=2,
    keepalive_rounds=1,
    latency_rounds=1,
    paced_seconds=1.5,
    big_state_seconds=1,
    registration_under_probes=False,
    signal_seconds=1.5,
    visible_iterations=200,
    exec_probe_runs=200,
    exec_starts=5,
    idle_seconds=10,
    rss_warmup=20_000,
    rss_probes=100_000,
)
