"""The report: the Markdown the run prints (the figures' table, the references' table
with its ratios, what else was measured, how, and on what) and the `--json` document."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from figures import Results
from profiles import Profile
from units import mb, ms, per_s

CONTEXT_COLUMNS = ("sidecar", "Go net/http", "nginx", "exec probe")


def _versus(rate: float, go: float) -> str:
    return f"{per_s(rate)} ({rate / go:.2f}x Go)"


def _cpu(result: dict[str, Any]) -> str:
    return f"{result['server_cpu_us_per_request']:.0f} us"


def _rates(raw: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The rate rows: each server's merged rate, and its ratio to Go's. (The figure's
    ratio is the median of the per-round ratios instead, so the two can differ.)"""
    refs, mine = raw["references"], raw["sidecar"]
    go_close, go_ka = refs["go_close"]["rate"], refs["go_keepalive"]["rate"]
    return {
        "rate, connection per request (wrk -c16)": {
            "sidecar": _versus(mine["close"]["rate"], go_close),
            "Go net/http": per_s(go_close),
            "nginx": _versus(refs["nginx_close"]["rate"], go_close),
        },
        "rate, keep-alive (wrk -c16)": {
            "sidecar": _versus(mine["keepalive"]["rate"], go_ka),
            "Go net/http": per_s(go_ka),
            "nginx": _versus(refs["nginx_keepalive"]["rate"], go_ka),
        },
    }


def _per_probe(raw: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The per-probe rows: latency, CPU (the exec probe's as a multiple of the
    sidecar's) and wall time."""
    refs, mine = raw["references"], raw["sidecar"]
    direct, shell = raw["exec_probe"]["direct"], raw["exec_probe"]["shell"]
    sidecar_cpu = mine["close"]["server_cpu_us_per_request"]
    return {
        "p99, 8 probers back to back (wrk -c8)": {
            "sidecar": ms(mine["close_c8"]["p99_us_median"]),
            "Go net/http": ms(refs["go_close_c8"]["p99_us_median"]),
            "exec probe": f"wall p99 {ms(direct['wall_us']['p99'])}, one at a time",
        },
        "CPU per probe, connection per request": {
            "sidecar": f"{sidecar_cpu:.0f} us",
            "Go net/http": _cpu(refs["go_close"]),
            "nginx": _cpu(refs["nginx_close"]),
            "exec probe": f"{direct['cpu_us_per_probe']:.0f} us = "
            f"**{direct['cpu_us_per_probe'] / sidecar_cpu:.1f}x** the sidecar "
            f"(`sh -c 'test -f'`: {shell['cpu_us_per_probe']:.0f} us)",
        },
        "CPU per probe, keep-alive": {
            "sidecar": _cpu(mine["keepalive"]),
            "Go net/http": _cpu(refs["go_keepalive"]),
            "nginx": _cpu(refs["nginx_keepalive"]),
        },
        "wall time per probe, one at a time": {
            "sidecar": f"p50 {ms(mine['paced_quiet']['latency_us']['p50'])} "
            "(paced probers, connect to body)",
            "exec probe": f"mean {ms(direct['wall_us_mean'])} "
            f"(`sh -c`: {ms(shell['wall_us_mean'])})",
        },
    }


def _idle(raw: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The idle rows: what each server costs between probes."""
    idle = raw["idle"]
    return {
        "RSS idle": {
            "sidecar": mb(idle["sidecar"]["rss_bytes"]),
            "Go net/http": mb(idle["go"]["rss_bytes"]),
            "nginx": mb(idle["nginx"]["rss_bytes"]) + " (master + worker)",
            "exec probe": "none between probes",
        },
        "CPU idle": {
            "sidecar": f"{idle['sidecar']['cpu_share'] * 100:.3f}%",
            "Go net/http": f"{idle['go']['cpu_share'] * 100:.3f}%",
            "nginx": f"{idle['nginx']['cpu_share'] * 100:.3f}%",
            "exec probe": "none between probes",
        },
    }


def context(raw: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The table beside the references: row label -> column -> cell."""
    return _rates(raw) | _per_probe(raw) | _idle(raw)


def extras(raw: dict[str, Any], p: Profile) -> list[tuple[str, str]]:
    """The "Also measured" list: the signals themselves, and (full run) registration
    with the state file on."""
    mine = raw["sidecar"]
    signals = mine["signals"]
    found = [
        (
            f"the signals themselves at {signals['target_rate']:,.0f}/s",
            f"round trip p50 {ms(signals['latency_us']['p50'])}, p99 "
            f"{ms(signals['latency_us']['p99'])} (new Unix connection each, state file on); "
            f"the sidecar used {mine['signals_cpu_share']:.0%} of its core for signals and "
            "probes together",
        )
    ]
    if "registration_under_probes" in raw:
        took = raw["registration_under_probes"]["register_seconds"]
        probes = raw["registration_under_probes"]["probes"]["latency_us"]
        off = raw["big_state"]["instances_register_seconds"]
        found.append(
            (
                f"registering {p.instances:,} instances, state file on (the default)",
                f"{took:.1f} s ({p.instances / took:,.0f}/s; with the state file off "
                f"{off:.1f} s); probe p99 on `/live` meanwhile **{ms(probes['p99'])}** "
                f"(p50 {ms(probes['p50'])}, max {ms(probes['p100'])}) over the first 3 s",
            )
        )
    return found


def _tables(results: Results, p: Profile) -> list[str]:
    """The figures' table, the table beside the references, "Also measured" and how
    each figure was measured."""
    lines = [
        "| figure | sidecar | reference (same run) | target | result |",
        "|---|---|---|---|---|",
    ]
    for f in results.figures:
        lines.append(f"| {f.label} | {f.shown} | {f.reference} | {f.target} | {f.verdict} |")
    lines += [
        "",
        "| beside the references | sidecar | Go net/http | nginx | exec probe (`test -f`) |",
        "|---|---|---|---|---|",
    ]
    for label, row in context(results.raw).items():
        cells = [row.get(k, "") for k in CONTEXT_COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Also measured:", ""]
    lines += [f"- {label}: {text}" for label, text in extras(results.raw, p)]
    lines += ["", "How each figure was measured:", ""]
    lines += [f"- {f.label}: {f.method}" for f in results.figures if f.method]
    return lines


def _footer(info: dict[str, Any]) -> list[str]:
    """Machine, software and run time: what the numbers depend on."""
    m, v = info["machine"], info["versions"]
    phases = ", ".join(f"{k} {share:.0%}" for k, share in info["background_by_phase"].items())
    return [
        f"Machine: {m['cpus']} x {m['cpu']}, {m['memory']}, {m['os']}, kernel {m['kernel']}; "
        f"servers pinned to CPU {info['server_cpus']}, load to CPU {info['load_cpus']}; "
        f"load average at start {m['loadavg_start'][0]:.2f}; other processes used "
        f"{info['background_share']:.0%} of the machine's CPU during the run ({phases}).",
        f"Software: Python {v.get('python', '?')}, uvicorn {v.get('uvicorn', '?')}, "
        f"starlette {v.get('starlette', '?')}, httptools {v.get('httptools', '?')}, uvloop "
        f"{v.get('uvloop', '?')}; {v.get('go', 'go ?')}; {v.get('nginx', 'nginx ?')}; "
        f"{v.get('wrk', 'wrk ?')}.",
        f"Sidecar from the tree at {m['revision'] or '?'}. Run time {info['seconds']:.0f} s.",
    ]


def render(results: Results, p: Profile, info: dict[str, Any]) -> str:
    """The Markdown report, as bench/README.md shows it."""
    lines = [f"## dynamo-health-sidecar benchmark ({p.name} run, {info['date']})", ""]
    lines += _tables(results, p)
    lines += ["", *_footer(info)]
    return "\n".join(lines) + "\n"


def document(results: Results, p: Profile, info: dict[str, Any], table: str) -> dict[str, Any]:
    """Everything for `--json`: the info, the figures, both tables' contents, every raw
    result (each wrk run, every percentile) and the printed table."""
    return {
        "info": info,
        "figures": [asdict(f) for f in results.figures],
        "context": context(results.raw),
        "extra": dict(extras(results.raw, p)),
        "raw": results.raw,
        "table": table,
    }
