"""Load: the kubelet's probes and a worker's signals together, at a paced rate.

Probes come from one process, a new TCP connection each (as the kubelet sends them);
signals from another, over the worker's Unix socket, with sd_notify datagrams beside them.
Nothing may fail, and afterwards the state must be exactly what the signals said, with the
counts in `/metrics` matching what was sent.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import Sidecar, short_socket_path

from .conftest import Record, Scale
from .helpers import Load, control, cpu_seconds, loads, metric, metrics, probe, rss_mib

pytestmark = pytest.mark.reliability

PATHS = ["/health", "/live", "/ready"]
# A probe's answer within this many milliseconds at the 99th percentile.
PROBE_P99_MS = 10.0


def test_load_probes_and_signals_together_lose_nothing(
    run_sidecar: Callable[..., Sidecar], scale: Scale, figure: Record
) -> None:
    notify = short_socket_path().with_name("notify.sock")
    sc = run_sidecar(
        {
            "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": '["generate"]',
            "DYN_SIDECAR_DRAIN_SECONDS": "0",
            "DYN_SIDECAR_NOTIFY_SOCKET": str(notify),
        }
    )
    pid = sc.process.pid
    assert probe(sc.port, "/health").status_code == 503
    before = metrics(sc.port)
    cpu_before, rss_before = cpu_seconds(pid), rss_mib(pid)

    seconds = scale.load_seconds
    with loads(
        Load("probe", port=sc.port, rate=scale.probe_rate, seconds=seconds, paths=PATHS),
        Load(
            "signal",
            socket=str(sc.socket_path),
            rate=scale.signal_rate,
            seconds=seconds,
            connections=4,
            endpoints=8,
            notify=str(notify),
            notify_rate=scale.notify_rate,
        ),
    ) as (prober, signaller):
        probes = prober.result()
        signals = signaller.result()
    cpu = cpu_seconds(pid) - cpu_before
    rss_after = rss_mib(pid)
    after = metrics(sc.port)
    assert sc.process.poll() is None, sc.logs()

    # No error on either side, every signal acknowledged with what it asked for.
    assert probes["errors"] == {}, probes["first_errors"]
    assert signals["errors"] == [] and signals["refused"] == [] and signals["wrong"] == []
    assert signals["acked"] == signals["sent"]
    assert probes["sent"] >= 0.95 * scale.probe_rate * seconds
    assert signals["sent"] >= 0.95 * scale.signal_rate * seconds
    assert signals["datagrams"] >= 0.95 * scale.notify_rate * seconds
    assert set(probes["codes"]) <= {f"{path} {code}" for path in PATHS for code in (200, 503)}

    # The state is exactly what the signals said.
    expected = {"generate": "notready", **signals["expected"]}
    status = control(sc.socket_path, "GET", "/v1/status").json()
    assert status["endpoints"] == expected
    assert status["status"] == expected["generate"]
    health = probe(sc.port, "/health")
    assert health.status_code == (200 if expected["generate"] == "ready" else 503)
    assert health.json()["endpoints"] == expected

    # The counts in /metrics (scraped before the checks above) are what was sent.
    for name, status_text in expected.items():
        ready = metric(after, "dynamo_sidecar_endpoint_ready", endpoint=name)
        assert ready == (1.0 if status_text == "ready" else 0.0), name
        transitions = metric(after, "dynamo_sidecar_endpoint_transitions_total", endpoint=name)
        assert transitions == signals["transitions"].get(name, 0), name
    for key, count in probes["codes"].items():
        path, code = key.split()
        sample = "dynamo_sidecar_probe_requests_total"
        delta = metric(after, sample, path=path, code=code) - metric(
            before, sample, path=path, code=code
        )
        assert delta == count, key
    datagrams = metric(after, "dynamo_sidecar_notify_datagrams_total") - metric(
        before, "dynamo_sidecar_notify_datagrams_total"
    )
    assert datagrams == signals["datagrams"]
    assert metric(after, "dynamo_sidecar_notify_malformed_datagrams_total") == 0
    assert metric(after, "dynamo_sidecar_worker_lives_total") == 1

    latency = probes["latency_ms"]
    figure("probes sent (new TCP connection each)", f"{probes['sent']} at {probes['rate']}/s")
    figure("signals sent (4 keep-alive connections)", f"{signals['sent']} at {signals['rate']}/s")
    figure("sd_notify datagrams sent", signals["datagrams"])
    figure(
        "probe latency ms p50/p99/max",
        f"{latency['p50']}/{latency['p99']}/{latency['max']}",
        f"p99 < {PROBE_P99_MS}",
    )
    signal_latency = signals["latency_ms"]
    figure(
        "signal latency ms p50/p99/max",
        f"{signal_latency['p50']}/{signal_latency['p99']}/{signal_latency['max']}",
    )
    figure("sidecar CPU, % of one core", round(100 * cpu / probes["seconds"], 1))
    figure("sidecar RSS MiB before/after", f"{rss_before}/{rss_after}")
    assert latency["p99"] < PROBE_P99_MS, latency
