"""Brute-force readings of the filter language over a row's metadata (a dict), used as the
oracle every vector store is checked against.

`evaluate` reads the raw JSON filter, independently of the parser; `matches` reads the parsed
tree (domain.filters), which is what the stores render. Missing keys are missing values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from embedd_server.domain.filters import AnyOf, Compare, Exists, Node, Or, parse_datetime


def _typed(ftype: str, value: Any) -> Any:
    if value is None:
        return None
    if ftype == "datetime":
        return parse_datetime(value) if isinstance(value, str) else value
    if ftype == "integer":
        return int(value)
    return value


def _holds(op: str, v: Any, x: Any) -> bool:
    """`v <op> x` with the language's missing-value rule (v None = missing)."""
    if op == "ne":
        return not (v is not None and v == x)
    if v is None:
        return False
    return {"eq": v == x, "gt": v > x, "gte": v >= x, "lt": v < x, "lte": v <= x}[op]


def _condition(ftype: str, stored: Any, op: str, arg: Any) -> bool:
    v = _typed(ftype, stored)
    op = {"neq": "ne"}.get(op, op)
    if op == "exists":
        return (v is not None) is bool(arg)
    if op in ("in", "nin"):
        found = v is not None and v in [_typed(ftype, a) for a in arg]
        return found if op == "in" else not found
    return _holds(op, v, _typed(ftype, arg))


def evaluate(filters: Mapping[str, Any] | None, row: Mapping[str, Any], types: Mapping[str, str]) -> bool:
    """Does `row` pass the raw filter `filters`?"""
    for key, cond in (filters or {}).items():
        if key == "$or":
            if not any(evaluate(f, row, types) for f in cond):
                return False
        elif key == "$and":
            if not all(evaluate(f, row, types) for f in cond):
                return False
        elif isinstance(cond, Mapping):
            if not all(_condition(types[key], row.get(key), op, arg) for op, arg in cond.items()):
                return False
        elif not _condition(types[key], row.get(key), "eq", cond):
            return False
    return True


def matches(node: Node, row: Mapping[str, Any]) -> bool:
    """Does `row` pass the parsed filter `node`?"""
    if isinstance(node, Compare):
        return _holds(node.op, _typed(node.ftype, row.get(node.column)), node.value)
    if isinstance(node, AnyOf):
        v = _typed(node.ftype, row.get(node.column))
        found = v is not None and v in node.values
        return not found if node.negated else found
    if isinstance(node, Exists):
        return (row.get(node.column) is not None) is node.present
    if isinstance(node, Or):
        return any(matches(i, row) for i in node.items)
    return all(matches(i, row) for i in node.items)
