"""The Dockerfile, parsed with the official parser (the `dockerfile` package): what it copies
exists, what it runs is the installed console script, and it matches the chart."""

from __future__ import annotations

import fnmatch
import re
import tomllib

import dockerfile
import yaml
from chart_render import CHART_DIR, REPO
from packaging.specifiers import SpecifierSet

COMMANDS = dockerfile.parse_file(str(REPO / "Dockerfile"))
CHART_VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())


def stages():
    """Instructions grouped by stage (the ARGs before the first FROM are stage 0)."""
    found = [[]]
    for command in COMMANDS:
        if command.cmd == "FROM":
            found.append([])
        found[-1].append(command)
    return found


def only(cmd, stage):
    return [c for c in stage if c.cmd == cmd]


def pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def copy_sources():
    """Sources of every COPY from the build context (not from another stage)."""
    return [
        source
        for c in COMMANDS
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)
        for source in c.value[:-1]
    ]


def test_dockerfile_base_is_a_pinned_slim_python_given_by_an_arg():
    (arg,) = only("ARG", stages()[0])
    name, base = arg.value[0].split("=", 1)
    assert name == "BASE"
    assert re.fullmatch(r"python:3\.\d+(\.\d+)?-slim-\w+(@sha256:[0-9a-f]{64})?", base)
    assert [c.value[0] for c in COMMANDS if c.cmd == "FROM"] == ["${BASE}", "${BASE}"]


def test_dockerfile_base_python_satisfies_requires_python():
    (arg,) = only("ARG", stages()[0])
    version = re.match(r"BASE=python:(\d+\.\d+)", arg.value[0]).group(1)
    assert version in SpecifierSet(pyproject()["project"]["requires-python"])


def test_dockerfile_copy_sources_exist():
    missing = [source for source in copy_sources() if not (REPO / source).exists()]
    assert missing == []


def test_dockerfile_copies_what_pip_install_needs():
    sources = {source.rstrip("/") for source in copy_sources()}
    project = pyproject()["project"]
    needed = {"pyproject.toml", project["readme"], "sidecar"}
    assert needed <= sources


def test_dockerignore_lets_every_copy_source_through():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path):
        verdict = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatchcase(path, pattern):
                verdict = not negate
        return verdict

    assert [s for s in copy_sources() if ignored(s.rstrip("/"))] == []


def test_dockerfile_entrypoint_is_the_console_script_of_pyproject():
    final = stages()[-1]
    (entrypoint,) = only("ENTRYPOINT", final)
    assert entrypoint.json
    assert list(entrypoint.value) == ["dynamo-health-sidecar"]
    assert "dynamo-health-sidecar" in pyproject()["project"]["scripts"]


def test_dockerfile_command_is_serve():
    (cmd,) = only("CMD", stages()[-1])
    assert cmd.json and list(cmd.value) == ["serve"]


def test_dockerfile_installs_into_a_venv_without_pip_cache():
    build = stages()[1]
    runs = " ".join(c.value[0] for c in only("RUN", build))
    # python3: the python images have it, and so does a plain Debian base (tests/container).
    assert "python3 -m venv /opt/venv" in runs
    assert '/opt/venv/bin/pip install --no-cache-dir ".[kube]"' in runs


def test_dockerfile_takes_pip_ca_bundle_only_as_a_build_secret():
    """A CA bundle for pip is mounted for the install step alone (never COPY, ARG or ENV, which
    would keep it in the image or its history), and the build works without it."""
    build = stages()[1]
    (install,) = [c for c in only("RUN", build) if "pip install" in c.value[0]]
    assert "--mount=type=secret,id=pip-cert" in install.flags
    use_if_given = "if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi"
    assert use_if_given in install.value[0]
    for c in COMMANDS:
        if c.cmd in ("ARG", "ENV", "COPY", "ADD"):
            assert not any("cert" in str(v).lower() for v in c.value), c.original


def test_dockerfile_final_stage_takes_only_the_venv_from_the_build():
    final = stages()[-1]
    copies = only("COPY", final)
    assert [(c.flags, c.value) for c in copies] == [(("--from=build",), ("/opt/venv", "/opt/venv"))]


def test_dockerfile_final_stage_installs_no_packages():
    runs = " ".join(c.value[0] for c in only("RUN", stages()[-1]))
    assert not re.search(r"\b(pip|apt-get|apt|gcc|cc|make)\b", runs)


def test_dockerfile_user_is_the_chart_uid():
    (user,) = only("USER", stages()[-1])
    context = CHART_VALUES["sidecar"]["securityContext"]
    assert user.value[0] == f"{context['runAsUser']}:{context['runAsGroup']}"
    assert CHART_VALUES["podSecurityContext"]["fsGroup"] == context["runAsGroup"]


def test_dockerfile_exposes_the_chart_system_port():
    (expose,) = only("EXPOSE", stages()[-1])
    assert list(expose.value) == [str(CHART_VALUES["system"]["port"])]


def test_dockerfile_puts_the_venv_first_on_path():
    env = {}
    for c in only("ENV", stages()[-1]):
        env.update(zip(c.value[::2], c.value[1::2], strict=True))
    assert env["PATH"].split(":")[0] == "/opt/venv/bin"
