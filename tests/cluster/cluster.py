"""A real one-node Kubernetes for the tests, and for a person (issue 13).

    python tests/cluster/cluster.py up        # build if needed, start, import the images, wait
    python tests/cluster/cluster.py status    # what runs, what does not, where its log is
    python tests/cluster/cluster.py down      # stop it all, remove namespaces and mounts
    python tests/cluster/cluster.py env       # the `export` lines of a running cluster

Everything runs as root, in one network namespace the harness creates (`NETNS`), with no route out
of it: etcd, kube-apiserver (`--authorization-mode=Node,RBAC`), kube-controller-manager,
kube-scheduler, kube-proxy, containerd (Debian's, with runc) and the kubelet, whose pods hang off a
bridge inside that namespace. The only way in is a forwarder on the host's loopback that carries
the API server's port across, so kubectl, Helm and the tests reach it at `https://127.0.0.1:PORT`
and nothing leaves the machine.

Binaries come from `binaries.py` (official sources, cached outside the clone). The images are the
project's, built from the real `Dockerfile` by `tests/container/runtime.py`, the stand-in worker,
and a pause image compiled from Kubernetes' own `build/pause/linux/pause.c`.

What these machines need, and why (tests/cluster/README.md has the rest):
- cgroup v1 without systemd: `cgroupDriver: cgroupfs` in the kubelet and containerd.
- Swap may be on: `failSwapOn: false`; the disk may be small: eviction thresholds at 0% and image
  GC at 100%, as kind does.
- The kubelet rewrites host sysctls at start (`vm.overcommit_memory`, `kernel.panic`,
  `kernel.panic_on_oops`): `up` saves them, `down` puts them back.

Every step that fails raises `ClusterError` with one line naming the component and its log file.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import binaries  # noqa: E402
import forward  # noqa: E402
import pki  # noqa: E402
from container import runtime  # noqa: E402

REPO = HERE.parents[1]
NETNS = "dhs-cluster"
NETNS_PATH = Path("/run/netns") / NETNS
NODE_NAME = "dhs-node"
BRIDGE = "cni0"
CNI_NETWORK = "dhs-pods"
# The node's address is the pods' gateway on the bridge, inside the namespace only.
NODE_IP = "10.244.0.1"
POD_SUBNET = "10.244.0.0/24"
SERVICE_RANGE = "10.96.0.0/24"
KUBERNETES_SERVICE_IP = "10.96.0.1"
CLUSTER_DNS_IP = "10.96.0.10"
API_PORT = 6443
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.1"
# The chart's default image (`repository: dynamo-health-sidecar`) as containerd names it.
CHART_IMAGE = "docker.io/library/dynamo-health-sidecar:0.1.0"
# What the kubelet's setupKernelTunables writes (pkg/kubelet/cm/container_manager_linux.go).
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
READY_TIMEOUT_S = 180.0

T = TypeVar("T")


class ClusterError(RuntimeError):
    """The cluster cannot be brought up or down; one line naming the component and its log."""


def state_root() -> Path:
    return Path(os.environ.get("DHS_CLUSTER_STATE", "/var/lib/dynamo-health-sidecar/cluster"))


def host_api_port() -> int:
    return int(os.environ.get("DHS_CLUSTER_API_PORT", "16443"))


def log_dir() -> Path:
    return state_root() / "logs"


def log_path(name: str) -> Path:
    return log_dir() / f"{name}.log"


def pid_path(name: str) -> Path:
    return state_root() / "pids" / f"{name}.pid"


def kubeconfig_path() -> Path:
    """The administrator's kubeconfig, through the forwarder on the host's loopback."""
    return state_root() / "admin.kubeconfig"


def kubectl_dir() -> Path:
    return binaries.bin_dir(binaries.KUBERNETES)


def log_tail(name: str) -> str:
    with contextlib.suppress(OSError):
        return runtime.last_line(log_path(name).read_text(errors="replace")[-4000:])
    return "(no log)"


def run(args: Sequence[str], *, what: str, timeout: float = 120, **kwargs: Any) -> str:
    try:
        done = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClusterError(f"{what}: {exc}") from None
    if done.returncode != 0:
        raise ClusterError(f"{what} failed: {runtime.last_line(done.stderr or done.stdout)}")
    return done.stdout


def in_netns(call: Callable[[], T]) -> T:
    """Run `call` on a thread that has entered the cluster's network namespace, so the sockets
    it opens are inside it (setns moves only the calling thread)."""
    if not NETNS_PATH.exists():
        raise ClusterError(f"the network namespace {NETNS} does not exist (cluster.py up)")
    outcome: list[Any] = []

    def enter_and_call() -> None:
        try:
            forward.enter(str(NETNS_PATH))
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append((False, exc))

    thread = threading.Thread(target=enter_and_call, daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def netns_get(
    host: str, port: int, path: str, *, tls: ssl.SSLContext | None = None
) -> tuple[int, str]:
    """GET inside the namespace; (status, body), or (0, why) when nothing answers."""

    def get() -> tuple[int, str]:
        if tls is None:
            conn: http.client.HTTPConnection = http.client.HTTPConnection(host, port, timeout=3)
        else:
            conn = http.client.HTTPSConnection(host, port, timeout=3, context=tls)
        try:
            conn.request("GET", path)
            answer = conn.getresponse()
            return answer.status, answer.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            return 0, str(exc)
        finally:
            conn.close()

    return in_netns(get)


# --- identities, files -----------------------------------------------------------------------

ADMIN = pki.Identity("admin", "kubernetes-admin", ("system:masters",))
CONTROLLER_MANAGER = pki.Identity("controller-manager", "system:kube-controller-manager")
SCHEDULER = pki.Identity("scheduler", "system:kube-scheduler")
PROXY = pki.Identity("proxy", "system:kube-proxy")
KUBELET = pki.Identity("kubelet", f"system:node:{NODE_NAME}", ("system:nodes",))
APISERVER_KUBELET_CLIENT = pki.Identity(
    "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)
)
IDENTITIES = (ADMIN, CONTROLLER_MANAGER, SCHEDULER, PROXY, KUBELET, APISERVER_KUBELET_CLIENT)
SERVERS = {
    "apiserver": (
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "localhost",
        NODE_IP,
        KUBERNETES_SERVICE_IP,
        "127.0.0.1",
    ),
    "kubelet-serving": (NODE_NAME, NODE_IP),
}


def ca() -> pki.Pki:
    return pki.Pki(state_root() / "pki")


def admin_tls() -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca().path("ca.crt")))
    context.load_cert_chain(ca().path("admin.crt"), ca().path("admin.key"))
    return context


def loopback_tls() -> ssl.SSLContext:
    """For /healthz of the controller-manager and scheduler: self-signed, anonymous paths."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def write_configs() -> None:
    root = state_root()
    for sub in ("etc", "logs", "pids", "cni/net.d", "cni/ipam", "pod-logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ca().ensure(IDENTITIES, SERVERS)
    internal = f"https://{NODE_IP}:{API_PORT}"
    for identity in (CONTROLLER_MANAGER, SCHEDULER, PROXY, KUBELET):
        ca().kubeconfig(identity, internal, root / "etc" / f"{identity.file}.kubeconfig")
    ca().kubeconfig(ADMIN, f"https://127.0.0.1:{host_api_port()}", kubeconfig_path())
    files = {
        "etc/containerd.toml": CONTAINERD_CONFIG,
        "etc/kubelet.yaml": KUBELET_CONFIG,
        "etc/scheduler.yaml": SCHEDULER_CONFIG,
        "etc/proxy.yaml": PROXY_CONFIG,
        "etc/resolv.conf": "# no DNS in the test cluster\n",
        "cni/net.d/10-dhs.conflist": CNI_CONFIG,
    }
    for relative, template in files.items():
        # kube-proxy exits when its file is written, even unchanged: write only what differs.
        path, text = root / relative, template.format(root=root, **TEMPLATE_NAMES)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


TEMPLATE_NAMES = {
    "PAUSE_IMAGE": PAUSE_IMAGE,
    "BRIDGE": BRIDGE,
    "POD_SUBNET": POD_SUBNET,
    "NODE_IP": NODE_IP,
    "NODE_NAME": NODE_NAME,
    "CLUSTER_DNS_IP": CLUSTER_DNS_IP,
    "CNI_NETWORK": CNI_NETWORK,
}

CONTAINERD_CONFIG = """\
version = 2
root = "{root}/containerd/root"
state = "{root}/containerd/state"
[grpc]
  address = "{root}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  enable_selinux = false
  # Root here lacks CAP_SYS_RESOURCE: the kubelet's negative oom_score_adj would fail every
  # container; keep each at least containerd's own, as rootless setups do.
  restrict_oom_score_adj = true
  # The pods' network namespaces under our state directory, not /run/netns beside others'.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{root}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{root}/cni/net.d"
"""

CNI_CONFIG = """\
{{
  "cniVersion": "0.4.0",
  "name": "{CNI_NETWORK}",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{BRIDGE}",
      "isGateway": true,
      "isDefaultGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "dataDir": "{root}/cni/ipam",
        "ranges": [[{{"subnet": "{POD_SUBNET}", "gateway": "{NODE_IP}"}}]]
      }}
    }},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
  ]
}}
"""

KUBELET_CONFIG = """\
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: unix://{root}/containerd.sock
cgroupDriver: cgroupfs
failSwapOn: false
podLogsDir: {root}/pod-logs
resolvConf: {root}/etc/resolv.conf
# No DNS server runs: an address nothing answers on (inside the namespace) keeps the kubelet from
# warning MissingClusterDNS on every pod.
clusterDomain: cluster.local
clusterDNS: [{CLUSTER_DNS_IP}]
tlsCertFile: {root}/pki/kubelet-serving.crt
tlsPrivateKeyFile: {root}/pki/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {root}/pki/ca.crt
authorization:
  mode: Webhook
evictionHard:
  memory.available: "0%"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
"""

SCHEDULER_CONFIG = """\
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: {root}/etc/scheduler.kubeconfig
leaderElection:
  leaderElect: false
"""

PROXY_CONFIG = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {root}/etc/proxy.kubeconfig
hostnameOverride: {NODE_NAME}
mode: iptables
clusterCIDR: {POD_SUBNET}
bindAddress: {NODE_IP}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
"""


# --- components ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """One process of the cluster: how to start it, and how to know it is up."""

    name: str
    argv: Callable[[], list[str]]
    ready: Callable[[], bool]


def _etcd() -> list[str]:
    data = state_root() / "etcd"
    return [
        str(binaries.binary("etcd")),
        f"--data-dir={data}",
        "--listen-client-urls=http://127.0.0.1:2379",
        "--advertise-client-urls=http://127.0.0.1:2379",
        "--listen-peer-urls=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        "--initial-cluster=default=http://127.0.0.1:2380",
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def _apiserver() -> list[str]:
    p = ca().path
    return [
        str(binaries.binary("kube-apiserver")),
        "--etcd-servers=http://127.0.0.1:2379",
        f"--bind-address={NODE_IP}",
        f"--advertise-address={NODE_IP}",
        f"--secure-port={API_PORT}",
        f"--tls-cert-file={p('apiserver.crt')}",
        f"--tls-private-key-file={p('apiserver.key')}",
        f"--client-ca-file={p('ca.crt')}",
        f"--kubelet-client-certificate={p('apiserver-kubelet-client.crt')}",
        f"--kubelet-client-key={p('apiserver-kubelet-client.key')}",
        f"--service-account-key-file={p('sa.pub')}",
        f"--service-account-signing-key-file={p('sa.key')}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={SERVICE_RANGE}",
        # The node's name resolves nowhere (no DNS leaves the namespace): reach it by address.
        "--kubelet-preferred-address-types=InternalIP",
        "--authorization-mode=Node,RBAC",
        "--allow-privileged=true",
        "--profiling=false",
        "--v=1",
    ]


def _controller_manager() -> list[str]:
    p = ca().path
    kubeconfig = state_root() / "etc" / "controller-manager.kubeconfig"
    return [
        str(binaries.binary("kube-controller-manager")),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--service-account-private-key-file={p('sa.key')}",
        f"--root-ca-file={p('ca.crt')}",
        f"--cluster-signing-cert-file={p('ca.crt')}",
        f"--cluster-signing-key-file={p('ca.key')}",
        "--use-service-account-credentials=true",
        f"--service-cluster-ip-range={SERVICE_RANGE}",
        "--leader-elect=false",
        "--v=1",
    ]


def _scheduler() -> list[str]:
    kubeconfig = state_root() / "etc" / "scheduler.kubeconfig"
    return [
        str(binaries.binary("kube-scheduler")),
        f"--config={state_root() / 'etc' / 'scheduler.yaml'}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        "--v=1",
    ]


def _containerd() -> list[str]:
    return ["containerd", f"--config={state_root() / 'etc' / 'containerd.toml'}"]


def _kubelet() -> list[str]:
    etc = state_root() / "etc"
    return [
        str(binaries.binary("kubelet")),
        f"--config={etc / 'kubelet.yaml'}",
        f"--kubeconfig={etc / 'kubelet.kubeconfig'}",
        f"--root-dir={state_root() / 'kubelet'}",
        f"--cert-dir={state_root() / 'kubelet-pki'}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={NODE_IP}",
        "--v=2",
    ]


def _proxy() -> list[str]:
    return [str(binaries.binary("kube-proxy")), f"--config={state_root() / 'etc' / 'proxy.yaml'}"]


def _forwarder() -> list[str]:
    return [
        sys.executable,
        str(HERE / "forward.py"),
        f"127.0.0.1:{host_api_port()}",
        str(NETNS_PATH),
        f"{NODE_IP}:{API_PORT}",
    ]


def _healthy(host: str, port: int, path: str, tls: ssl.SSLContext | None = None) -> bool:
    status, body = netns_get(host, port, path, tls=tls)
    return status == 200 and ("true" in body or body.strip() == "ok")


def _apiserver_ready() -> bool:
    return netns_get(NODE_IP, API_PORT, "/readyz", tls=admin_tls())[0] == 200


def _forwarder_ready() -> bool:
    conn = http.client.HTTPSConnection("127.0.0.1", host_api_port(), timeout=3, context=admin_tls())
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _containerd_ready() -> bool:
    socket_path = state_root() / "containerd.sock"
    if not socket_path.exists():
        return False
    try:
        done = subprocess.run(
            ["ctr", "--address", str(socket_path), "version"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


COMPONENTS = (
    Component("etcd", _etcd, lambda: _healthy("127.0.0.1", 2379, "/health")),
    Component("kube-apiserver", _apiserver, _apiserver_ready),
    Component("forwarder", _forwarder, _forwarder_ready),
    Component(
        "kube-controller-manager",
        _controller_manager,
        lambda: _healthy("127.0.0.1", 10257, "/healthz", loopback_tls()),
    ),
    Component(
        "kube-scheduler",
        _scheduler,
        lambda: _healthy("127.0.0.1", 10259, "/healthz", loopback_tls()),
    ),
    Component("containerd", _containerd, _containerd_ready),
    Component("kubelet", _kubelet, lambda: _healthy("127.0.0.1", 10248, "/healthz")),
    Component("kube-proxy", _proxy, lambda: _healthy("127.0.0.1", 10256, "/healthz")),
)


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with
    the pid, it names one process, never a later one that reuses the number. None when the
    process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(") ", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def alive(pid: int) -> bool:
    return start_time(pid) is not None


def running_pid(name: str) -> int | None:
    """The pid a component was started as, while that very process still lives."""
    try:
        pid_text, started = pid_path(name).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    return pid if start_time(pid) == started else None


def start(component: Component) -> None:
    """Start a component inside the namespace (the forwarder enters it by itself)."""
    argv = component.argv()
    if component.name != "forwarder":
        argv = ["nsenter", f"--net={NETNS_PATH}", "--", *argv]
    # A fresh log per start: the last run's stays until the next `up`, and none grows forever.
    with log_path(component.name).open("wb") as log:
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PATH": f"{kubectl_dir()}:/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    pid_path(component.name).write_text(f"{process.pid} {start_time(process.pid)}")


def wait_until(what: str, check: Callable[[], bool], timeout: float, component: str) -> float:
    """Poll `check` until true; fail early, naming its log, when `component` has exited."""
    began = time.monotonic()
    while not check():
        if running_pid(component) is None:
            raise ClusterError(f"{what} exited; see {log_path(component)}: {log_tail(component)}")
        if time.monotonic() - began > timeout:
            raise ClusterError(f"{what} not ready after {timeout:g}s; see {log_path(component)}")
        time.sleep(0.25)
    return time.monotonic() - began


# --- the network namespace -------------------------------------------------------------------


def ensure_netns() -> None:
    if not NETNS_PATH.exists():
        run(["ip", "netns", "add", NETNS], what="ip netns add")
    inside = ["nsenter", f"--net={NETNS_PATH}", "--"]
    links = run([*inside, "ip", "-o", "link", "show"], what="ip link show")
    run([*inside, "ip", "link", "set", "lo", "up"], what="ip link set lo up")
    if f" {BRIDGE}:" not in links:
        run([*inside, "ip", "link", "add", BRIDGE, "type", "bridge"], what="ip link add bridge")
    addresses = run([*inside, "ip", "-o", "addr", "show", "dev", BRIDGE], what="ip addr show")
    if f" {NODE_IP}/" not in addresses:
        run(
            [*inside, "ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE],
            what="ip addr add",
        )
    run([*inside, "ip", "link", "set", BRIDGE, "up"], what="ip link set bridge up")


# --- sysctls the kubelet rewrites ------------------------------------------------------------


def sysctl_file() -> Path:
    return state_root() / "saved-sysctls.json"


def save_sysctls() -> None:
    if sysctl_file().exists():
        return
    saved = {name: Path("/proc/sys", name).read_text().strip() for name in KUBELET_SYSCTLS}
    sysctl_file().parent.mkdir(parents=True, exist_ok=True)
    sysctl_file().write_text(json.dumps(saved))


def restore_sysctls() -> None:
    if not sysctl_file().exists():
        return
    saved: dict[str, str] = json.loads(sysctl_file().read_text())
    for name, value in saved.items():
        with contextlib.suppress(OSError):
            Path("/proc/sys", name).write_text(value)
    sysctl_file().unlink()


# --- images ----------------------------------------------------------------------------------


def ctr(*args: str, timeout: float = 300, stdin: Any = None) -> str:
    return run(
        ["ctr", "--address", str(state_root() / "containerd.sock"), "-n", "k8s.io", *args],
        what=f"ctr {' '.join(args[:2])}",
        timeout=timeout,
        stdin=stdin,
    )


def build_pause_image() -> None:
    """Kubernetes' own pause.c, static, as the only file of an image (as build/pause does)."""
    if runtime.podman("image", "exists", PAUSE_IMAGE, check=False).returncode == 0:
        return
    source = (
        binaries.cache_root()
        / "go"
        / "mod"
        / f"k8s.io/kubernetes@{binaries.KUBERNETES_VERSION}"
        / "build"
        / "pause"
        / "linux"
        / "pause.c"
    )
    work = state_root() / "pause-build"
    work.mkdir(parents=True, exist_ok=True)
    version = PAUSE_IMAGE.rsplit(":", 1)[1]
    run(
        [
            "gcc",
            "-Os",
            "-Wall",
            "-Werror",
            "-static",
            f"-DVERSION=v{version}",
            "-o",
            str(work / "pause"),
            str(source),
        ],
        what="gcc pause.c",
    )
    (work / "Containerfile").write_text(
        'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n'
    )
    runtime.podman("build", "--network", "none", "--tag", PAUSE_IMAGE, str(work), timeout=300)


def import_image(source: str, *names: str) -> None:
    """`podman save` into containerd's k8s.io namespace, tagged with each of `names`."""
    saver = subprocess.Popen(
        ["podman", "save", "--format", "docker-archive", source],
        stdout=subprocess.PIPE,
        env=runtime.podman_env(),
    )
    try:
        ctr("images", "import", "-", stdin=saver.stdout)
    finally:
        assert saver.stdout is not None
        saver.stdout.close()
        saver.wait()
    if saver.returncode != 0:
        raise ClusterError(f"podman save {source} failed (exit {saver.returncode})")
    for name in names:
        ctr("images", "tag", "--force", source, name)


def imported_path() -> Path:
    return state_root() / "imported.json"


def import_images() -> dict[str, float]:
    """Build the project's image, the stand-in worker's and the pause image (podman's cache
    makes an unchanged build take seconds), and import into containerd each one whose image
    id differs from the one imported last, so a running cluster never runs a stale image."""
    timings: dict[str, float] = {}
    began = time.monotonic()
    try:
        timings.update(runtime.build())
        build_pause_image()
    except runtime.SetupError as exc:
        raise ClusterError(f"images: {str(exc).splitlines()[0]}") from None
    timings["images_build_s"] = time.monotonic() - began
    began = time.monotonic()
    try:
        imported: dict[str, str] = json.loads(imported_path().read_text())
    except (OSError, ValueError):
        imported = {}
    wanted = {
        PAUSE_IMAGE: (),
        runtime.PROJECT_IMAGE: (CHART_IMAGE,),
        runtime.STANDIN_IMAGE: (),
    }
    for source, names in wanted.items():
        image_id = runtime.podman("image", "inspect", "--format", "{{.Id}}", source).stdout.strip()
        if imported.get(source) != image_id:
            import_image(source, *names)
            imported[source] = image_id
            imported_path().write_text(json.dumps(imported, indent=2))
    timings["images_import_s"] = time.monotonic() - began
    return timings


# --- up, down, status ------------------------------------------------------------------------


def require_root() -> None:
    if os.geteuid() != 0:
        raise ClusterError("the cluster needs root (network namespace, cgroups, mounts)")


# Command (or file) -> the Debian package that brings it.
NEEDED = {
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "ip": "iproute2",
    "nsenter": "util-linux",
    "gcc": "gcc",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "/usr/lib/x86_64-linux-gnu/libc.a": "libc6-dev",
}


def missing_packages() -> list[str]:
    """The Debian packages of what the cluster needs that is not on the machine."""
    missing = []
    for need, package in NEEDED.items():
        found = (
            Path(need).exists()
            if need.startswith("/")
            else shutil.which(need, path="/usr/sbin:/usr/bin:/sbin:/bin")
        )
        if not found and package not in missing:
            missing.append(package)
    return missing


def ensure_packages() -> None:
    try:
        runtime.apt_install(missing_packages(), missing_packages)
    except runtime.SetupError as exc:
        raise ClusterError(str(exc)) from None


def require_cgroup_v1() -> None:
    """The kubelet and containerd here are set up for this machine's cgroup v1 hierarchy."""
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        raise ClusterError(
            "this host has a unified cgroup v2 hierarchy; the harness is set up for cgroup v1"
        )


def node_ready() -> bool:
    status, body = netns_get(NODE_IP, API_PORT, f"/api/v1/nodes/{NODE_NAME}", tls=admin_tls())
    if status != 200:
        return False
    conditions = json.loads(body).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def default_service_account() -> bool:
    path = "/api/v1/namespaces/default/serviceaccounts/default"
    return netns_get(NODE_IP, API_PORT, path, tls=admin_tls())[0] == 200


def is_up() -> bool:
    return all(running_pid(c.name) is not None for c in COMPONENTS) and node_ready()


def up() -> dict[str, float]:
    """Build if needed, start what is not running, wait for the node, import the images that
    changed since the last import."""
    require_root()
    require_cgroup_v1()
    timings: dict[str, float] = {}
    ensure_packages()
    timings.update(binaries.ensure_built())
    began = time.monotonic()
    if not all(running_pid(c.name) for c in COMPONENTS):
        # Not all up (a crash, a killed session): start from a clean slate, not its leftovers.
        down()
        save_sysctls()
        write_configs()
        ensure_netns()
        for component in COMPONENTS:
            start(component)
            wait_until(component.name, component.ready, READY_TIMEOUT_S, component.name)
        wait_until("the node", node_ready, READY_TIMEOUT_S, "kubelet")
        wait_until(
            "the default ServiceAccount", default_service_account, 60, "kube-controller-manager"
        )
        timings["up_to_node_ready_s"] = time.monotonic() - began
    timings.update(import_images())
    timings["up_s"] = time.monotonic() - began
    return timings


def stop_process(pid: int, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after `timeout`; returns once the process is gone."""
    started = start_time(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline, killed = time.monotonic() + timeout, False
    while started is not None and start_time(pid) == started:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if time.monotonic() > deadline:
            if killed:
                return  # unkillable (in D state, say): nothing more a signal can do
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed, deadline = True, time.monotonic() + timeout
        time.sleep(0.05)


def kubepods_cgroups() -> list[Path]:
    """Every cgroup the kubelet made (one tree per v1 hierarchy), deepest first."""
    found: list[Path] = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / "kubepods"
        if top.is_dir():
            found += [Path(d) for d, _, _ in os.walk(top)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def netns_inode() -> int | None:
    with contextlib.suppress(OSError):
        return os.stat(NETNS_PATH).st_ino
    return None


def processes_in_netns(inode: int) -> list[int]:
    """The processes whose network namespace is ours: what a component left (containerd shims)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(entry / "ns" / "net").st_ino == inode:
                    found.append(int(entry.name))
    return found


def our_mounts() -> list[str]:
    root = str(state_root())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(root + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def down() -> list[str]:
    """Stop every component (pods first), unmount, remove namespaces, restore sysctls.

    Each step is tried whatever the one before did; what failed is raised at the end, in one
    line."""
    require_root()
    stopped: list[str] = []
    failed: list[str] = []

    def step(what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except (OSError, subprocess.SubprocessError, ClusterError) as exc:
            failed.append(f"{what}: {exc}")

    # The kubelet first, so that nothing restarts the containers killed next.
    order = sorted(COMPONENTS, key=lambda c: c.name != "kubelet")
    for component in [order[0], *reversed(order[1:])]:
        pid = running_pid(component.name)
        if pid is not None:
            began = time.monotonic()
            step(f"stopping {component.name}", lambda pid=pid: stop_process(pid))
            stopped.append(f"{component.name} ({time.monotonic() - began:.1f}s)")
        step("removing a pid file", lambda c=component: pid_path(c.name).unlink(missing_ok=True))
        if component.name == "kubelet":
            step("killing the pods", kill_pods)
            step("restoring the sysctls", restore_sysctls)
    step("stopping the containerd shims", stop_shims)
    step("unmounting", unmount_ours)
    if NETNS_PATH.exists():
        step("deleting the namespace", lambda: run(["ip", "netns", "delete", NETNS], what="ip"))
    step("removing the cgroups", remove_kubepods_cgroups)
    step("removing what the kubelet left outside its root", remove_host_leftovers)
    step("wiping the state", wipe_state)
    if failed:
        raise ClusterError("down did not finish: " + "; ".join(failed))
    return stopped


def stop_shims() -> None:
    inode = netns_inode()
    if inode is not None:
        for pid in processes_in_netns(inode):
            stop_process(pid, timeout=5)


def unmount_ours() -> None:
    for point in our_mounts():
        subprocess.run(["umount", "-l", point], capture_output=True, check=False, timeout=30)


def remove_kubepods_cgroups() -> None:
    for cgroup in kubepods_cgroups():
        with contextlib.suppress(OSError):
            cgroup.rmdir()


def remove_host_leftovers() -> None:
    """What the kubelet and CNI write to fixed host paths whatever their configured roots:
    the /var/log/containers links into our pod logs, our network's cached CNI results, and
    the kubelet's device-plugin socket."""
    ours = str(state_root())
    for link in Path("/var/log/containers").glob("*.log"):
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(ours):
                link.unlink()
    # CNI caches a result per network and sandbox; pods killed by `down` never tear theirs down.
    cri = state_root() / "containerd" / "root" / "io.containerd.grpc.v1.cri" / "sandboxes"
    sandboxes = {entry.name for entry in cri.iterdir()} if cri.is_dir() else set()
    for cached in Path("/var/lib/cni/results").glob("*"):
        if cached.name.startswith(f"{CNI_NETWORK}-") or any(s in cached.name for s in sandboxes):
            cached.unlink(missing_ok=True)
    Path("/var/lib/kubelet/device-plugins/kubelet.sock").unlink(missing_ok=True)


def wipe_state() -> None:
    for sub in ("etcd", "kubelet", "kubelet-pki", "containerd", "runc", "cni/ipam", "pod-logs"):
        shutil.rmtree(state_root() / sub, ignore_errors=True)
    (state_root() / "containerd.sock").unlink(missing_ok=True)
    (state_root() / "imported.json").unlink(missing_ok=True)


def kill_pods() -> None:
    """Kill every container process (the kubelet is stopped first, so nothing restarts them)."""
    for cgroup in kubepods_cgroups():
        with contextlib.suppress(OSError):
            for line in (cgroup / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(line), signal.SIGKILL)


def status() -> list[tuple[str, str]]:
    rows = []
    for component in COMPONENTS:
        pid = running_pid(component.name)
        if pid is None:
            rows.append((component.name, f"not running (log: {log_path(component.name)})"))
        elif component.ready():
            rows.append((component.name, f"running, pid {pid}"))
        else:
            rows.append((component.name, f"pid {pid}, not ready (log: {log_path(component.name)})"))
    if all(running_pid(c.name) for c in COMPONENTS):
        rows.append(("node", "Ready" if node_ready() else "not Ready"))
    return rows


def env_lines() -> list[str]:
    return [
        f"export KUBECONFIG={kubeconfig_path()}",
        f"export PATH={kubectl_dir()}:$PATH",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else "status"
    try:
        if command == "up":
            for name, seconds in up().items():
                print(f"{name} = {seconds:.1f}", file=sys.stderr)
            print("\n".join(env_lines()))
        elif command == "down":
            print("stopped: " + (", ".join(down()) or "nothing"))
        elif command == "status":
            require_root()
            rows = status()
            for name, what in rows:
                print(f"{name:<24} {what}")
            return 0 if all(w.startswith(("running", "Ready")) for _, w in rows) else 1
        elif command == "env":
            print("\n".join(env_lines()))
        else:
            print(
                f"cluster.py: unknown command {command!r} (up, down, status, env)", file=sys.stderr
            )
            return 2
    except (ClusterError, binaries.BuildError, OSError, subprocess.SubprocessError) as exc:
        print(f"cluster.py {command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
