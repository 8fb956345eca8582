"""The direction of imports (DESIGN.md section 6), checked by parsing the package with ``ast``.

errors/registry -> config -> data -> models -> pipeline -> search -> export/report -> cli.
Imports inside functions count too: a lazy import is still a dependency. The package root
(``tdmr_search/__init__.py``) re-exports the pipeline, so it sits at the top: a module below the
CLI imports ``__version__`` from ``tdmr_search.version``, never ``from tdmr_search import``.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tdmr_search"

#: Layer of each part of the package; a module may import only from its own layer or below.
LAYERS = {
    "errors": 0, "registry": 0, "fsio": 0, "yamlio": 0, "progress": 0, "version": 0,
    "config": 1,
    "data": 2,
    "models": 3, "deploy": 3,
    "pipeline": 4,
    "search": 5,
    "export": 6, "report": 6, "predict": 6,
    "cli": 7, "console": 7, "__init__": 7,  # __init__: the package root, `from tdmr_search import X`
    "__main__": 8,
}
#: Third-party packages only some parts may import (paths relative to the package).
ONLY_IN = {
    "optuna": ("search/", "export.py", "report.py", "cli.py"),
    "plotly": ("report.py",),
    "argparse": ("cli.py",),
}
TORCH_FREE = ("config.py", "errors.py", "registry.py")
LOWER = ("pipeline/", "models/", "data.py")
UPPER = ("search", "export", "report", "cli")


def _files() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10, f"found only {len(files)} modules under {PACKAGE}"
    return files


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _part(rel: str) -> str:
    """'models/flops.py' -> 'models'; 'config.py' -> 'config'."""
    return rel.split("/")[0].removesuffix(".py")


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _is_module(name: str) -> bool:
    """Whether the dotted ``name`` is a module or package of tdmr_search, not a name defined in one."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports_in(tree: ast.Module, package: str) -> list[tuple[str, int]]:
    """Every module ``tree`` (a module of ``package``) imports, absolute, with its line number.

    ``from tdmr_search import progress`` imports the module ``tdmr_search.progress``;
    ``from tdmr_search import __version__`` imports the package root ``tdmr_search``.
    """
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] != "tdmr_search":
                out.append((name, node.lineno))
                continue
            modules = [f"{name}.{alias.name}" for alias in node.names if _is_module(f"{name}.{alias.name}")]
            out += [(module, node.lineno) for module in modules]
            if len(modules) < len(node.names):  # some names come from the package's own __init__
                out.append((name, node.lineno))
    return out


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module ``path`` imports, absolute, with its line number."""
    return _imports_in(_tree(path), ".".join(("tdmr_search", *path.relative_to(PACKAGE).parent.parts)))


def _who_imports(top: str) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for path in _files():
        lines = [line for name, line in _imports(path) if name == top or name.startswith(top + ".")]
        if lines:
            found[_rel(path)] = lines
    return found


def test_the_parser_sees_lazy_imports():
    # cli.py imports optuna only inside a handler: the walk must still find it
    assert "cli.py" in _who_imports("optuna")
    assert "report.py" in _who_imports("plotly") or not (PACKAGE / "report.py").exists()


def test_the_parser_tells_the_package_root_from_its_modules():
    tree = ast.parse("from tdmr_search import __version__, progress\nfrom . import flops\nimport tdmr_search\n")
    assert sorted(_imports_in(tree, "tdmr_search.models")) == [
        ("tdmr_search", 1), ("tdmr_search", 3), ("tdmr_search.models.flops", 2), ("tdmr_search.progress", 1),
    ]


def test_every_module_has_a_layer():
    unknown = sorted({_part(_rel(p)) for p in _files()} - set(LAYERS) - {"__init__"})
    assert not unknown, f"add these parts of the package to LAYERS in {__file__}: {unknown}"


@pytest.mark.parametrize("top, allowed", sorted(ONLY_IN.items()))
def test_only_some_parts_import(top, allowed):
    offenders = {rel: lines for rel, lines in _who_imports(top).items() if not rel.startswith(allowed)}
    assert not offenders, f"only {', '.join(allowed)} may import {top}; found it in {offenders}"


@pytest.mark.parametrize("rel", TORCH_FREE)
def test_light_modules_do_not_import_torch(rel):
    heavy = ("torch", "timm", "numpy", "optuna", "sklearn")
    names = [(n, line) for n, line in _imports(PACKAGE / rel) if n.split(".")[0] in heavy]
    assert not names, f"{rel} must import without torch; it imports {names}"


def test_lower_layers_never_import_upper_ones():
    offenders = []
    for path in _files():
        rel = _rel(path)
        if not rel.startswith(LOWER):
            continue
        for name, line in _imports(path):
            parts = name.split(".")
            if parts[0] == "tdmr_search" and len(parts) > 1 and parts[1] in UPPER:
                offenders.append(f"{rel}:{line} imports {name}")
    assert not offenders, offenders


def test_imports_flow_one_way():
    offenders = []
    for path in _files():
        rel = _rel(path)
        if rel == "__init__.py":  # the package root re-exports lazily from below it
            continue
        own = LAYERS.get(_part(rel))
        if own is None:
            continue  # reported by test_every_module_has_a_layer
        for name, line in _imports(path):
            parts = name.split(".")
            if parts[0] != "tdmr_search":
                continue
            other = LAYERS["__init__"] if len(parts) == 1 else LAYERS.get(parts[1])
            if other is not None and other > own:
                root = " (the package root; __version__ is in tdmr_search.version)" if len(parts) == 1 else ""
                offenders.append(f"{rel}:{line} (layer {own}) imports {name} (layer {other}){root}")
    assert not offenders, offenders


def _calls(path: Path, test) -> list[int]:
    return [node.lineno for node in ast.walk(_tree(path)) if isinstance(node, ast.Call) and test(node.func)]


def test_library_code_never_prints():
    offenders = {}
    for path in _files():
        if _rel(path) == "cli.py":
            continue
        lines = _calls(path, lambda f: isinstance(f, ast.Name) and f.id == "print")
        if lines:
            offenders[_rel(path)] = lines
    assert not offenders, f"library code must log, not print: {offenders}"


def test_only_the_cli_configures_logging():
    offenders = {}
    for path in _files():
        if _rel(path) == "cli.py":
            continue
        lines = _calls(path, lambda f: isinstance(f, ast.Attribute) and f.attr == "basicConfig")
        if lines:
            offenders[_rel(path)] = lines
    assert not offenders, offenders
