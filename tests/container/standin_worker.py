"""The stand-in worker of the container tests, built on the project's client (`sidecar.client`).

It opens a held session (so the sidecar sees it die, even on SIGKILL), loads for
STANDIN_LOAD_SECONDS, announces `generate` ready and sends a heartbeat every
STANDIN_HEARTBEAT_SECONDS. It is told what to do by signals (`podman kill --signal ...`):

- SIGUSR1: hang. Heartbeats stop, the process and its session stay (a stuck model server);
  SIGTERM is then ignored, as a hung process would.
- SIGUSR2: crash, exit code 3 at once.
- SIGHUP: busy. The main thread spins the CPU for STANDIN_BUSY_SECONDS while heartbeats go on, as
  a model server saturated with requests; then it is idle again.
- SIGKILL: die (the kernel closes its session).
- SIGTERM: shut down gracefully: keep serving (and beating) for STANDIN_TERM_SECONDS, as a model
  server finishes its requests in flight, then exit 0.

Every step is one line on stdout, for `podman logs`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from sidecar.client import Retry, SidecarClient

LOAD_SECONDS = float(os.environ.get("STANDIN_LOAD_SECONDS", "4"))
HEARTBEAT_SECONDS = float(os.environ.get("STANDIN_HEARTBEAT_SECONDS", "0.5"))
TERM_SECONDS = float(os.environ.get("STANDIN_TERM_SECONDS", "7"))
BUSY_SECONDS = float(os.environ.get("STANDIN_BUSY_SECONDS", "20"))

hang = threading.Event()
terminate = threading.Event()
busy = threading.Event()


def say(line: str) -> None:
    print(f"standin worker: {line}", flush=True)


def on_term(*_: object) -> None:
    if hang.is_set():
        say("SIGTERM ignored: hung")
        return
    terminate.set()


def on_crash(*_: object) -> None:
    say("crashing (exit 3)")
    os._exit(3)


def spin(seconds: float) -> None:
    say(f"busy: spinning the CPU for {seconds:g} s, heartbeats go on")
    until = time.monotonic() + seconds
    count = 0
    while time.monotonic() < until:
        count += 1
    say(f"idle again after {count} spins")


def main() -> int:
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, lambda *_: hang.set())
    signal.signal(signal.SIGUSR2, on_crash)
    signal.signal(signal.SIGHUP, lambda *_: busy.set())
    client = SidecarClient(retry=Retry.patient())
    say(f"pid {os.getpid()} uid {os.getuid()} gid {os.getgid()} groups {sorted(os.getgroups())}")
    with client.open_session(reconnect=True) as session:
        say(f"session open: life {session.life}")
        say(f"loading the model (simulated, {LOAD_SECONDS:g} s)")
        if terminate.wait(LOAD_SECONDS):
            say("SIGTERM while loading: exiting")
            return 0
        client.ready("generate")
        say("ready: generate")
        with client.start_heartbeats(HEARTBEAT_SECONDS) as beats:
            while not (hang.is_set() or terminate.is_set()):
                if busy.is_set():
                    spin(BUSY_SECONDS)
                    busy.clear()
                time.sleep(0.05)
            if terminate.is_set():
                say(f"SIGTERM: finishing requests in flight for {TERM_SECONDS:g} s")
                time.sleep(TERM_SECONDS)
                say(f"exiting 0 ({beats.sent} heartbeats sent)")
                return 0
            beats.stop()
            say(f"hanging: heartbeats stopped after {beats.sent}, the session stays open")
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
