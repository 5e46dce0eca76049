"""The code base's import rules and module sizes, read from the source with ``ast`` (nothing is imported).

- ``segmenter`` never imports ``dicom_node`` (it is used and tested alone).
- No import cycles among the modules of ``dicom_node/`` and ``segmenter/``: module-level and function-level
  imports both count (a deferred import still needs the other module to be importable first), those under
  ``if TYPE_CHECKING:`` do not (they never run).
- Inside ``segmenter``, subpackages import only the layers below them (``LAYERS``); ``registry.py`` and
  ``cli.py`` sit on top and may import everything, and nothing imports them.
- Every module of ``dicom_node/`` and ``segmenter/`` stays under ``MAX_LINES`` lines.

Each rule is a function of a source tree, so the last tests run them on small trees that break them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("dicom_node", "segmenter")
MAX_LINES = 400
# segmenter's subpackages and what each may import besides itself: core <- everyone; the top-level modules
# registry.py and cli.py are not listed here and may import everything.
LAYERS: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "models": frozenset({"core"}),
    "classical": frozenset({"core"}),
    "nnunet": frozenset({"core", "models"}),
    "multihead": frozenset({"core", "models", "nnunet", "classical"}),
    "training": frozenset({"core", "models", "multihead"}),
}
# where a subpackage may reach into a lower one only for one job, the modules it may use there
ONLY_MODULES: dict[tuple[str, str], frozenset[str]] = {
    ("multihead", "nnunet"): frozenset({"segmenter.nnunet.sliding_window"}),
    ("multihead", "classical"): frozenset({"segmenter.classical.orient"}),
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted (a module of ours where the name is one, else as written)
    line: int
    type_checking: bool  # under ``if TYPE_CHECKING:``


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``PACKAGES`` under ``root``."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, type_checking: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement below ``node`` (functions and classes included), with whether it only runs
    for type checkers. The ``else`` branch of ``if TYPE_CHECKING:`` runs, so it counts."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, type_checking
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for child in node.body:
            yield from _walk(child, True)
        for child in node.orelse:
            yield from _walk(child, type_checking)
        return
    for child in ast.iter_child_nodes(node):
        yield from _walk(child, type_checking)


def imports(root: Path) -> list[Import]:
    """The imports of every module under ``root``; ``from pkg import name`` targets ``pkg.name`` where that is
    a module of ours, else ``pkg``; relative imports are resolved."""
    known = modules(root)
    found: list[Import] = []
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, type_checking in _walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                           for alias in node.names]
            found.extend(Import(name, t, node.lineno, type_checking) for t in dict.fromkeys(targets))
    return found


def _ours(target: str) -> bool:
    return target.split(".")[0] in PACKAGES


def _owner(target: str, known: dict[str, Path]) -> str | None:
    """The module of ours that an import of ``target`` runs (``pkg.mod.Name`` -> ``pkg.mod``)."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def import_cycle(root: Path) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``) among the modules under ``root``, or None."""
    known = modules(root)
    graph: dict[str, set[str]] = {name: set() for name in known}
    for imp in imports(root):
        owner = _owner(imp.target, known) if _ours(imp.target) else None
        if not imp.type_checking and owner is not None and owner != imp.source:
            graph[imp.source].add(owner)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def segmenter_to_dicom_node(root: Path) -> list[str]:
    """``segmenter`` modules importing ``dicom_node`` (type-checking imports included)."""
    return [f"{imp.source}:{imp.line} imports {imp.target}" for imp in imports(root)
            if imp.source.split(".")[0] == "segmenter" and imp.target.split(".")[0] == "dicom_node"]


def _layer(module: str) -> str | None:
    """The subpackage of ``segmenter`` that ``module`` lies in (None: the top level or another package)."""
    parts = module.split(".")
    if parts[0] != "segmenter" or len(parts) < 2:
        return None
    return parts[1] if len(parts) > 2 or parts[1] in LAYERS else None


def layering_violations(root: Path) -> list[str]:
    """Imports between ``segmenter``'s subpackages against ``LAYERS`` / ``ONLY_MODULES`` (type-checking imports
    included: a type still ties the two layers together)."""
    bad = []
    for imp in imports(root):
        source_layer = _layer(imp.source)
        if source_layer is None or imp.target.split(".")[0] != "segmenter":
            continue  # top-level modules and other packages' imports are not layered
        target = imp.target
        target_layer = _layer(target)
        if target_layer == source_layer or (target_layer is None and target == "segmenter"):
            continue
        allowed = LAYERS.get(source_layer, frozenset())
        only = ONLY_MODULES.get((source_layer, target_layer or ""))
        if target_layer not in allowed or (only is not None and target not in only):
            bad.append(f"{imp.source}:{imp.line} imports {target} ({source_layer} -> {target_layer or target})")
    return bad


def long_modules(root: Path) -> dict[str, int]:
    """Modules of ``MAX_LINES`` lines or more (path relative to ``root`` -> lines)."""
    sizes = {path.relative_to(root).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
             for path in modules(root).values()}
    return {path: n for path, n in sizes.items() if n >= MAX_LINES}


# ---- the rules on this repository ----

def test_segmenter_never_imports_dicom_node() -> None:
    assert segmenter_to_dicom_node(REPO) == []


def test_no_import_cycles() -> None:
    cycle = import_cycle(REPO)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_segmenter_subpackages_import_only_lower_layers() -> None:
    assert set(LAYERS) == {p.name for p in (REPO / "segmenter").iterdir() if (p / "__init__.py").is_file()}, \
        "a segmenter subpackage is missing from LAYERS"
    assert layering_violations(REPO) == []


def test_modules_stay_under_the_line_limit() -> None:
    over = long_modules(REPO)
    assert over == {}, f"modules of {MAX_LINES} lines or more: {over}"


def test_the_parser_sees_the_imports_it_must() -> None:
    """A sample of real imports (module level, in a function, under TYPE_CHECKING) is found as such."""
    found = {(i.source, i.target, i.type_checking) for i in imports(REPO)}
    assert ("segmenter.nnunet.arch", "segmenter.nnunet.blocks", False) in found
    assert ("segmenter.registry", "segmenter.multihead.model", False) in found  # inside get_engine
    assert ("segmenter.multihead.model", "segmenter.core.volume", True) in found


# ---- each rule fails on a tree that breaks it ----

def _tree(root: Path, files: dict[str, str]) -> Path:
    for package in PACKAGES:
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").touch()
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent.name in LAYERS:
            (path.parent / "__init__.py").touch()
        path.write_text(text, encoding="utf-8")
    return root


def test_a_cycle_is_found_and_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "dicom_node/a.py": "from dicom_node.b import thing\n",
        "dicom_node/b.py": "def f() -> None:\n    from dicom_node import c\n",
        "dicom_node/c.py": "import dicom_node.a\n",
    })
    assert import_cycle(root) == ["dicom_node.a", "dicom_node.b", "dicom_node.c", "dicom_node.a"]


def test_type_checking_imports_make_no_cycle(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "segmenter/core/a.py": "from typing import TYPE_CHECKING\n"
                               "if TYPE_CHECKING:\n    from segmenter.core.b import B\n",
        "segmenter/core/b.py": "from .a import A\n",
    })
    assert import_cycle(root) is None
    # the else branch runs, so it counts
    (root / "segmenter/core/a.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    pass\nelse:\n"
                                              "    from segmenter.core.b import B\n", encoding="utf-8")
    assert import_cycle(root) == ["segmenter.core.a", "segmenter.core.b", "segmenter.core.a"]


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"segmenter/nnunet/x.py": "from ..core import errors\nfrom . import y\n",
                            "segmenter/nnunet/y.py": "", "segmenter/core/errors.py": ""})
    assert {i.target for i in imports(root) if i.source == "segmenter.nnunet.x"} == {
        "segmenter.core.errors", "segmenter.nnunet.y"}


@pytest.mark.parametrize("source,text", [
    ("segmenter/core/volume.py", "from dicom_node.errors import NodeError\n"),
    ("segmenter/nnunet/engine.py", "def f() -> None:\n    import dicom_node.series_io\n"),
])
def test_a_segmenter_import_of_dicom_node_is_found(tmp_path: Path, source: str, text: str) -> None:
    root = _tree(tmp_path, {source: text})
    assert len(segmenter_to_dicom_node(root)) == 1


@pytest.mark.parametrize("source,text,ok", [
    ("segmenter/core/volume.py", "from segmenter.models.manifest import Manifest\n", False),  # core imports no one
    ("segmenter/nnunet/engine.py", "from segmenter.multihead.model import MultiHeadModel\n", False),  # upwards
    ("segmenter/training/train.py", "from segmenter.registry import get_engine\n", False),  # the top
    ("segmenter/multihead/model.py", "from segmenter.nnunet.engine import NnUNetEngine\n", False),  # not the window
    ("segmenter/multihead/model.py", "from segmenter.nnunet.sliding_window import WindowSettings\n", True),
    ("segmenter/training/train.py", "from segmenter.multihead import model\n", True),
    ("segmenter/classical/engine.py", "from segmenter import __version__\n", True),
])
def test_layering_is_enforced(tmp_path: Path, source: str, text: str, ok: bool) -> None:
    root = _tree(tmp_path, {source: text})
    assert (layering_violations(root) == []) is ok, layering_violations(root)


def test_a_long_module_is_found(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"segmenter/core/big.py": "x = 1\n" * MAX_LINES, "segmenter/core/ok.py": "x = 1\n" * 399})
    assert long_modules(root) == {"segmenter/core/big.py": MAX_LINES}
