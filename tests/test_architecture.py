"""The layers of docs/architecture.md hold: no module imports from a layer above its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_layers_point_down():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([lint, "--no-cache"], check=False, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def imports_of_test_modules(source: str) -> list[str]:
    """The modules ``source`` imports that are conftest or test modules (test_*)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return [name for name in names if name.split(".")[0] == "conftest" or name.startswith("test_")]


def test_test_modules_share_helpers_not_each_other():
    """Shared code is in tests/helpers.py (fixtures in conftest.py): a test file can be run, moved or split alone."""
    sample = "import os, test_boot\nfrom conftest import REPO\nfrom helpers import REPO\n\ndef f():\n    from test_web import x\n"
    assert imports_of_test_modules(sample) == ["test_boot", "conftest", "test_web"]
    found = {
        path.name: bad
        for path in sorted((ROOT / "tests").glob("*.py"))
        if (bad := imports_of_test_modules(path.read_text()))
    }
    assert not found, f"import these from tests/helpers.py (fixtures: conftest.py) instead: {found}"
