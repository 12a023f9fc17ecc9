"""The C source lists of setup.py (KERNEL_SOURCES, OPS_SOURCES, ...), read without running setup.py: its
top-level assignments of list literals and sums of such lists.

    python tests/helpers/setup_sources.py NAME [SETUP_PY]   prints the list's paths, one per line
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

SETUP = Path(__file__).resolve().parents[2] / "setup.py"


def _value(node, known: dict) -> list:
    if isinstance(node, ast.List):
        return ast.literal_eval(node)
    if isinstance(node, ast.Name) and node.id in known:
        return known[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _value(node.left, known) + _value(node.right, known)
    raise ValueError("not a list of sources")


def source_lists(setup: Path = SETUP) -> dict:
    """{name: [path, ...]} for each top-level list of setup.py."""
    known = {}
    for node in ast.parse(Path(setup).read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                known[node.targets[0].id] = _value(node.value, known)
            except ValueError:
                continue
    return known


if __name__ == "__main__":
    print("\n".join(source_lists(Path(sys.argv[2]) if len(sys.argv) > 2 else SETUP)[sys.argv[1]]))
