"""Podman for the container tests, set up the way this kind of machine needs it (issue 8).

    python tests/container/runtime.py setup    # packages, containers.conf, the base image (cached)
    python tests/container/runtime.py build    # setup, then the project's and the stand-in's images
    python tests/container/runtime.py env      # `export CONTAINERS_CONF=...` for your own podman
    python tests/container/runtime.py clean    # remove every pod this test left behind

Every step is idempotent. What this machine needs, and why:

- `apt-get install podman runc catatonit debootstrap` (only what is missing). Podman runs as root.
- A `containers.conf` of our own in the cache directory, handed to every podman call through
  `CONTAINERS_CONF` (the machine's own files are never touched): runc (crun refuses these hybrid
  cgroups) with the cgroupfs manager (no systemd here), explicit ulimits (raising RLIMIT_NOFILE is
  not permitted), file-based events and `k8s-file` logs (no journald).
- No registry is reachable, so the base image is built from Debian's packages with `debootstrap`
  and imported under a fixed name, once per machine (skipped while `podman image exists`).
- The project's image is built from the real `Dockerfile` on that base (`--build-arg BASE=`); the
  CA bundle pip needs here (`pip config list`: `global.cert`) is a build secret, never a layer.
- The stand-in worker image is the project's image plus one script (`standin_worker.py`) that
  speaks to the sidecar with the project's own client (`sidecar.client`).

A step that cannot be done raises `SetupError` with one line saying what failed; the command line
prints it and exits 1.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

APT_PACKAGES = ("podman", "runc", "catatonit", "debootstrap")
SUITE = "bookworm"
DEBOOTSTRAP_INCLUDE = "python3,python3-venv,ca-certificates"
# The base image, built once per machine (its name says what is in it).
BASE_IMAGE = f"localhost/dhs-debian-base:{SUITE}-minbase-python3"
BASE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
)
# The project's image under the name the chart and manifests/ use by default, and the stand-in.
PROJECT_IMAGE = "localhost/dynamo-health-sidecar:0.1.0"
STANDIN_IMAGE = "localhost/dhs-standin-worker:test"
STANDIN_CONTAINERFILE = HERE / "standin.Containerfile"
# Everything the tests create is labelled, so `clean` finds what a crashed run left.
LABEL = "dynamo-health-sidecar.test/container=true"
# Durations and sizes measured by the tests (conftest prints them and writes results.json).
RESULTS: dict[str, float | str] = {}

CONTAINERS_CONF = """\
# Written by tests/container/runtime.py; podman reads it through CONTAINERS_CONF only.
[containers]
# Raising RLIMIT_NOFILE is not permitted on these machines: ask for what the host allows.
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
# No journald here: logs in files, so `podman logs` works.
log_driver = "k8s-file"

[engine]
# crun refuses the hybrid cgroup hierarchy of these machines; runc with cgroupfs works.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


class SetupError(RuntimeError):
    """The container runtime cannot be set up; the message is one line saying why."""


def cache_dir() -> Path:
    """Where the containers.conf, the lock and the results live (DHS_CONTAINER_CACHE wins)."""
    explicit = os.environ.get("DHS_CONTAINER_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dynamo-health-sidecar" / "container"


def conf_path() -> Path:
    return cache_dir() / "containers.conf"


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(conf_path())}


def podman(
    *args: str,
    check: bool = True,
    timeout: float | None = 120,
) -> subprocess.CompletedProcess[str]:
    """Run podman with our containers.conf; `check` raises SetupError with podman's last line."""
    try:
        done = subprocess.run(
            ["podman", *args],
            env=podman_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise SetupError(
            "podman is not installed (python tests/container/runtime.py setup)"
        ) from None
    except subprocess.TimeoutExpired:
        raise SetupError(
            f"podman {' '.join(args[:2])} did not finish within {timeout:g}s"
        ) from None
    if check and done.returncode != 0:
        raise SetupError(f"podman {' '.join(args[:2])} failed: {last_line(done.stderr)}")
    return done


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def is_root() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def setup_lock() -> Iterator[None]:
    """One setup at a time per machine (two test runs must not debootstrap twice)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "setup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- the runtime -----------------------------------------------------------------------------


def missing_packages() -> list[str]:
    found = {
        "podman": shutil.which("podman"),
        "runc": shutil.which("runc"),
        "catatonit": shutil.which("catatonit") or Path("/usr/libexec/podman/catatonit").exists(),
        "debootstrap": shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin"),
    }
    return [name for name in APT_PACKAGES if not found[name]]


def ensure_packages() -> None:
    apt_install(missing_packages(), missing_packages)


def apt_install(packages: Sequence[str], still_missing: Callable[[], list[str]]) -> None:
    """Install what a setup lacks with Debian's apt, then check with `still_missing` that it
    is there; each failure is a SetupError of one line."""
    if not packages:
        return
    if not shutil.which("apt-get"):
        raise SetupError(f"missing {', '.join(packages)} and there is no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", *packages],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SetupError(f"{' '.join(command[:2])} failed: {last_line(done.stderr)}")
    if still := still_missing():
        raise SetupError(f"apt-get installed, but {', '.join(still)} still missing")


def write_conf() -> Path:
    path = conf_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != CONTAINERS_CONF:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(CONTAINERS_CONF)
        tmp.replace(path)
    return path


def debootstrap_binary() -> str:
    found = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin")
    return found or "debootstrap"


def ensure_base_image() -> bool:
    """Build and import the base image unless it exists. True when it was built now."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return False
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache_dir()))
    try:
        rootfs = work / "rootfs"
        done = subprocess.run(
            [
                debootstrap_binary(),
                "--variant=minbase",
                f"--include={DEBOOTSTRAP_INCLUDE}",
                SUITE,
                str(rootfs),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
        )
        if done.returncode != 0:
            log = rootfs / "debootstrap" / "debootstrap.log"
            detail = last_line(log.read_text()) if log.exists() else last_line(done.stderr)
            raise SetupError(f"debootstrap {SUITE} failed: {detail}")
        # Leave out what a container gets from its runtime, and apt's downloaded archives.
        shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        changes = [arg for env in BASE_ENV for arg in ("--change", f"ENV {env}")]
        tar = subprocess.Popen(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
            stdout=subprocess.PIPE,
        )
        try:
            imported = subprocess.run(
                ["podman", "import", *changes, "-", BASE_IMAGE],
                stdin=tar.stdout,
                env=podman_env(),
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            detail = last_line(imported.stderr)
            raise SetupError(f"podman import of the base image failed: {detail}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return True


def check_runtime() -> None:
    """The smallest proof that containers run: `true` in the base image, no network."""
    done = podman("run", "--rm", "--network", "none", BASE_IMAGE, "true", check=False)
    if done.returncode != 0:
        raise SetupError(f"podman cannot run a container: {last_line(done.stderr)}")


@contextlib.contextmanager
def one_line_errors(what: str) -> Iterator[None]:
    """An OSError or a timeout of a step becomes a SetupError saying which step."""
    try:
        yield
    except (OSError, subprocess.SubprocessError) as exc:
        raise SetupError(f"{what}: {exc}") from exc


def setup() -> dict[str, float]:
    """Packages, containers.conf, base image, a trivial container run. Returns durations."""
    if not is_root():
        raise SetupError("the container tests need root (podman runs rootful on these machines)")
    timings: dict[str, float] = {}
    with one_line_errors("setting up the container runtime"), setup_lock():
        began = time.monotonic()
        ensure_packages()
        timings["packages_s"] = time.monotonic() - began
        write_conf()
        began = time.monotonic()
        if ensure_base_image():
            timings["base_image_build_s"] = time.monotonic() - began
        began = time.monotonic()
        check_runtime()
        timings["trivial_run_s"] = time.monotonic() - began
    return timings


# --- the images ------------------------------------------------------------------------------


def pip_cert() -> Path | None:
    """The CA bundle pip uses on this machine (`pip config list`: global.cert, or PIP_CERT)."""
    candidates = [os.environ.get("PIP_CERT", "")]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        listed = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
        candidates = [
            *re.findall(r"^global\.cert='([^']*)'", listed, re.M),
            *re.findall(r"^:env:\.cert='([^']*)'", listed, re.M),
            *candidates,
        ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_project_image(tag: str = PROJECT_IMAGE) -> float:
    """`podman build` of the real Dockerfile on the local base. Returns the seconds it took."""
    args = ["build", "--network", "host", "--build-arg", f"BASE={BASE_IMAGE}", "--tag", tag]
    cert = pip_cert()
    if cert is not None:
        args += ["--secret", f"id=pip-cert,src={cert}"]
    began = time.monotonic()
    done = podman(*args, "--file", str(REPO / "Dockerfile"), str(REPO), check=False, timeout=900)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-15:] + done.stderr.splitlines()[-15:])
        raise SetupError(f"podman build of the Dockerfile failed: {last_line(done.stderr)}\n{tail}")
    return time.monotonic() - began


def build_standin_image(tag: str = STANDIN_IMAGE, project: str = PROJECT_IMAGE) -> float:
    began = time.monotonic()
    podman(
        "build",
        "--network",
        "none",
        "--build-arg",
        f"PROJECT_IMAGE={project}",
        "--tag",
        tag,
        "--file",
        str(STANDIN_CONTAINERFILE),
        str(HERE),
        timeout=300,
    )
    return time.monotonic() - began


def build() -> dict[str, float]:
    timings = setup()
    with one_line_errors("building the images"), setup_lock():
        timings["project_image_build_s"] = build_project_image()
        timings["standin_image_build_s"] = build_standin_image()
    return timings


def image_size(name: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())


# --- cleaning up -----------------------------------------------------------------------------


def test_pods() -> list[str]:
    listed = podman("pod", "ps", "--format", "json", check=False).stdout or "[]"
    return [
        pod["Name"]
        for pod in json.loads(listed) or []
        if LABEL.split("=")[0] in (pod.get("Labels") or {})
    ]


def remove_pods(names: Sequence[str]) -> None:
    for name in names:
        podman("pod", "rm", "--force", "--time", "0", name, check=False)


def clean() -> list[str]:
    """Remove the pods a test run left (a crash, a kill -9) and the images that newer builds
    of the project's image left without a name."""
    names = test_pods()
    remove_pods(names)
    podman(
        "image",
        "prune",
        "--force",
        "--filter",
        "label=org.opencontainers.image.title=dynamo-health-sidecar",
        check=False,
    )
    return names


# --- the command line ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else "setup"
    try:
        if command == "setup":
            timings = setup()
        elif command == "build":
            timings = build()
        elif command == "env":
            write_conf()
            print(f"export CONTAINERS_CONF={conf_path()}")
            return 0
        elif command == "clean":
            write_conf()
            print("removed: " + (", ".join(clean()) or "nothing"))
            return 0
        else:
            print(f"usage: {sys.argv[0]} [setup|build|env|clean]", file=sys.stderr)
            return 2
    except SetupError as exc:
        print(f"container runtime setup failed: {str(exc).splitlines()[0]}", file=sys.stderr)
        for line in str(exc).splitlines()[1:]:
            print(f"  {line}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{key} {value:.1f}" for key, value in timings.items())
    print(f"container runtime ready (CONTAINERS_CONF={conf_path()}; base {BASE_IMAGE}): {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
