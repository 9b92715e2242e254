"""The figures of issue 6: each measurement's numbers judged against its target, with
the text the table shows (value, the references beside it, how it was measured)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from profiles import Profile
from progress import log
from units import KIB, MIB, mb, ms, per_s


@dataclass
class Figure:
    """One row of the main table (and of `--json`'s "figures")."""

    key: str
    label: str
    value: float | None  # in `unit`; None: not measured
    unit: str
    shown: str
    target: str
    verdict: str  # PASS, MISS or n/a
    reference: str = ""
    method: str = ""


@dataclass
class Results:
    """A run's figures in table order, and the raw numbers behind them (for the context
    table and `--json`)."""

    raw: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)

    def add(self, figure: Figure) -> None:
        """Keep a figure, and show it at once: a long run should not be silent."""
        self.figures.append(figure)
        log(f"{figure.label}: {figure.shown} (target {figure.target}) {figure.verdict}")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def probe_rate(mine: dict[str, Any], refs: dict[str, Any], p: Profile) -> Figure:
    """Connection per request, as a ratio to Go (the median of the per-round ratios)."""
    rate, go_rate = mine["close"]["rate"], refs["go_close"]["rate"]
    nginx_rate = refs["nginx_close"]["rate"]
    ratio = statistics.median(mine["close"]["ratio_to_go_per_round"])
    errors = mine["close"]["errors_total"]
    return Figure(
        "rate_connection_per_request",
        "probe rate, connection per request",
        ratio,
        "x Go",
        f"{per_s(rate)} = **{ratio:.2f}x** Go" + (f" ({errors} errors)" if errors else ""),
        ">= 0.6x the Go reference",
        verdict(ratio >= 0.6 and errors == 0),
        f"Go {per_s(go_rate)}; nginx {per_s(nginx_rate)} "
        f"(sidecar = {rate / nginx_rate:.2f}x nginx)",
        f"wrk -t1 -c16, `Connection: close`, kubelet headers; {p.rate_rounds} rounds of "
        f"{p.round_seconds:g}s per server, interleaved; ratio = median of the per-round "
        "ratios; every server on its own core",
    )


def latency_8_probers(mine: dict[str, Any], refs: dict[str, Any], p: Profile) -> Figure:
    """p99 with 8 probers back to back (the median of the rounds' p99)."""
    sidecar_c8, go_c8 = mine["close_c8"], refs["go_close_c8"]
    c8_p99 = sidecar_c8["p99_us_median"]
    return Figure(
        "latency_p99_8_probers",
        "probe latency p99, 8 concurrent probers",
        c8_p99,
        "us",
        f"{ms(c8_p99)} (p50 {ms(sidecar_c8['p50_us_median'])}; worst round "
        f"{ms(sidecar_c8['p99_us_max'])})",
        "< 2 ms",
        verdict(c8_p99 < 2000 and sidecar_c8["errors_total"] == 0),
        f"Go {ms(go_c8['p99_us_median'])}",
        "wrk -t1 -c8, `Connection: close`: 8 probers back to back (the port saturated); "
        f"median of the p99 of {p.latency_rounds} rounds of {p.round_seconds:g}s "
        "interleaved with Go; wrk times from the request's write to the response's end",
    )


def latency_under_signals(mine: dict[str, Any], p: Profile) -> Figure:
    """The paced probers' p99 while the socket takes signals; it passes only if the
    driver sustained >= 95% of its rate without an error (else the load was lighter)."""
    probes, signals = mine["paced_signals"], mine["signals"]
    sustained = signals["achieved_rate"] >= 0.95 * p.signal_rate and signals["errors"] == 0
    p99 = probes["latency_us"]["p99"]
    return Figure(
        "latency_p99_under_signals",
        f"probe latency p99 while the socket takes {p.signal_rate:,.0f} signals/s",
        p99,
        "us",
        f"{ms(p99)} (signals {per_s(signals['achieved_rate'])}, "
        f"{signals['errors']} errors; sidecar CPU {mine['signals_cpu_share']:.0%})",
        "< 5 ms",
        verdict(p99 < 5000 and sustained and probes["errors"] == 0),
        f"no signals: {ms(mine['paced_quiet']['latency_us']['p99'])}",
        f"{p.probers} paced probers x {p.prober_rate:g}/s (kubeprobe: Go net/http, new "
        "connection, connect to 10 KiB read); signals: 4 threads, new Unix connection "
        "each, ready/notready alternating on a non-required endpoint",
    )


def signal_to_visible(visible: dict[str, Any]) -> Figure:
    """The p99 from the signal's send to the probe that shows it: an upper bound (one
    Python signal round trip plus one Python probe)."""
    v99 = visible["visible_us"]["p99"]
    return Figure(
        "signal_to_visible_p99",
        "signal to visible state, p99",
        v99,
        "us",
        f"{ms(v99)} (p50 {ms(visible['visible_us']['p50'])}; signal round trip p99 "
        f"{ms(visible['signal_round_trip_us']['p99'])})",
        "< 1 ms",
        verdict(v99 < 1000),
        "",
        "flip `generate` (required) over a new socket connection; probe on new TCP "
        "connections until the code changes; time from send to that probe's end",
    )


def health_large_state(raw: dict[str, Any], key: str, p: Profile) -> Figure:
    """`/health` p99 on the large state `key` ("endpoints" or "instances"): both read
    modes must pass."""
    count = p.endpoints if key == "endpoints" else p.instances
    mode = "worker" if key == "endpoints" else "frontend"
    full, kubelet = raw[f"{key}_full"], raw[f"{key}_kubelet"]
    p99 = full["latency_us"]["p99"]
    errors = full["errors"] + kubelet["errors"]
    return Figure(
        f"health_p99_{key}",
        f"`/health` p99, {mode} mode with {count:,} {key}",
        p99,
        "us",
        f"{ms(p99)} reading the whole {raw[f'{key}_body_bytes'] / KIB:,.0f} KiB; "
        f"{ms(kubelet['latency_us']['p99'])} reading 10 KiB as the kubelet"
        + (f" ({errors} errors)" if errors else ""),
        "< 10 ms",
        verdict(p99 < 10_000 and kubelet["latency_us"]["p99"] < 10_000 and not errors),
        "",
        f"registered over the socket, then {p.probers} paced probers (kubeprobe) x "
        f"{full['rate'] / p.probers:.0f}/s for {p.big_state_seconds:g}s per read "
        f"mode, new connection each; RSS then {mb(raw[f'{key}_rss_bytes'])}",
    )


def exec_to_first_probe(runs: list[dict[str, float]]) -> Figure:
    """The median of the starts: one slow start on a shared machine does not move it."""
    both = [r["both_seconds"] for r in runs]
    median = statistics.median(both)
    return Figure(
        "exec_to_first_probe",
        "exec to first probe answered",
        median,
        "s",
        f"{median:.3f} s median of {len(both)} (max {max(both):.3f} s)",
        "< 0.5 s",
        verdict(median < 0.5),
        "",
        "Popen to the first 200/503 on the probe port and a 200 on the socket, polled every 1 ms",
    )


def rss_growth(rss: dict[str, Any], p: Profile) -> Figure:
    """Growth between the readings after warm-up and after the rest; no probe may fail."""
    growth = rss["growth_bytes"]
    return Figure(
        "rss_growth",
        f"RSS growth over {rss['probes']:,} probes",
        growth,
        "bytes",
        f"{growth / MIB:+.2f} MB ({mb(rss['rss_before'])} -> {mb(rss['rss_after'])}, "
        f"max {mb(rss['rss_max'])})",
        "< 1 MB",
        verdict(growth < MIB and rss["errors"] == 0),
        "",
        f"wrk -c8 connection per request, on the sidecar of the figures above; RSS "
        f"once {rss['warmup']:,} probes (>= {p.rss_warmup:,}) had warmed it up, then "
        "after the rest",
    )


def rss_idle_reporting_off(idle: dict[str, dict[str, Any]], p: Profile) -> Figure:
    """The idle sidecar's RSS at the end of the idle window, beside Go's and nginx's."""
    rss = idle["sidecar"]["rss_bytes"]
    return Figure(
        "rss_idle_reporting_off",
        "RSS idle, reporting off",
        rss,
        "bytes",
        mb(rss),
        "< 35 MB",
        verdict(rss < 35 * MIB),
        f"Go {mb(idle['go']['rss_bytes'])}; nginx {mb(idle['nginx']['rss_bytes'])}",
        f"VmRSS after {p.idle_seconds:g}s idle, ready, `--kube off`",
    )


def rss_idle_reporting_on(raw: dict[str, Any], p: Profile) -> Figure:
    """n/a when there is no reading: "reporting not wired" for a sidecar that refused
    `--kube on` as unsupported, "did not start" for one that failed."""
    rss, label, target = raw["rss_bytes"], "RSS idle, reporting on", "< 55 MB"
    if rss is None:
        shown = "n/a (reporting not wired)" if not raw["wired"] else "n/a (did not start)"
        key = "rss_idle_reporting_on"
        return Figure(key, label, None, "bytes", shown, target, "n/a", "", raw["why"])
    calls = raw["api_calls"]
    shown_calls = ", ".join(f"{n} {k}" for k, n in calls.items()) or "no calls seen"
    return Figure(
        "rss_idle_reporting_on",
        label,
        rss,
        "bytes",
        mb(rss),
        target,
        verdict(rss < 55 * MIB),
        "",
        f"VmRSS {p.reporting_settle_seconds:g}s after ready with `--kube on`, "
        f"reporting to a minimal fake API server on 127.0.0.1 (it saw: {shown_calls})",
    )


def cpu_idle(idle: dict[str, dict[str, Any]]) -> Figure:
    """The idle sidecar's CPU share over the window (schedstat's ns), beside the references'."""
    mine = idle["sidecar"]
    share = mine["cpu_share"]
    return Figure(
        "cpu_idle",
        f"CPU idle over {mine['seconds']:.0f} s",
        share * 100,
        "% of a core",
        f"{share * 100:.3f}% of a core",
        "< 0.1% of a core",
        verdict(share < 0.001),
        f"Go {idle['go']['cpu_share'] * 100:.3f}%; nginx {idle['nginx']['cpu_share'] * 100:.3f}%",
        "process CPU in ns (/proc/PID/task/*/schedstat) over the idle window, the "
        "sidecar ready; measured while the RSS run loads another sidecar (CPU time "
        "is counted per process)",
    )
