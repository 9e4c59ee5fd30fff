"""The metadata filter language of a query, compiled to one SQL boolean expression (pure).

A filter is a JSON object (the `filters` Struct of a query):

    {"in_stock": {"eq": true}, "price": {"lte": 150}}      keys AND together
    {"category": "outerwear"}                              a bare value means eq
    {"price": {"gte": 50, "lt": 100}}                      several operators on a key AND
    {"$or": [{"category": "bags"}, {"price": {"lt": 20}}]} OR of filters (nests; `$and` too)

Operators per filter type (DESIGN.md section 2):

    keyword   eq ne in nin exists          strings, exact and case-sensitive
    integer   eq ne gt gte lt lte in nin exists   JSON numbers without a fraction
    float     eq ne gt gte lt lte in nin exists   JSON numbers
    boolean   eq ne exists                 true / false
    datetime  eq ne gt gte lt lte in nin exists   RFC 3339 / ISO 8601 strings; no offset = UTC

`neq` is an alias of `ne`. `exists: true` matches rows whose value is present and not null
(metadata always holds every mapped column, a SQL NULL as JSON null), `exists: false` the rest.

Missing values (SQL NULL) follow MongoDB: `eq`, `in` and the comparisons never match them,
`ne` and `nin` do ("not equal to 5" includes "has no value"). Null is not a filter value:
`exists` says "has a value".

Each comparison is made on the same typed expression the btree metadata indexes cover
(`sinks.pgvector.metadata_expression`, passed in as `typed`), so selective filters read only
the rows they select. Values are always bound parameters (`$n` with an explicit cast), never
SQL text. Anything that does not fit is a `validation_error` naming the field path
(`filters.price.gt`, `filters.$or[1].category`) and what is allowed.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from embedd_server.domain.validation import Violations
from embedd_server.domain.vector_tables import ColumnSpec
from embedd_server.sources.sql import quote_literal

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
_ALIASES = {"neq": "ne"}
_SQL_TYPE = {
    "keyword": "text",
    "integer": "bigint",
    "float": "float8",
    "boolean": "boolean",
    "datetime": "timestamptz",
}
_COMPARE = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
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

TypedExpression = Callable[[ColumnSpec], str | None]


@dataclass(frozen=True, slots=True)
class CompiledFilter:
    """`sql` is a boolean expression ("TRUE" for no filter) whose placeholders are
    `$first_param ..`; `params` are their values in order."""

    sql: str
    params: list[object] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return self.sql == "TRUE"


class _Compiler:
    def __init__(self, columns: Sequence[ColumnSpec], typed: TypedExpression, first_param: int) -> None:
        self._columns = {c.name: c for c in columns}
        self._typed = typed
        self._first = first_param
        self.params: list[object] = []
        self.v = Violations()
        self._conditions = 0

    # -- structure ---------------------------------------------------------------------

    def filter(self, value: object, path: str, depth: int) -> str:
        if not isinstance(value, Mapping):
            self.v.add(path, 'must be an object of column conditions, e.g. {"category": "bags"}')
            return "TRUE"
        if depth > MAX_DEPTH:
            self.v.add(path, f"nests too deep (at most {MAX_DEPTH} levels of $or/$and)")
            return "TRUE"
        parts: list[str] = []
        for key, condition in value.items():
            key_path = f"{path}.{key}"
            if key in ("$or", "$and") and key not in self._columns:
                parts.append(self._group(key, condition, key_path, depth))
            else:
                parts.append(self._column(key, condition, key_path))
        parts = [p for p in parts if p != "TRUE"]
        if not parts:
            return "TRUE"
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def _group(self, key: str, items: object, path: str, depth: int) -> str:
        if not isinstance(items, list) or not items:
            self.v.add(path, "must be a non-empty list of filter objects, e.g. [{...}, {...}]")
            return "TRUE"
        parts = [self.filter(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(items)]
        if key == "$or":
            # An empty alternative is TRUE; kept in the SQL, as its siblings' parameters are bound.
            return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"
        parts = [p for p in parts if p != "TRUE"]
        if not parts:
            return "TRUE"
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def _column(self, name: str, condition: object, path: str) -> str:
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
            return "TRUE"
        ftype = column.filter_type
        assert ftype is not None
        if isinstance(condition, Mapping):
            if not condition:
                self.v.add(path, f"needs at least one operator: {', '.join(OPERATORS[ftype])}")
                return "TRUE"
            parts = [
                self._operator(column, ftype, op, value, f"{path}.{op}") for op, value in condition.items()
            ]
            parts = [p for p in parts if p != "TRUE"]
            if not parts:
                return "TRUE"
            return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"
        if isinstance(condition, list):
            self.v.add(path, 'a list is not a value; use {"in": [...]} to match any of several values')
            return "TRUE"
        return self._operator(column, ftype, "eq", condition, path)

    def _filterable(self) -> str:
        cols = [
            f"{c.name} ({c.filter_type})"
            for c in self._columns.values()
            if c.role == "metadata" and c.filter_type in OPERATORS
        ]
        return ", ".join(cols) if cols else "none"

    # -- one condition -------------------------------------------------------------------

    def _operator(self, column: ColumnSpec, ftype: str, op: str, value: object, path: str) -> str:
        self._conditions += 1
        if self._conditions == MAX_CONDITIONS + 1:
            self.v.add("filters", f"has more than {MAX_CONDITIONS} conditions")
        op = _ALIASES.get(op, op)
        allowed = OPERATORS[ftype]
        if op not in allowed:
            known = op in _ORDERED
            what = (
                f"{op!r} does not apply to {ftype} column {column.name!r}"
                if known
                else f"unknown operator {op!r}"
            )
            self.v.add(path, f"{what}; allowed for {ftype}: {', '.join(allowed)}")
            return "TRUE"
        raw = f"(metadata->>{quote_literal(column.name)})"
        if op == "exists":
            if not isinstance(value, bool):
                self.v.add(path, "must be true or false")
                return "TRUE"
            return f"({raw} IS {'NOT ' if value else ''}NULL)"
        expr = self._typed(column) or f"({raw}::{_SQL_TYPE[ftype]})"
        sql_type = _SQL_TYPE[ftype]
        if op in ("in", "nin"):
            if not isinstance(value, list) or not value:
                self.v.add(path, f"must be a non-empty list of values, each {_WHAT[ftype]}")
                return "TRUE"
            if len(value) > MAX_LIST:
                self.v.add(path, f"has {len(value)} values; at most {MAX_LIST}")
                return "TRUE"
            values = [self._value(ftype, item, f"{path}[{i}]") for i, item in enumerate(value)]
            if any(v is None for v in values):
                return "TRUE"
            ref = self._bind(values, f"{sql_type}[]")
            if op == "in":
                return f"({expr} = ANY({ref}))"
            return f"({expr} IS NULL OR {expr} <> ALL({ref}))"
        converted = self._value(ftype, value, path)
        if converted is None:
            return "TRUE"
        ref = self._bind(converted, sql_type)
        if op == "ne":
            return f"({expr} IS DISTINCT FROM {ref})"
        return f"({expr} {_COMPARE[op]} {ref})"

    def _bind(self, value: object, sql_type: str) -> str:
        self.params.append(value)
        return f"${self._first + len(self.params) - 1}::{sql_type}"

    def _value(self, ftype: str, value: object, path: str) -> object | None:
        """The value as the driver binds it, or None after recording why it does not fit."""
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
                    # Bound as UTC: an offset can push year 1 or 9999 out of range
                    # (0001-01-01T00:00:00+14:00), which the driver could not encode.
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


def compile_filters(
    filters: Mapping[str, Any] | None,
    columns: Sequence[ColumnSpec],
    typed: TypedExpression,
    *,
    first_param: int = 1,
    field_name: str = "filters",
) -> CompiledFilter:
    """The filter as SQL over `metadata` (the vector table's jsonb column), or a
    `validation_error` listing every problem. `columns` are the table's mapped columns;
    `typed` gives a column's indexed expression (`sinks.pgvector.metadata_expression`)."""
    if not filters:
        return CompiledFilter("TRUE")
    compiler = _Compiler(columns, typed, first_param)
    sql = compiler.filter(filters, field_name, 0)
    compiler.v.raise_if_any()
    return CompiledFilter(sql, compiler.params)
