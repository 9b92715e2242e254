"""The harness's command line (cluster.py): each refusal is one line and an exit code, never a
traceback. Needs no root and starts nothing."""

from __future__ import annotations

import os

import pytest

from cluster import cluster


def test_up_without_root_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cluster.main(["up"]) == 1
    assert capsys.readouterr().err == (
        "cluster.py up: the cluster needs root (network namespace, cgroups, mounts)\n"
    )


def test_down_without_root_changes_nothing_and_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(cluster, "stop_process", lambda *_: pytest.fail("down stopped something"))
    assert cluster.main(["down"]) == 1
    assert capsys.readouterr().err == (
        "cluster.py down: the cluster needs root (network namespace, cgroups, mounts)\n"
    )


def test_unknown_command_is_refused_with_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cluster.main(["frobnicate"]) == 2
    assert capsys.readouterr().err == (
        "cluster.py: unknown command 'frobnicate' (up, down, status, env)\n"
    )


def test_env_prints_the_kubeconfig_and_the_built_kubectl(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cluster.main(["env"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"export KUBECONFIG={cluster.kubeconfig_path()}",
        f"export PATH={cluster.kubectl_dir()}:$PATH",
    ]
