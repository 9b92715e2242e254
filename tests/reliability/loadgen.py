"""Load for the reliability suite, run as separate processes so the test's own GIL never
delays a probe: `python loadgen.py MODE 'JSON-ARGS'` prints one JSON object on stdout.

Modes:
- `probe`: the kubelet's pattern, a new TCP connection per request (`Connection: close`,
  `User-Agent: kube-probe/1.31`), paced at `rate` per second over `paths` in turn, each
  with a `timeout` (the kubelet's default is 1 s). Reports the codes per path, the errors,
  latency percentiles (connect to the end of the answer) and, with `timeline`, every probe.
- `signal`: a worker's signals over the Unix socket at `rate` per second, on `connections`
  keep-alive connections; each connection owns its endpoints, so the order of the signals
  of one endpoint is known. With `notify`, sd_notify `WATCHDOG=1` datagrams as well at
  `notify_rate`. Reports what the signals said: the last status of each endpoint, how often
  it changed, and every refusal or failure.

Every loop is bounded by `seconds`; SIGTERM ends it early (the report is still printed).
Only loopback and the sidecar's own sockets are used.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import sys
import time
from collections import Counter
from typing import Any

STOP = False


def _stop(signum: int, frame: object) -> None:
    global STOP
    STOP = True


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p90, p99, p99.9 and max of `values` (milliseconds), nearest-rank."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
        return round(ordered[index], 3)

    return {
        "n": len(ordered),
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "p99.9": rank(99.9),
        "max": round(ordered[-1], 3),
    }


# -- probes -------------------------------------------------------------------------------


class PartialAnswer(Exception):
    """The connection ended before the whole answer came (the sidecar died mid-answer)."""


def probe_once(port: int, path: str, timeout: float, host: str = "127.0.0.1") -> int:
    """One probe as the kubelet sends it; the status code, or an exception."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.31\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode()
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 "):
        raise PartialAnswer(f"not an HTTP answer: {data[:80]!r}")
    code = int(lines[0].split()[1])
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in lines
            if line.lower().startswith(b"content-length:")
        ),
        None,
    )
    if length is None or length != len(body):
        raise PartialAnswer(f"body of {len(body)} bytes, content-length {length}")
    return code


def run_probes(args: dict[str, Any]) -> dict[str, Any]:
    port, rate, seconds = int(args["port"]), float(args["rate"]), float(args["seconds"])
    paths = list(args.get("paths", ["/health"]))
    timeout = float(args.get("timeout", 1.0))
    keep_timeline = bool(args.get("timeline", False))
    codes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    first_errors: list[str] = []
    latencies: list[float] = []
    timeline: list[tuple[float, str, object]] = []
    start = time.monotonic()
    late_max = 0.0
    sent = 0
    end = start + seconds
    while not STOP:
        due = start + sent / rate
        if due >= end:
            break
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        else:
            late_max = max(late_max, now - due)
        path = paths[sent % len(paths)]
        sent += 1
        began = time.monotonic()
        try:
            code: object = probe_once(port, path, timeout)
        except Exception as exc:  # every failure is a finding, counted by its kind
            code = type(exc).__name__
            errors[f"{path} {code}"] += 1
            if len(first_errors) < 10:
                first_errors.append(f"{began - start:.3f}s {path}: {exc!r}")
        else:
            codes[f"{path} {code}"] += 1
            latencies.append((time.monotonic() - began) * 1000)
        if keep_timeline:
            timeline.append((round(began, 6), path, code))
    elapsed = time.monotonic() - start
    return {
        "sent": sent,
        "seconds": round(elapsed, 3),
        "rate": round(sent / elapsed, 1) if elapsed else 0.0,
        "codes": dict(codes),
        "errors": dict(errors),
        "first_errors": first_errors,
        "latency_ms": percentiles(latencies),
        "late_max_ms": round(late_max * 1000, 3),
        "timeline": timeline,
    }


# -- signals ------------------------------------------------------------------------------


HEARTBEAT_BODY = b'{"pid": 4242}'
HEARTBEAT = (
    b"POST /v1/heartbeat HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(HEARTBEAT_BODY), HEARTBEAT_BODY)
)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    code = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return code, await reader.readexactly(length)


async def signal_connection(
    sock_path: str,
    names: list[str],
    rate: float,
    end: float,
    seed: int,
    report: dict[str, Any],
    latencies: list[float],
) -> None:
    """Signals for `names` alone, one at a time, each awaited before the next."""
    rng = random.Random(seed)
    reader, writer = await asyncio.open_unix_connection(sock_path)
    start = time.monotonic()
    sent = 0
    try:
        while not STOP:
            due = start + sent / rate
            # Slow answers do not make the load run past its end to catch up.
            if due >= end or time.monotonic() >= end:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent += 1
            choice = rng.random()
            if choice < 0.1:
                request = HEARTBEAT
                name, status = "", ""
            else:
                name = rng.choice(names)
                status = "ready" if rng.random() < 0.5 else "notready"
                if choice < 0.55:
                    body = json.dumps({"status": status}).encode()
                    request = (
                        f"PUT /v1/endpoints/{name} HTTP/1.1\r\nHost: sidecar\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                    ).encode() + body
                else:
                    request = (
                        f"POST /v1/endpoints/{name}/{status} HTTP/1.1\r\nHost: sidecar\r\n"
                        "Content-Length: 0\r\n\r\n"
                    ).encode()
            began = time.monotonic()
            writer.write(request)
            code, body = await read_answer(reader)
            latencies.append((time.monotonic() - began) * 1000)
            if code != 200:
                report["refused"].append([code, body.decode(errors="replace")[:200]])
                continue
            answer = json.loads(body)
            report["acked"] += 1
            if name:
                if answer.get("endpoint") != name or answer.get("status") != status:
                    report["wrong"].append(answer)
                old = report["expected"].get(name, "notready")
                if old != status:
                    report["transitions"][name] = report["transitions"].get(name, 0) + 1
                report["expected"][name] = status
            else:
                report["heartbeats"] += 1
    finally:
        report["sent"] += sent
        writer.close()
        await writer.wait_closed()


async def notify_sender(path: str, rate: float, end: float, report: dict[str, Any]) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    start = time.monotonic()
    sent = 0
    try:
        while not STOP:
            due = start + sent / rate
            if due >= end:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            while True:  # a full receive queue is waited for, never dropped
                try:
                    sock.sendto(b"WATCHDOG=1", path)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.001)
            sent += 1
    finally:
        report["datagrams"] = sent
        sock.close()


async def signals(args: dict[str, Any]) -> dict[str, Any]:
    rate, seconds = float(args["rate"]), float(args["seconds"])
    connections = int(args.get("connections", 4))
    names = [f"ep{n}" for n in range(int(args.get("endpoints", 8)))] + ["generate"]
    report: dict[str, Any] = {
        "sent": 0,
        "acked": 0,
        "heartbeats": 0,
        "refused": [],
        "wrong": [],
        "expected": {},
        "transitions": {},
        "datagrams": 0,
    }
    latencies: list[float] = []
    start = time.monotonic()
    end = start + seconds
    tasks = [
        signal_connection(
            args["socket"],
            names[n::connections],
            rate / connections,
            end,
            int(args.get("seed", 1)) * 1000 + n,
            report,
            latencies,
        )
        for n in range(connections)
    ]
    if args.get("notify"):
        tasks.append(notify_sender(args["notify"], float(args["notify_rate"]), end, report))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.monotonic() - start
    report["errors"] = [repr(r) for r in results if isinstance(r, BaseException)]
    report["seconds"] = round(elapsed, 3)
    report["rate"] = round(report["sent"] / elapsed, 1) if elapsed else 0.0
    report["latency_ms"] = percentiles(latencies)
    return report


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    mode, args = sys.argv[1], json.loads(sys.argv[2])
    if mode == "probe":
        result = run_probes(args)
    elif mode == "signal":
        try:
            import uvloop

            result = uvloop.run(signals(args))
        except ImportError:
            result = asyncio.run(signals(args))
    else:
        raise SystemExit(f"unknown mode {mode}")
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
