"""The package's shape: subpackages import only the layers below them, nothing imports cli."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mirex_vi"
# Low to high: a module may import its own layer and those before it (mirex_vi/__init__.py).
LAYERS = ["config", "synth", "core", "io", "features", "model", "inference", "eval", "train",
          "search", "corpus", "cli"]


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module under mirex_vi)`` of every import of the package in ``path``."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    package = parts if parts[-1] == "__init__" else parts[:-1]
    package = [p for p in package if p != "__init__"]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                found.append((node.lineno, ".".join([*base, node.module])))
            else:
                found += [(node.lineno, ".".join([*base, a.name])) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mirex_vi."):
            found.append((node.lineno, node.module.removeprefix("mirex_vi.")))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.removeprefix("mirex_vi.")) for a in node.names
                      if a.name.startswith("mirex_vi.")]
    return found


def _layer(module: str) -> str:
    return module.split(".")[0]


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.stem in LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_its_layer_and_those_below(path):
    mine = _layer(".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    upward = [f"line {line}: {module}" for line, module in _imports(path)
              if _layer(module) in LAYERS and LAYERS.index(_layer(module)) > LAYERS.index(mine)]
    assert not upward, f"{path.relative_to(PACKAGE)} ({mine}) imports higher layers: {upward}"


def test_every_module_lives_in_a_layer():
    loose = [p.name for p in PACKAGE.glob("*.py")
             if p.stem not in LAYERS and p.stem not in ("__init__", "__main__")]
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert not loose and folders <= set(LAYERS), (loose, folders - set(LAYERS))


def test_only_the_entry_point_imports_the_command_line():
    users = [f"{p.relative_to(PACKAGE)}:{line}" for p in PACKAGE.rglob("*.py")
             if _layer(".".join(p.relative_to(PACKAGE).parts)) != "cli" and p.name != "__main__.py"
             for line, module in _imports(p) if _layer(module) == "cli"]
    assert not users, users


def test_every_subpackage_says_what_it_holds():
    for folder in (p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()):
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc.splitlines()) >= 3, f"{folder.name}/__init__.py needs a docstring"
