"""Managed mode: a parsed filter (domain.filters) as a Qdrant `Filter`.

Metadata lives in each point's payload under `metadata.<column>`, every mapped column present
(JSON null when the source value is NULL). The translation keeps the missing-value rule of
the language (docs/filters.md), the same as platform mode's SQL:

    eq (keyword, integer, boolean)  FieldCondition MatchValue      never matches a missing value
    eq (float), eq (datetime)       Range / DatetimeRange gte=lte=v
    gt gte lt lte                   Range / DatetimeRange          never matches a missing value
    in (keyword, integer)           MatchAny
    in (float, datetime)            should: one eq per value
    ne, nin                         must_not of eq / in            matches missing values
    exists true / false             must_not IsEmpty / IsEmpty     (IsEmpty: missing or null)
    AND / OR                        must / should of nested filters

Values arrive typed by the parser (a boolean column only ever compares with booleans), which
avoids local mode's `True == 1` trap: it compares payload values with Python's `==`.
"""

from __future__ import annotations

import datetime as dt

from qdrant_client.http import models

from embedd_server.domain.filters import AnyOf, Compare, Exists, Node, Or, Scalar, is_match_all

METADATA = "metadata"
_ORDER = ("gt", "gte", "lt", "lte")

Condition = models.FieldCondition | models.IsEmptyCondition | models.Filter


def field_key(column: str) -> str:
    return f"{METADATA}.{column}"


def _range(ftype: str, op: str, value: Scalar) -> models.Range | models.DatetimeRange:
    bounds = {"gte": value, "lte": value} if op == "eq" else {op: value}
    if ftype == "datetime":
        assert isinstance(value, dt.datetime)
        return models.DatetimeRange(**bounds)  # type: ignore[arg-type]
    assert isinstance(value, int | float) and not isinstance(value, bool)
    return models.Range(**{k: float(v) for k, v in bounds.items()})  # type: ignore[arg-type]


def _equals(column: str, ftype: str, value: Scalar) -> models.FieldCondition:
    key = field_key(column)
    if ftype in ("float", "datetime"):
        return models.FieldCondition(key=key, range=_range(ftype, "eq", value))
    assert isinstance(value, str | int | bool)
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _compare(node: Compare) -> Condition:
    if node.op in _ORDER:
        bounds = _range(node.ftype, node.op, node.value)
        return models.FieldCondition(key=field_key(node.column), range=bounds)
    equals = _equals(node.column, node.ftype, node.value)
    return equals if node.op == "eq" else models.Filter(must_not=[equals])


def _any_of(node: AnyOf) -> Condition:
    found: Condition
    if node.ftype in ("keyword", "integer"):
        values = list(node.values)
        found = models.FieldCondition(key=field_key(node.column), match=models.MatchAny(any=values))  # type: ignore[arg-type]
    else:
        found = models.Filter(should=[_equals(node.column, node.ftype, v) for v in node.values])
    return models.Filter(must_not=[found]) if node.negated else found


def _condition(node: Node) -> Condition:
    if isinstance(node, Compare):
        return _compare(node)
    if isinstance(node, AnyOf):
        return _any_of(node)
    if isinstance(node, Exists):
        empty = models.IsEmptyCondition(is_empty=models.PayloadField(key=field_key(node.column)))
        return models.Filter(must_not=[empty]) if node.present else empty
    items: list[Condition] = [_condition(i) for i in node.items]
    if isinstance(node, Or):
        return models.Filter(should=items)  # type: ignore[arg-type]
    return models.Filter(must=items)  # type: ignore[arg-type]


def to_qdrant(node: Node) -> models.Filter | None:
    """The Qdrant filter for `node`; None when it matches every point."""
    if is_match_all(node):
        return None
    condition = _condition(node)
    return condition if isinstance(condition, models.Filter) else models.Filter(must=[condition])
