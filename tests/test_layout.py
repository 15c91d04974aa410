"""The package's shape: small modules, short functions (the layers are checked by lint-imports)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "densepred"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def function_lengths(path: Path) -> list[tuple[str, int]]:
    """(name, lines of its body) for every function and method in a module, docstring excluded."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                body = body[1:] or body
            found.append((node.name, body[-1].end_lineno - body[0].lineno + 1))
    return found


def test_no_module_is_over_450_lines():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text(encoding="utf-8").splitlines())
             for p in PACKAGE.rglob("*.py")}
    too_long = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_no_function_body_is_over_60_lines():
    too_long = {f"{p.relative_to(PACKAGE)}:{name}": n for p in PACKAGE.rglob("*.py")
                for name, n in function_lengths(p) if n > MAX_FUNCTION_LINES}
    assert not too_long, f"function bodies over {MAX_FUNCTION_LINES} lines: {too_long}"


def test_every_subpackage_names_what_it_offers():
    for init in PACKAGE.rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{init} has no docstring"
