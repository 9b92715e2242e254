"""The wrapper modules that build the cluster's binaries (binaries.py): pure, no root, no build."""

from __future__ import annotations

from cluster import binaries

UPSTREAM = """\
module k8s.io/kubernetes

go 1.24.0

godebug default=go1.24

require (
\tgithub.com/blang/semver/v4 v4.0.0
\tk8s.io/api v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
)

replace go.etcd.io/etcd => ./FORBIDDEN_DEPENDENCY
"""


def test_staging_modules_are_replaced_with_their_published_release() -> None:
    wrapper = binaries.wrapper_go_mod(binaries.KUBERNETES, UPSTREAM)
    assert "\tk8s.io/api => k8s.io/api v0.34.4\n" in wrapper
    assert "\tk8s.io/client-go => k8s.io/client-go v0.34.4\n" in wrapper
    assert "FORBIDDEN" not in wrapper and "./staging" not in wrapper


def test_wrapper_keeps_the_upstream_go_and_godebug_lines() -> None:
    wrapper = binaries.wrapper_go_mod(binaries.KUBERNETES, UPSTREAM)
    assert "\ngo 1.24.0\n" in wrapper and "\ngodebug default=go1.24\n" in wrapper
    assert "\nrequire k8s.io/kubernetes v1.34.4\n" in wrapper


def test_etcd_wrapper_replaces_nothing() -> None:
    wrapper = binaries.wrapper_go_mod(
        binaries.ETCD, "module go.etcd.io/etcd/server/v3\n\ngo 1.25.0\n"
    )
    assert "replace" not in wrapper and "\nrequire go.etcd.io/etcd/server/v3 v3.6.13\n" in wrapper


def test_version_is_stamped_on_both_version_packages() -> None:
    flags = binaries.version_ldflags(binaries.KUBERNETES)
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {package}.gitVersion=v1.34.4" in flags
        assert f"-X {package}.gitMajor=1" in flags and f"-X {package}.gitMinor=34" in flags
