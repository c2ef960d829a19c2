"""Success and failure conditions of the release analysis: small arithmetic expressions, safely evaluated.

Argo Rollouts writes ``successCondition: result[0] >= 0.95`` in the expr language;
ours are Python-syntax expressions over named numbers, parsed with ``ast`` and
evaluated by walking a whitelist of nodes (comparisons, ``and``/``or``/``not``,
``+ - * /``, ``abs``/``min``/``max``, numbers and the given names). Anything else
(attributes, subscripts, other calls) is refused when the config is loaded.

Example:
    >>> holds("challenger <= champion * 1.25 + 5", {"challenger": 12.0, "champion": 10.0, "result": 2.0})
    True
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any

#: The names a condition may use (see ``flows.release.analysis`` for what each holds).
NAMES = frozenset({"challenger", "champion", "result"})
_FUNCTIONS: dict[str, Callable[..., float]] = {"abs": abs, "min": min, "max": max}
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


def parse(expression: str) -> ast.Expression:
    """Parse and check a condition.

    Raises:
        ValueError: not an expression, or it uses something outside the whitelist.
    """
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"condition {expression!r} is not an expression: {exc.msg}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in NAMES and node.id not in _FUNCTIONS:
            raise ValueError(f"condition {expression!r}: unknown name {node.id!r} (use {sorted(NAMES)})")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS):
            raise ValueError(f"condition {expression!r}: only {sorted(_FUNCTIONS)} may be called")
        allowed = (
            ast.Expression,
            ast.Compare,
            ast.BoolOp,
            ast.UnaryOp,
            ast.BinOp,
            ast.Name,
            ast.Constant,
            ast.Call,
            ast.Load,
            ast.And,
            ast.Or,
            ast.Not,
            ast.USub,
            *_BINARY,
            *_COMPARE,
        )
        if not isinstance(node, allowed):
            raise ValueError(f"condition {expression!r}: {type(node).__name__} is not allowed")
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float):
            raise ValueError(f"condition {expression!r}: only numbers may appear as constants")
    return tree


def holds(expression: str, values: Mapping[str, float]) -> bool:
    """Whether the condition is true for ``values`` (a name it uses must be given)."""
    return bool(_eval(parse(expression).body, values))


def _eval(node: ast.AST, values: Mapping[str, float]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in values:
            raise ValueError(f"condition uses {node.id!r}, which this metric does not measure")
        return values[node.id]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval(node.left, values), _eval(node.right, values))
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, values)
        return (not operand) if isinstance(node.op, ast.Not) else -operand
    if isinstance(node, ast.BoolOp):
        results = (_eval(v, values) for v in node.values)
        return all(results) if isinstance(node.op, ast.And) else any(results)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, values)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _eval(comparator, values)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        return _FUNCTIONS[node.func.id](*(_eval(a, values) for a in node.args))
    raise ValueError(f"{type(node).__name__} is not allowed in a condition")
