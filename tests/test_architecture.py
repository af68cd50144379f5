"""Who may import whom (ARCHITECTURE.md), read from every module's imports with `ast`, lazy imports included: the
build and the loader do not depend on the tools or the trainer, the tools do not depend on the trainer, and only the
cache package opens Zarr nodes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "trainer", "cache_tools", "synthetic")

# package -> the packages none of its modules may import
FORBIDDEN = {
    "pipeline": ("cache_tools", "trainer"),
    "cache_tools": ("trainer",),
    "synthetic": ("cache_tools", "trainer"),
}
ZARR_OPENERS = {"open", "open_group", "open_array"}
CACHE_PACKAGE = "pipeline.cache"  # the one package (besides tests and benchmarks) that opens a cache's Zarr nodes


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """The absolute names of every module `source` imports, at the top or inside functions; `from a import b` gives
    `a` and `a.b` (b may be a submodule), relative imports are resolved against `module`."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def zarr_opens(source: str) -> list[int]:
    """Lines that open a Zarr node: `zarr.open_group(...)` through any alias of a zarr module (`import zarr.api.
    asynchronous as za; za.open_group`), or an opener imported by name (`from zarr import open_group`)."""
    tree = ast.parse(source)
    aliases: set[str] = set()
    lines: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update(a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] == "zarr")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "zarr" and not node.level:
            for a in node.names:
                if a.name in ZARR_OPENERS:
                    lines.append(node.lineno)
                else:
                    aliases.add(a.asname or a.name)  # may be a submodule: `from zarr import api`
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ZARR_OPENERS:
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in aliases:
                lines.append(node.lineno)
    return sorted(lines)


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("package", PACKAGES)
def test_package_is_there(package):
    assert modules(package), f"{package}/ has no modules: update PACKAGES and ARCHITECTURE.md with the new layout"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_imports(package):
    bad = []
    for path in modules(package):
        found = imports(path.read_text(), module_name(path), path.name == "__init__.py")
        wrong = {name for name in found if any(in_package(name, other) for other in FORBIDDEN[package])}
        outermost = sorted(name for name in wrong if not any(in_package(name, o) for o in wrong - {name}))
        bad += [f"{path.relative_to(REPO)} imports {name}" for name in outermost]
    assert not bad, f"{package} may not import {', '.join(FORBIDDEN[package])} (ARCHITECTURE.md):\n" + "\n".join(bad)


def test_only_the_cache_package_opens_zarr_nodes():
    bad = [
        f"{path.relative_to(REPO)}:{line}"
        for package in PACKAGES
        for path in modules(package)
        if not in_package(module_name(path), CACHE_PACKAGE)
        for line in zarr_opens(path.read_text())
    ]
    assert not bad, f"open a cache through {CACHE_PACKAGE} (Cache.open), not with zarr.open*:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("source", "module", "is_package", "expected"),
    [
        ("import cache_tools.find", "pipeline.build", False, "cache_tools.find"),
        ("def f():\n    from trainer import train", "pipeline.cli", False, "trainer.train"),
        ("from . import store", "pipeline.cache.find", False, "pipeline.cache.store"),
        ("from .. import params", "pipeline.cache.find", False, "pipeline.params"),
        ("from .store import Cache", "pipeline.cache", True, "pipeline.cache.store"),
    ],
)
def test_imports_sees_lazy_and_relative_imports(source, module, is_package, expected):
    assert expected in imports(source, module, is_package)


@pytest.mark.parametrize(
    ("source", "lines"),
    [
        ("import zarr\nzarr.open_group('c.zarr')", [2]),
        ("import zarr.api.asynchronous as za\nza.open_group('c.zarr')", [2]),
        ("from zarr import open_array", [1]),
        ("from zarr import api\napi.synchronous.open('c.zarr')", [2]),
        ("import os\nos.open('f', 0)\nopen('f')", []),
    ],
)
def test_zarr_opens_sees_every_spelling(source, lines):
    assert zarr_opens(source) == lines
