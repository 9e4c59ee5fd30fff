"""The metadata filter language of a query, parsed into a typed tree (pure: no SQL, no Qdrant).

A filter is a JSON object (the `filters` Struct of a query):

    {"in_stock": {"eq": true}, "price": {"lte": 150}}      keys AND together
    {"category": "outerwear"}                              a bare value means eq
    {"price": {"gte": 50, "lt": 100}}                      several operators on a key AND
    {"$or": [{"category": "bags"}, {"price": {"lt": 20}}]} OR of filters (nests; `$and` too)

Operators per filter type (docs/filters.md):

    keyword   eq ne in nin exists          strings, exact and case-sensitive
    integer   eq ne gt gte lt lte in nin exists   JSON numbers without a fraction
    float     eq ne gt gte lt lte in nin exists   JSON numbers
    boolean   eq ne exists                 true / false
    datetime  eq ne gt gte lt lte in nin exists   RFC 3339 / ISO 8601 strings; no offset = UTC

`neq` is an alias of `ne`. `exists: true` matches rows whose value is present and not null,
`exists: false` the rest. Missing values (null, or no key) follow MongoDB: `eq`, `in` and the
comparisons never match them, `ne` and `nin` do ("not equal to 5" includes "has no value").
Null is not a filter value: `exists` says "has a value".

`parse_filters` validates a filter against the vector table's metadata columns and returns a
tree of `Compare`, `AnyOf`, `Exists`, `And` and `Or` nodes whose values are already typed
(str, int, float, bool, aware datetime). Each vector store renders the tree itself
(sinks/pgvector_filters.py to SQL over the indexed expressions, sinks/qdrant_filters.py to a
Qdrant filter), so both read the language the same way. Anything that does not fit is a
`validation_error` naming the field path (`filters.price.gt`, `filters.$or[1].category`) and
what is allowed; every problem is reported at once.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from embedd_server.domain.validation import Violations
from embedd_server.domain.vector_tables import ColumnSpec

MAX_DEPTH = 8
MAX_LIST = 1000
MAX_CONDITIONS = 200

_EQUALITY = ("eq", "ne", "in", "nin", "exists")
_ORDERED = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "exists")
OPERATORS: dict[str, tuple[str, ...]] = {
    "keyword": _EQUALITY,
    "integer": _ORDERED,
    "float": _ORDERED,
    "boolean": ("eq", "ne", "exists"),
    "datetime": _ORDERED,
}
COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte")
_ALIASES = {"neq": "ne"}
# Filter values arrive as JSON numbers, i.e. doubles: past 2^53 an integer is silently rounded
# to a neighbour (9007199254740993 reads as ...992), so larger ones are refused, not guessed.
MAX_SAFE_INTEGER = 2**53 - 1
_WHAT = {
    "keyword": "a string",
    "integer": "an integer",
    "float": "a number",
    "boolean": "true or false",
    "datetime": "an RFC 3339 timestamp string such as '2026-03-13T10:00:00Z'",
}

Scalar: TypeAlias = str | int | float | bool | dt.datetime


@dataclass(frozen=True, slots=True)
class Compare:
    """`column <op> value`: op is eq, ne, gt, gte, lt or lte; `value` has the column's type."""

    column: str
    ftype: str
    op: str
    value: Scalar


@dataclass(frozen=True, slots=True)
class AnyOf:
    """`in` (the value is one of `values`) or, `negated`, `nin`."""

    column: str
    ftype: str
    values: tuple[Scalar, ...]
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Exists:
    """The column has a value (`present`), or has none."""

    column: str
    present: bool


@dataclass(frozen=True, slots=True)
class And:
    """Every item matches; no items matches every row."""

    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """At least one item matches (two or more items)."""

    items: tuple[Node, ...]


Node: TypeAlias = Compare | AnyOf | Exists | And | Or
MATCH_ALL = And(())


def is_match_all(node: Node) -> bool:
    return isinstance(node, And) and not node.items


def all_of(items: Sequence[Node]) -> Node:
    """AND of `items`, flattened: match-all items drop out, one item stands alone."""
    flat: list[Node] = []
    for item in items:
        flat.extend(item.items if isinstance(item, And) else (item,))
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def any_of(items: Sequence[Node]) -> Node:
    """OR of `items`: a match-all alternative matches every row."""
    if any(is_match_all(i) for i in items):
        return MATCH_ALL
    flat: list[Node] = []
    for item in items:
        flat.extend(item.items if isinstance(item, Or) else (item,))
    return flat[0] if len(flat) == 1 else Or(tuple(flat))


def columns_of(node: Node) -> set[str]:
    """The metadata columns a filter reads."""
    if isinstance(node, And | Or):
        return set().union(*(columns_of(i) for i in node.items))
    return {node.column}


class _Parser:
    def __init__(self, columns: Sequence[ColumnSpec]) -> None:
        self._columns = {c.name: c for c in columns}
        self.v = Violations()
        self._conditions = 0

    # -- structure ---------------------------------------------------------------------

    def filter(self, value: object, path: str, depth: int) -> Node:
        if not isinstance(value, Mapping):
            self.v.add(path, 'must be an object of column conditions, e.g. {"category": "bags"}')
            return MATCH_ALL
        if depth > MAX_DEPTH:
            self.v.add(path, f"nests too deep (at most {MAX_DEPTH} levels of $or/$and)")
            return MATCH_ALL
        parts: list[Node] = []
        for key, condition in value.items():
            key_path = f"{path}.{key}"
            if key in ("$or", "$and") and key not in self._columns:
                parts.append(self._group(key, condition, key_path, depth))
            else:
                parts.append(self._column(key, condition, key_path))
        return all_of(parts)

    def _group(self, key: str, items: object, path: str, depth: int) -> Node:
        if not isinstance(items, list) or not items:
            self.v.add(path, "must be a non-empty list of filter objects, e.g. [{...}, {...}]")
            return MATCH_ALL
        parts = [self.filter(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(items)]
        return any_of(parts) if key == "$or" else all_of(parts)

    def _column(self, name: str, condition: object, path: str) -> Node:
        column = self._columns.get(name)
        if column is None or column.role != "metadata" or column.filter_type not in OPERATORS:
            if column is None and name.startswith("$"):
                why = f'unknown operator {name!r}; use "$or" or "$and" with a list of filters'
            elif column is None:
                why = f"no metadata column {name!r} in this vector table"
            elif column.role == "embedding":
                why = f"{name!r} is an embedding column and has no filter type"
            else:
                why = f"{name!r} has no filter type"
            self.v.add(path, f"{why}; filterable columns: {self._filterable()}")
            return MATCH_ALL
        ftype = column.filter_type
        assert ftype is not None
        if isinstance(condition, Mapping):
            if not condition:
                self.v.add(path, f"needs at least one operator: {', '.join(OPERATORS[ftype])}")
                return MATCH_ALL
            return all_of(
                [self._operator(name, ftype, op, value, f"{path}.{op}") for op, value in condition.items()]
            )
        if isinstance(condition, list):
            self.v.add(path, 'a list is not a value; use {"in": [...]} to match any of several values')
            return MATCH_ALL
        return self._operator(name, ftype, "eq", condition, path)

    def _filterable(self) -> str:
        cols = [
            f"{c.name} ({c.filter_type})"
            for c in self._columns.values()
            if c.role == "metadata" and c.filter_type in OPERATORS
        ]
        return ", ".join(cols) if cols else "none"

    # -- one condition -------------------------------------------------------------------

    def _operator(self, column: str, ftype: str, op: str, value: object, path: str) -> Node:
        self._conditions += 1
        if self._conditions == MAX_CONDITIONS + 1:
            self.v.add("filters", f"has more than {MAX_CONDITIONS} conditions")
        op = _ALIASES.get(op, op)
        allowed = OPERATORS[ftype]
        if op not in allowed:
            what = (
                f"{op!r} does not apply to {ftype} column {column!r}"
                if op in _ORDERED
                else f"unknown operator {op!r}"
            )
            self.v.add(path, f"{what}; allowed for {ftype}: {', '.join(allowed)}")
            return MATCH_ALL
        if op == "exists":
            if not isinstance(value, bool):
                self.v.add(path, "must be true or false")
                return MATCH_ALL
            return Exists(column, value)
        if op in ("in", "nin"):
            if not isinstance(value, list) or not value:
                self.v.add(path, f"must be a non-empty list of values, each {_WHAT[ftype]}")
                return MATCH_ALL
            if len(value) > MAX_LIST:
                self.v.add(path, f"has {len(value)} values; at most {MAX_LIST}")
                return MATCH_ALL
            values = [self._value(ftype, item, f"{path}[{i}]") for i, item in enumerate(value)]
            typed = tuple(v for v in values if v is not None)
            if len(typed) != len(values):
                return MATCH_ALL
            return AnyOf(column, ftype, typed, negated=op == "nin")
        converted = self._value(ftype, value, path)
        if converted is None:
            return MATCH_ALL
        return Compare(column, ftype, op, converted)

    def _value(self, ftype: str, value: object, path: str) -> Scalar | None:
        """The value typed for the column, or None after recording why it does not fit."""
        bad = f"must be {_WHAT[ftype]}"
        if value is None:
            self.v.add(path, 'null is not a value; use {"exists": false} to match rows without one')
            return None
        if ftype == "keyword":
            if isinstance(value, str) and "\x00" not in value:
                return value
        elif ftype == "boolean":
            if isinstance(value, bool):
                return value
        elif ftype in ("integer", "float"):
            if isinstance(value, int | float) and not isinstance(value, bool):
                number = float(value)
                if not math.isfinite(number):
                    self.v.add(path, "must be a finite number")
                    return None
                if ftype == "float":
                    return number
                if isinstance(value, int) or number.is_integer():
                    integer = int(value)
                    if -MAX_SAFE_INTEGER <= integer <= MAX_SAFE_INTEGER:
                        return integer
                    self.v.add(
                        path,
                        f"must be an integer between -{MAX_SAFE_INTEGER} and {MAX_SAFE_INTEGER} (2^53-1): "
                        "larger JSON numbers lose precision",
                    )
                    return None
                bad = f"must be an integer (got {value!r}): the column's filter type is integer"
        elif ftype == "datetime" and isinstance(value, str):
            parsed = parse_datetime(value)
            if parsed is not None:
                try:
                    # Typed as UTC: an offset can push year 1 or 9999 out of range
                    # (0001-01-01T00:00:00+14:00), which no store could compare.
                    return parsed.astimezone(dt.UTC)
                except OverflowError:
                    bad = "must fall between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z in UTC"
        self.v.add(path, bad)
        return None


def parse_datetime(value: str) -> dt.datetime | None:
    """RFC 3339 / ISO 8601 (a date alone is its midnight); without an offset, UTC."""
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def parse_filters(
    filters: Mapping[str, Any] | None, columns: Sequence[ColumnSpec], *, field_name: str = "filters"
) -> Node:
    """The filter as a typed tree (`MATCH_ALL` for none), or a `validation_error` listing every
    problem. `columns` are the vector table's mapped columns."""
    if not filters:
        return MATCH_ALL
    parser = _Parser(columns)
    node = parser.filter(filters, field_name, 0)
    parser.v.raise_if_any()
    return node
