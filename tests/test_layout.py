"""The package's layers: which packages may import which (read from the source, every import statement,
including those inside functions)."""

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "dtrpo_mega"
# package -> packages of dtrpo_mega it must not import
FORBIDDEN = {
    "diffusion": ("models", "training", "generation", "eval", "parallel", "checkpoint"),
    "generation": ("training",),
    "eval": ("training",),
    "data": ("training", "generation", "eval"),  # it reads the family registry and DLLMConfig in models/
    "losses": ("training", "models"),
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.startswith("dtrpo_mega.")}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_higher_ones(package):
    bad = [f"{path.relative_to(REPO)} imports {name}" for path in sorted((PACKAGE / package).rglob("*.py"))
           for name in sorted(_imports(path)) if name.split(".")[1] in FORBIDDEN[package]]
    assert not bad, "\n".join(bad)


def test_the_library_imports_no_example_and_no_tool():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        tree = ast.parse(text)
        modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in modules if m.split(".")[0] in ("examples", "tools", "bench_common")}, path
