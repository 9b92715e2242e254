"""A worker for the fault tests: a real process that talks to the sidecar with the package's
own client (`sidecar.client`), as a Python worker would.

`python worker.py 'JSON-ARGS'`: opens a session (`reconnect` to follow sidecar restarts),
marks `generate` ready, then for `seconds` (or until SIGUSR1) sends signals at `rate` per
second, each one retried until the sidecar acknowledges it (a worker that insists). Then it
prints one JSON line (what the sidecar acknowledged last for each endpoint, and how often
the sidecar was unavailable) and keeps holding its session until it is killed or its stdin
closes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from typing import Any

from sidecar.client import Retry, SidecarClient, SidecarRejected, SidecarUnavailable


def insist(operation: Any, report: dict[str, Any], deadline: float) -> Any:
    while True:
        try:
            return operation()
        except SidecarUnavailable:
            # Nothing answered, the answer was cut short, or a 503: the client says which.
            report["unavailable"] += 1
        if time.monotonic() > deadline:
            raise TimeoutError("the sidecar did not come back")
        time.sleep(0.01)


STOP = [False]


def main() -> None:
    signal.signal(signal.SIGUSR1, lambda signum, frame: STOP.__setitem__(0, True))
    args = json.loads(sys.argv[1])
    client = SidecarClient(args["socket"], timeout=2.0, retry=Retry())
    report: dict[str, Any] = {"unavailable": 0, "rejected": [], "acked": {}, "signals": 0}
    session = client.open_session(pid=os.getpid(), reconnect=bool(args.get("reconnect", False)))
    give_up = time.monotonic() + float(args["seconds"]) + 30
    insist(lambda: client.ready("generate"), report, give_up)
    report["acked"]["generate"] = "ready"
    names = [f"ep{n}" for n in range(int(args.get("endpoints", 4)))]
    rng = random.Random(int(args.get("seed", 7)))
    rate = float(args.get("rate", 50))
    start = time.monotonic()
    end = start + float(args["seconds"])
    sent = 0
    while not STOP[0]:
        due = start + sent / rate
        if due >= end:
            break
        time.sleep(max(0.0, due - time.monotonic()))
        sent += 1
        if rng.random() < 0.2:
            insist(lambda: client.heartbeat(os.getpid()), report, give_up)
            continue
        name = rng.choice(names)
        status = rng.choice(["ready", "notready"])
        try:
            answer = insist(lambda n=name, s=status: client.set_endpoint(n, s), report, give_up)  # type: ignore[misc]
        except SidecarRejected as exc:
            report["rejected"].append(str(exc))
            continue
        report["signals"] += 1
        report["acked"][name] = answer["status"]
    report["reconnects"] = session.reconnects
    report["life"] = session.life
    print(json.dumps(report), flush=True)
    sys.stdin.read()  # hold the session until the test closes stdin or kills this process
    session.close()


if __name__ == "__main__":
    main()
