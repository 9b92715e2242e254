"""A kubelet prober for tests: what the kubelet decides from a container's rendered probes.

It follows the kubelet's rules (docs/protocol.md section 7; Kubernetes `pkg/probe/http/http.go` and
`pkg/kubelet/prober/worker.go`), with real HTTP and time passed in:

- one probe = a GET over a new TCP connection (keep-alive off), with `User-Agent: kube-probe/1.31`
  and `Accept: */*`; the body is read up to 10 KiB; a status from 200 to 399 succeeds, anything
  else, a refused connection or an answer slower than `timeoutSeconds` fails; redirects are
  followed to the same host only (one to another host counts as a success, as the kubelet's
  "Warning" does), at most 10;
- thresholds are "last result + run length": a result is published only once it has come
  `failureThreshold` (or `successThreshold`) times in a row, and the published result stays
  until then;
- initial results: readiness starts as failure (not ready), liveness as success, startup as
  unknown; liveness and readiness are not probed until the startup probe has succeeded once (a
  container without a startup probe is started at once); a probe waits `initialDelaySeconds`
  after the container started;
- a published startup or liveness failure restarts the container: probing pauses, and the
  restarted container begins again from the initial results.

`Probe.from_container` reads a probe from a rendered container (resolving a named port among
that container's own ports, as the kubelet does); `ContainerProber` owns the three probes of one
container and the clock. Tests call `ContainerProber.step(now)` with their own `now` (seconds);
`time_scale` divides every probe period, delay and timeout, so a test can run minutes of kubelet
time in seconds with the logic intact.
"""

from __future__ import annotations

import enum
import http.client
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

KUBE_VERSION = "1.31"
MAX_BODY_BYTES = 10 * 1024
MAX_REDIRECTS = 10

# Kubernetes' defaults for a probe's timing fields.
DEFAULTS = {
    "initialDelaySeconds": 0,
    "periodSeconds": 10,
    "timeoutSeconds": 1,
    "successThreshold": 1,
    "failureThreshold": 3,
}


class Result(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    UNKNOWN = "unknown"


class Kind(enum.Enum):
    STARTUP = "startupProbe"
    LIVENESS = "livenessProbe"
    READINESS = "readinessProbe"


INITIAL = {
    Kind.STARTUP: Result.UNKNOWN,
    Kind.LIVENESS: Result.SUCCESS,
    Kind.READINESS: Result.FAILURE,
}


class PortNotFound(LookupError):
    """A probe names a port that its own container does not declare (the kubelet's probe fails)."""


@dataclass(frozen=True)
class HttpGet:
    host: str
    port: int
    path: str
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Outcome:
    """One probe attempt: the result and a line saying why (the kubelet's event text)."""

    result: Result
    detail: str


def resolve_port(port: int | str, container: Mapping[str, Any]) -> int:
    """The kubelet's `ResolveContainerPort`: a name is looked up among the ports of the probe's
    own container, not the pod's; a number is taken as it is."""
    if isinstance(port, int):
        number = port
    else:
        named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
        if named:
            number = int(named[0])
        elif port.isdigit():
            number = int(port)
        else:
            raise PortNotFound(
                f"container {container.get('name')!r} declares no port named {port!r}"
            )
    if not 0 < number < 65536:
        raise PortNotFound(f"invalid port number: {number}")
    return number


def http_probe(action: HttpGet, timeout: float, kube_version: str = KUBE_VERSION) -> Outcome:
    """One HTTP probe, as `pkg/probe/http` does it: a new connection, its headers, the 200-399
    rule, the timeout over the whole exchange, same-host redirects only."""
    headers = {
        "User-Agent": f"kube-probe/{kube_version}",
        "Accept": "*/*",
        "Connection": "close",
        **dict(action.headers),
    }
    deadline = time.monotonic() + timeout
    host, port, path = action.host, action.port, action.path or "/"
    for _ in range(MAX_REDIRECTS + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Outcome(Result.FAILURE, "timeout")
        conn = http.client.HTTPConnection(host, port, timeout=remaining)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read(MAX_BODY_BYTES)
            status = response.status
            location = response.getheader("Location")
        except TimeoutError:
            return Outcome(Result.FAILURE, f"Get {path}: context deadline exceeded (timeout)")
        except (OSError, http.client.HTTPException) as error:
            return Outcome(Result.FAILURE, f"Get {path}: {error}")
        finally:
            conn.close()
        if time.monotonic() > deadline:
            return Outcome(Result.FAILURE, f"Get {path}: context deadline exceeded (timeout)")
        if 300 <= status < 400 and location:
            target = urllib.parse.urlsplit(
                urllib.parse.urljoin(f"http://{host}:{port}{path}", location)
            )
            if target.hostname != action.host:
                return Outcome(Result.SUCCESS, f"Probe terminated redirects ({status})")
            port = target.port or 80
            path = target.path + (f"?{target.query}" if target.query else "")
            continue
        if 200 <= status < 400:
            return Outcome(Result.SUCCESS, body.decode(errors="replace"))
        return Outcome(Result.FAILURE, f"HTTP probe failed with statuscode: {status}")
    return Outcome(Result.FAILURE, f"Get {action.path}: stopped after {MAX_REDIRECTS} redirects")


@dataclass(frozen=True)
class Probe:
    kind: Kind
    action: HttpGet
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int

    @classmethod
    def from_container(
        cls,
        container: Mapping[str, Any],
        kind: Kind,
        *,
        host: str = "127.0.0.1",
        time_scale: float = 1.0,
    ) -> Probe | None:
        """The container's probe of this kind (None when it has none). `host` stands for the
        pod IP; seconds are divided by `time_scale`."""
        spec = container.get(kind.value)
        if spec is None:
            return None
        if "httpGet" not in spec:
            raise ValueError(f"{kind.value} of {container.get('name')!r} is not an httpGet probe")
        get = spec["httpGet"]
        timing = {**DEFAULTS, **{k: v for k, v in spec.items() if k in DEFAULTS}}
        return cls(
            kind=kind,
            action=HttpGet(
                host=get.get("host", host),
                port=resolve_port(get["port"], container),
                path=get.get("path", "/"),
                scheme=get.get("scheme", "HTTP"),
                headers=tuple((h["name"], h["value"]) for h in get.get("httpHeaders", [])),
            ),
            initial_delay=timing["initialDelaySeconds"] / time_scale,
            period=timing["periodSeconds"] / time_scale,
            timeout=timing["timeoutSeconds"] / time_scale,
            success_threshold=int(timing["successThreshold"]),
            failure_threshold=int(timing["failureThreshold"]),
        )


Prober = Callable[[HttpGet, float], Outcome]


@dataclass
class ProbeWorker:
    """One probe of one container: the kubelet's `worker` without its goroutine. `do_probe` is
    one step; the published `result` changes only when a threshold is reached."""

    probe: Probe
    prober: Prober = http_probe
    result: Result = field(init=False)
    last_result: Result = field(init=False, default=Result.UNKNOWN)
    result_run: int = field(init=False, default=0)
    on_hold: bool = field(init=False, default=False)
    attempts: list[Outcome] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.result = INITIAL[self.probe.kind]

    def new_container(self) -> None:
        """The container was (re)started: initial result, probing resumes."""
        self.result = INITIAL[self.probe.kind]
        self.on_hold = False

    def do_probe(self, running_for: float, started: bool) -> bool:
        """One step at `running_for` seconds after the container started. Returns True when
        the published result changed."""
        if self.on_hold or running_for < self.probe.initial_delay:
            return False
        if started == (self.probe.kind is Kind.STARTUP):
            # Startup probes stop once started; the others wait for it.
            return False
        outcome = self.prober(self.probe.action, self.probe.timeout)
        self.attempts.append(outcome)
        if outcome.result == self.last_result:
            self.result_run += 1
        else:
            self.last_result, self.result_run = outcome.result, 1
        threshold = (
            self.probe.failure_threshold
            if outcome.result is Result.FAILURE
            else self.probe.success_threshold
        )
        if self.result_run < threshold:
            return False
        changed = self.result is not outcome.result
        self.result = outcome.result
        if self.probe.kind is not Kind.READINESS and outcome.result is Result.FAILURE:
            self.on_hold, self.result_run = True, 0
        return changed


@dataclass(frozen=True)
class Event:
    at: float
    what: str  # "started", "ready", "not ready", "restart"
    detail: str = ""


class ContainerProber:
    """The kubelet's view of one container: started, ready and restarts, from its probes.

    `step(now)` runs every probe that is due at `now` (seconds, any monotonic origin) and
    returns what changed. A restart calls `on_restart` (e.g. to restart a simulated worker) and
    starts the container again at `now`.
    """

    def __init__(
        self,
        container: Mapping[str, Any],
        *,
        now: float,
        host: str = "127.0.0.1",
        time_scale: float = 1.0,
        prober: Prober = http_probe,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self.name = str(container.get("name"))
        self.workers = {
            kind: ProbeWorker(probe, prober)
            for kind in Kind
            if (probe := Probe.from_container(container, kind, host=host, time_scale=time_scale))
        }
        self.on_restart = on_restart
        self.restarts = 0
        self.events: list[Event] = []
        self._start(now)

    def _start(self, now: float) -> None:
        self.started_at = now
        self.started = Kind.STARTUP not in self.workers
        self.next_due = {kind: now for kind in self.workers}
        for worker in self.workers.values():
            worker.new_container()

    @property
    def ready(self) -> bool:
        readiness = self.workers.get(Kind.READINESS)
        if readiness is None:
            return self.started
        return self.started and readiness.result is Result.SUCCESS

    def step(self, now: float) -> list[Event]:
        new: list[Event] = []
        was_ready = self.ready
        for kind in (Kind.STARTUP, Kind.LIVENESS, Kind.READINESS):
            worker = self.workers.get(kind)
            if worker is None or now < self.next_due[kind]:
                continue
            self.next_due[kind] = now + worker.probe.period
            worker.do_probe(now - self.started_at, self.started)
            if kind is Kind.STARTUP and not self.started and worker.result is Result.SUCCESS:
                self.started = True
                new.append(Event(now, "started"))
                # The kubelet starts the other probes once the container has started.
                for other in self.workers:
                    if other is not Kind.STARTUP:
                        self.next_due[other] = min(self.next_due[other], now)
            if kind is not Kind.READINESS and worker.on_hold:
                new.append(Event(now, "restart", worker.attempts[-1].detail))
                self.restarts += 1
                if self.on_restart is not None:
                    self.on_restart()
                self._start(now)
                break
        if self.ready != was_ready:
            new.append(Event(now, "ready" if self.ready else "not ready"))
        self.events.extend(new)
        return new

    def run(
        self,
        until: Callable[[ContainerProber], bool],
        *,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        tick: float = 0.01,
    ) -> bool:
        """Step on the real clock until `until(self)` holds (True) or `timeout` passes (False)."""
        end = clock() + timeout
        while clock() < end:
            self.step(clock())
            if until(self):
                return True
            time.sleep(tick)
        return False
