"""Settings from a Python configuration file, read without running it.

ELEKTRONN 1 ran its configs with ``execfile``: every top-level name is a setting. Here the file
is parsed (:mod:`ast`) and only what is plainly data is evaluated: literals, names set before,
arithmetic, ``+=`` and friends, ``%`` formatting, and ``dict(...)`` of such values. Anything
more (a call, a comprehension, an import, a loop) is not run: the names it would set are kept
as :class:`Unresolved`, with the line and the reason, so a caller can skip a setting it does
not need and refuse one it does.
"""

from __future__ import annotations

import ast
import operator
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
MAX_POWER = 64  # 10**12 is a setting; 10**10**10 is an attack on memory
MAX_LENGTH = 10**6  # characters or items a repetition may make


@dataclass(frozen=True)
class Unresolved:
    """A setting the file computes in a way that is not run: where, and why."""

    line: int
    reason: str

    def text(self, path: str | Path, name: str) -> str:
        return f"{path}, line {self.line}: {name} needs {self.reason}, which densepred does not run"


class _NotData(Exception):
    """An expression that is more than data; its message says what it needed."""


@dataclass
class PythonSettings:
    """The file's settings: evaluated values, unresolved ones, and what was skipped."""

    path: Path
    values: dict[str, Any]
    unresolved: dict[str, Unresolved]
    skipped: list[str]  # "line N: what" for statements not run that set no name

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)


def read_python_settings(path: str | Path, defaults: dict[str, Any] | None = None) -> PythonSettings:
    """Parse ``path`` and evaluate its top-level assignments over ``defaults``, running nothing."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")  # Python 2 files without a coding line
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        with warnings.catch_warnings():  # the compiler's warnings ("invalid decimal literal") on stderr
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise ConfigError(f"{path}, line {exc.lineno}: not valid Python 3 ({exc.msg}); a Python 2 statement "
                          "(print without parentheses, exec) must be removed or rewritten first") from None
    settings = PythonSettings(path, dict(defaults or {}), {}, [])
    for statement in tree.body:
        _run_statement(statement, settings)
    return settings


def _run_statement(node: ast.stmt, settings: PythonSettings) -> None:
    if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
        names = [t.id for t in node.targets]
        _store(settings, names, node.lineno, lambda: _evaluate(node.value, settings))
    elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and type(node.op) in _BINARY:
        name = node.target.id

        def combined() -> Any:
            if name in settings.unresolved:
                raise _NotData(settings.unresolved[name].reason)
            if name not in settings.values:
                raise _NotData(f"{name} before it is set")
            return _binary(node.op, settings.values[name], _evaluate(node.value, settings))

        _store(settings, [name], node.lineno, combined)
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        _store(settings, [node.target.id], node.lineno, lambda: _evaluate(node.value, settings))
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        return  # a docstring
    elif isinstance(node, ast.Delete) and all(isinstance(t, ast.Name) for t in node.targets):
        for target in node.targets:
            settings.values.pop(target.id, None)
            settings.unresolved.pop(target.id, None)
    else:
        what = _statement_kind(node)
        names = _names_bound(node)
        if not names:
            settings.skipped.append(f"line {node.lineno}: {what}")
        for name in names:
            settings.values.pop(name, None)
            settings.unresolved[name] = Unresolved(node.lineno, what)


def _store(settings: PythonSettings, names: list[str], line: int, compute: Any) -> None:
    try:
        value = compute()
    except _NotData as exc:
        for name in names:
            settings.values.pop(name, None)
            settings.unresolved[name] = Unresolved(line, str(exc))
        return
    for name in names:
        settings.values[name] = value
        settings.unresolved.pop(name, None)


def _evaluate(node: ast.expr, settings: PythonSettings) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return _name(node.id, settings)
    if isinstance(node, ast.List | ast.Tuple | ast.Set | ast.Dict):
        return _container(node, settings)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _binary(node.op, _evaluate(node.left, settings), _evaluate(node.right, settings))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        operand = _evaluate(node.operand, settings)
        try:
            return _UNARY[type(node.op)](operand)
        except TypeError as exc:  # -'a'
            raise _NotData(f"arithmetic that fails ({exc})") from None
    if _is_dict_call(node):
        return {k.arg: _evaluate(k.value, settings) for k in node.keywords}
    raise _NotData(_expression_kind(node))


def _container(node: ast.List | ast.Tuple | ast.Set | ast.Dict, settings: PythonSettings) -> Any:
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise _NotData("a ** expansion")
        return {_evaluate(k, settings): _evaluate(v, settings) for k, v in zip(node.keys, node.values, strict=True)}
    items = [_evaluate(e, settings) for e in node.elts]
    return items if isinstance(node, ast.List) else tuple(items) if isinstance(node, ast.Tuple) else set(items)


def _name(name: str, settings: PythonSettings) -> Any:
    if name in settings.values:
        return settings.values[name]
    if name in settings.unresolved:
        raise _NotData(settings.unresolved[name].reason)
    if name in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[name]
    raise _NotData(f"the name {name!r}, which is not set before")


def _binary(op: ast.operator, left: Any, right: Any) -> Any:
    if isinstance(op, ast.Pow) and isinstance(right, int | float) and abs(right) > MAX_POWER:
        raise _NotData(f"a power of {right}")
    if isinstance(op, ast.Mult) and _repeats_too_much(left, right):
        raise _NotData("a repetition longer than a setting needs")
    try:
        return _BINARY[type(op)](left, right)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:
        raise _NotData(f"arithmetic that fails ({exc})") from None


def _repeats_too_much(left: Any, right: Any) -> bool:
    for seq, count in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple) and isinstance(count, int) and len(seq) * count > MAX_LENGTH:
            return True
    return False


def _is_dict_call(node: ast.expr) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict"
            and not node.args and all(k.arg is not None for k in node.keywords))


def _expression_kind(node: ast.expr) -> str:
    if isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
        return "a comprehension"
    if isinstance(node, ast.Call):
        return f"a call ({ast.unparse(node.func)}(...))"
    if isinstance(node, ast.Lambda):
        return "a lambda"
    return f"an expression ({type(node).__name__})"


def _statement_kind(node: ast.stmt) -> str:
    if isinstance(node, ast.Import | ast.ImportFrom):
        return "an import"
    if isinstance(node, ast.Expr):
        return _expression_kind(node.value)
    return f"a {type(node).__name__.lower()} statement"


def _names_bound(node: ast.stmt) -> set[str]:
    """The names a statement that is not run would bind."""
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    if isinstance(node, ast.Import | ast.ImportFrom):
        names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        names.add(node.name)
    return names
