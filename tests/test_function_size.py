"""No function in src/ is longer than a reader can hold in their head.

The complement of ruff's C901 (pyproject.toml): a long function with few branches passes
the complexity limit and is still too much to read at once.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
#: Lines from ``def`` to the function's last line (decorators not counted).
MAX_LINES = 80

def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, int]]:
    """(qualified name, length in lines) of every function, methods and nested ones too."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            name = prefix + node.name
            yield name, (node.end_lineno or node.lineno) - node.lineno + 1
            yield from _functions(node, name + ".")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, prefix + node.name + ".")
        else:
            yield from _functions(node, prefix)


def _lengths() -> dict[str, int]:
    """``module:function`` -> lines, for every function under src/."""
    out: dict[str, int] = {}
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC).as_posix()
        for name, lines in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            out[f"{module}:{name}"] = lines
    return out


def test_no_function_is_longer_than_80_lines() -> None:
    too_long = [
        f"{key} ({lines} lines)"
        for key, lines in _lengths().items()
        if lines > MAX_LINES
    ]
    assert not too_long, (
        f"functions over {MAX_LINES} lines; split them into named helpers:\n  "
        + "\n  ".join(too_long)
    )
