"""Build the cluster's binaries from the official sources, once per machine (issue 13).

    python tests/cluster/binaries.py         # build what is missing, print where the binaries are

No registry ships kubelet or kube-apiserver binaries, so they are built with the Go module proxy:

- Kubernetes `KUBERNETES_VERSION` as a dependency of a wrapper module of ours. Its own `go.mod`
  requires every staging module (`k8s.io/api`, ...) at `v0.0.0` and replaces each with
  `./staging/...`, which Go ignores in a dependency; the wrapper replaces each with its published
  `v0.<minor>.<patch>`, a list generated from the downloaded `go.mod`, never typed. The wrapper
  keeps the upstream `go` and `godebug` lines so that the binaries behave as the release does.
  The version is stamped with `-ldflags -X` (else every binary says `v0.0.0-master`, and Helm's
  `kubeVersion` checks and kubectl's skew warnings go wrong).
- etcd `ETCD_VERSION` the same way from `go.etcd.io/etcd/server/v3` (its `main` is the module root).

The binaries, the module cache and the build cache live outside the clone, under
`DHS_CLUSTER_CACHE` (default `/var/cache/dynamo-health-sidecar/cluster`), keyed by version, so a
second run on the same machine finds them in milliseconds. A cold build takes tens of minutes on
two cores; a lock keeps two runs from building at once.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from container.runtime import last_line

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.13"
KUBERNETES_COMMANDS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubelet",
    "kubectl",
)
BUILD_TIMEOUT_S = 3600.0


class BuildError(RuntimeError):
    """A binary cannot be built; the message is one line naming the step and its log file."""


@dataclass(frozen=True)
class Release:
    """One module built into binaries: what to download, what to build, what to stamp."""

    name: str
    module: str
    version: str
    packages: tuple[str, ...]
    binaries: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"


KUBERNETES = Release(
    name="kubernetes",
    module="k8s.io/kubernetes",
    version=KUBERNETES_VERSION,
    packages=tuple(f"k8s.io/kubernetes/cmd/{command}" for command in KUBERNETES_COMMANDS),
    binaries=KUBERNETES_COMMANDS,
)
ETCD = Release(
    name="etcd",
    module="go.etcd.io/etcd/server/v3",
    version=ETCD_VERSION,
    packages=("go.etcd.io/etcd/server/v3",),
    binaries=("etcd",),
)
RELEASES = (ETCD, KUBERNETES)


def cache_root() -> Path:
    return Path(os.environ.get("DHS_CLUSTER_CACHE", "/var/cache/dynamo-health-sidecar/cluster"))


def bin_dir(release: Release) -> Path:
    return cache_root() / "bin" / release.key


def binary(name: str) -> Path:
    """The path of a built binary by its command name (`kubelet`, `etcd`, ...)."""
    for release in RELEASES:
        if name in release.binaries:
            return bin_dir(release) / name
    raise KeyError(name)


def is_built(release: Release) -> bool:
    built = bin_dir(release)
    return (built / "BUILT").is_file() and all(
        (built / name).is_file() for name in release.binaries
    )


def go_env() -> dict[str, str]:
    """The Go toolchain of this machine, with caches of our own that outlive the clone."""
    root = cache_root() / "go"
    return {
        **os.environ,
        "GOMODCACHE": str(root / "mod"),
        "GOCACHE": str(root / "build"),
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-buildvcs=false -mod=mod",
        "CGO_ENABLED": "0",
    }


def run_go(
    args: Sequence[str], cwd: Path, log: Path, timeout: float, check: bool = True
) -> tuple[int, str]:
    """Run `go ...`, its output appended to `log`; with `check`, a failure is one line naming
    the log. Returns the exit code and the output."""
    with log.open("a") as sink:
        sink.write(f"$ go {' '.join(args)}\n")
        sink.flush()
        try:
            done = subprocess.run(
                ["go", *args],
                cwd=cwd,
                env=go_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError:
            raise BuildError(
                "go is not installed (the cluster binaries are built with Go)"
            ) from None
        except subprocess.TimeoutExpired:
            raise BuildError(
                f"go {args[0]} did not finish within {timeout:g}s (log: {log})"
            ) from None
        sink.write(done.stdout)
    if check and done.returncode != 0:
        raise BuildError(f"go {args[0]} failed: {last_line(done.stdout)} (log: {log})")
    return done.returncode, done.stdout


def upstream_go_mod(release: Release, work: Path, log: Path) -> str:
    wanted = f"{release.module}@{release.version}"
    code, listed = run_go(["mod", "download", "-json", wanted], work, log, 600, check=False)
    # `go mod download -json` prints one JSON object, with "Error" (and exit 1) when it fails.
    try:
        info = json.loads(listed[listed.index("{") :])
    except ValueError:
        raise BuildError(
            f"{wanted} cannot be downloaded: {last_line(listed)} (log: {log})"
        ) from None
    if "Error" in info or code != 0:
        raise BuildError(f"{wanted} cannot be downloaded: {info.get('Error')} (log: {log})")
    return Path(info["GoMod"]).read_text()


def local_replacements(go_mod: str) -> list[str]:
    """The modules an upstream go.mod replaces with a directory of its own tree."""
    replaced = re.findall(r"^\s*(?:replace\s+)?(\S+)\s+=>\s+\./\S+\s*$", go_mod, re.M)
    return [module for module in replaced if "FORBIDDEN" not in module]


def staging_version(version: str) -> str:
    """k8s.io/kubernetes v1.X.Y publishes its staging modules as v0.X.Y."""
    return "v0." + version.removeprefix("v1.")


def wrapper_go_mod(release: Release, upstream: str) -> str:
    """Our wrapper module: upstream's go and godebug lines, the release, the staging replaces."""
    go_line = re.search(r"^go \S+$", upstream, re.M)
    godebug = re.search(r"^godebug .+$", upstream, re.M)
    lines = [f"module dynamo-health-sidecar.test/cluster/{release.name}", ""]
    lines += [match.group(0) for match in (go_line, godebug) if match]
    lines += ["", f"require {release.module} {release.version}"]
    if release is KUBERNETES:
        staged = local_replacements(upstream)
        if not staged:
            raise BuildError(f"{release.module}@{release.version}: its go.mod replaces nothing")
        published = staging_version(release.version)
        lines += ["", "replace ("]
        lines += [f"\t{module} => {module} {published}" for module in staged]
        lines += [")"]
    return "\n".join(lines) + "\n"


def version_ldflags(release: Release) -> str:
    if release is not KUBERNETES:
        return "-s -w"
    major, minor = release.version.removeprefix("v").split(".")[:2]
    stamp = {
        "gitVersion": release.version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{name}={value}" for name, value in stamp.items()]
    return " ".join(flags)


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_release(release: Release) -> float:
    """Build one release into its cache directory. Returns the seconds it took."""
    began = time.monotonic()
    work = cache_root() / "src" / release.key
    work.mkdir(parents=True, exist_ok=True)
    log = cache_root() / f"build-{release.key}.log"
    log.write_text("")
    (work / "go.mod").write_text(f"module dynamo-health-sidecar.test/cluster/{release.name}\n")
    upstream = upstream_go_mod(release, work, log)
    (work / "go.mod").write_text(wrapper_go_mod(release, upstream))
    (work / "go.sum").unlink(missing_ok=True)
    run_go(["mod", "download", release.module], work, log, 1200)
    staging = bin_dir(release).with_name(bin_dir(release).name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # One package is named by its output file (etcd's path ends in /v3); several share a folder.
    output = f"{staging}/" if len(release.packages) > 1 else str(staging / release.binaries[0])
    run_go(
        [
            "build",
            "-trimpath",
            "-ldflags",
            version_ldflags(release),
            "-o",
            output,
            *release.packages,
        ],
        work,
        log,
        BUILD_TIMEOUT_S,
    )
    missing = [name for name in release.binaries if not (staging / name).is_file()]
    if missing:
        raise BuildError(f"go build made no {', '.join(missing)} (log: {log})")
    seconds = time.monotonic() - began
    (staging / "BUILT").write_text(f"{release.module} {release.version} in {seconds:.0f}s\n")
    shutil.rmtree(bin_dir(release), ignore_errors=True)
    staging.rename(bin_dir(release))
    return seconds


def ensure_built() -> dict[str, float]:
    """Build every release that is not in the cache. Returns the seconds each build took."""
    timings: dict[str, float] = {}
    with build_lock():
        for release in RELEASES:
            if not is_built(release):
                timings[f"build_{release.name}_s"] = build_release(release)
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    del argv
    try:
        timings = ensure_built()
    except (BuildError, OSError) as exc:
        print(f"binaries.py: {exc}", file=sys.stderr)
        return 1
    for release in RELEASES:
        print(f"{release.key}: {bin_dir(release)}")
    for name, seconds in timings.items():
        print(f"{name} = {seconds:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
