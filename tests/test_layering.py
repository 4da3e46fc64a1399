"""The library never imports the command line (no upward imports): only cli.py and __main__ may."""
from __future__ import annotations

import ast
from pathlib import Path

import vlprompt
from vlprompt.analysis.markdown import format_table

PACKAGE = Path(vlprompt.__file__).parent


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_library_module_imports_the_cli():
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name not in ("cli.py", "__main__.py") and "vlprompt.cli" in _imports(path)
    ]
    assert offenders == []


def test_format_table_rounds_floats_and_leaves_missing_cells_empty():
    table = format_table([{"method": "coop", "accuracy": 0.123456}, {"method": "vpt"}], ("method", "accuracy"))
    assert table.splitlines() == [
        "| method | accuracy |",
        "|---|---|",
        "| coop | 0.1235 |",
        "| vpt |  |",
    ]
