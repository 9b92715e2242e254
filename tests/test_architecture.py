"""The shape of the package (docs/architecture.md), checked on its source.

Each rule is one a reader relies on to find their way: if one breaks, the map in the README
and docs/architecture.md is no longer true.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sidecar"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
# The adapters' packages, and the other packages each may not import.
ADAPTER_PACKAGES = {
    "inputs": ("sidecar.outputs", "sidecar.kube"),
    "outputs": ("sidecar.inputs", "sidecar.kube"),
    "kube": ("sidecar.inputs", "sidecar.outputs"),
}
# The state's own records: readers outside the core take its views instead.
STATE_RECORDS = frozenset({"life", "endpoints", "instances", "leases"})


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def imported(path: Path) -> Iterator[str]:
    """Every module `path` imports, absolute, `from x import y` counted as both x and x.y."""
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("path", modules(), ids=name)
def test_no_module_is_over_400_lines(path: Path) -> None:
    assert path.read_text().count("\n") <= MAX_MODULE_LINES


@pytest.mark.parametrize("path", modules(), ids=name)
def test_no_function_is_over_60_lines(path: Path) -> None:
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree(path))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_the_core_imports_nothing_of_the_sidecar_outside_it() -> None:
    outside = {
        f"{name(path)} imports {module}"
        for path in (PACKAGE / "core").glob("*.py")
        for module in imported(path)
        if under(module, "sidecar") and not under(module, "sidecar.core")
    }
    assert outside == set()


@pytest.mark.parametrize("package", sorted(ADAPTER_PACKAGES))
def test_no_adapter_imports_another_package_of_adapters(package: str) -> None:
    crossing = {
        f"{name(path)} imports {module}"
        for path in (PACKAGE / package).glob("*.py")
        for module in imported(path)
        if any(under(module, other) for other in ADAPTER_PACKAGES[package])
    }
    assert crossing == set()


def adapter_modules() -> set[str]:
    """The modules that define an adapter: a subclass of `Adapter`, or of one of those."""
    classes = [
        (name(path), node.name, {base.id for base in node.bases if isinstance(base, ast.Name)})
        for path in modules()
        for node in ast.walk(tree(path))
        if isinstance(node, ast.ClassDef)
    ]
    adapters = {"Adapter"}
    while more := {cls for _, cls, bases in classes if bases & adapters} - adapters:
        adapters |= more
    return {module for module, cls, bases in classes if bases & adapters}


def test_the_adapters_are_found() -> None:
    """The rule below means something only if it sees the adapters."""
    found = adapter_modules()
    assert {"sidecar.inputs.notify", "sidecar.http_servers", "sidecar.kube.reporter"} <= found


def test_only_the_assembly_knows_the_adapters() -> None:
    """`serve` runs adapters through their one shape; only `assembly.py` builds them."""
    adapters = adapter_modules()
    knowing = {
        f"{name(path)} imports {module}"
        for path in [PACKAGE / "server.py", PACKAGE / "component.py"]
        for module in imported(path)
        if module in adapters
    }
    assert knowing == set()


def test_nothing_outside_the_core_reads_the_state_records() -> None:
    """`state.life`, `state.endpoints`, ... are the core's; the rest reads `snapshot()` and
    the other views of core/views.py, so nothing outside can change them by accident."""
    reads = set()
    for path in modules():
        if path.parent.name == "core":
            continue
        for node in ast.walk(tree(path)):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value
            is_state = (isinstance(owner, ast.Name) and owner.id == "state") or (
                isinstance(owner, ast.Attribute) and owner.attr == "state"
            )
            private = node.attr.startswith("_")
            if is_state and (node.attr in STATE_RECORDS or private):
                reads.add(f"{name(path)}:{node.lineno} reads state.{node.attr}")
    assert reads == set()
