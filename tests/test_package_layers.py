"""Import direction between packages: common and layers sit at the bottom, models never reach up into stages."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parents[1] / "models"


def _imported_packages(folder: Path) -> dict[str, set[str]]:
    """file -> the top-level ``models.<pkg>`` / ``stages`` names it imports (function-local imports included)."""
    out = {}
    for path in folder.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        parts = {n.split(".")[1] if n.startswith("models.") else n.split(".")[0] for n in names
                 if n.startswith(("models.", "stages"))}
        out[str(path.relative_to(MODELS.parent))] = parts
    return out


@pytest.mark.parametrize("package,allowed", [("common", {"common"}), ("layers", {"layers"})])
def test_bottom_packages_import_nothing_above_them(package, allowed):
    for path, parts in _imported_packages(MODELS / package).items():
        assert parts <= allowed, f"{path} imports {sorted(parts - allowed)}"


def test_models_never_import_stages():
    for path, parts in _imported_packages(MODELS).items():
        assert "stages" not in parts, path
