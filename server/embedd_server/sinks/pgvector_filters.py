"""Platform mode: a parsed filter (domain.filters) as one SQL boolean expression over the
vector table's `metadata` jsonb column.

Each comparison is made on the same typed expression the btree metadata indexes cover
(`pgvector.metadata_expression`), so selective filters read only the rows they select.
Values are always bound parameters (`$n` with an explicit cast), never SQL text. Missing
values are SQL NULL (no key, or JSON null): `eq`, `in` and the comparisons never match them,
`ne` and `nin` do, as the filter language says.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from embedd_server.domain.filters import AnyOf, Compare, Exists, Node, Or, is_match_all
from embedd_server.domain.vector_tables import ColumnSpec
from embedd_server.sinks.pgvector import metadata_expression
from embedd_server.sources.sql import quote_literal

_SQL_TYPE = {
    "keyword": "text",
    "integer": "bigint",
    "float": "float8",
    "boolean": "boolean",
    "datetime": "timestamptz",
}
_COMPARE = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


@dataclass(frozen=True, slots=True)
class CompiledFilter:
    """`sql` is a boolean expression ("TRUE" for no filter) whose placeholders are
    `$first_param ..`; `params` are their values in order."""

    sql: str
    params: list[object] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return self.sql == "TRUE"


class _Renderer:
    def __init__(self, first_param: int) -> None:
        self._first = first_param
        self.params: list[object] = []

    def render(self, node: Node) -> str:
        if isinstance(node, Compare):
            return self._compare(node)
        if isinstance(node, AnyOf):
            return self._any_of(node)
        if isinstance(node, Exists):
            return f"({_raw(node.column)} IS {'NOT ' if node.present else ''}NULL)"
        if is_match_all(node):
            return "TRUE"
        joiner = " OR " if isinstance(node, Or) else " AND "
        return "(" + joiner.join(self.render(item) for item in node.items) + ")"

    def _compare(self, node: Compare) -> str:
        expr = _typed(node.column, node.ftype)
        ref = self._bind(node.value, _SQL_TYPE[node.ftype])
        if node.op == "ne":
            return f"({expr} IS DISTINCT FROM {ref})"
        return f"({expr} {_COMPARE[node.op]} {ref})"

    def _any_of(self, node: AnyOf) -> str:
        expr = _typed(node.column, node.ftype)
        ref = self._bind(list(node.values), f"{_SQL_TYPE[node.ftype]}[]")
        if node.negated:
            return f"({expr} IS NULL OR {expr} <> ALL({ref}))"
        return f"({expr} = ANY({ref}))"

    def _bind(self, value: object, sql_type: str) -> str:
        self.params.append(value)
        return f"${self._first + len(self.params) - 1}::{sql_type}"


def _raw(column: str) -> str:
    return f"(metadata->>{quote_literal(column)})"


def _typed(column: str, ftype: str) -> str:
    """The indexed expression where there is one (keyword, integer, float, boolean), else a
    plain cast (datetime casts are not immutable, so they have no index)."""
    indexed = metadata_expression(ColumnSpec(column, "metadata", filter_type=ftype))
    return indexed or f"({_raw(column)}::{_SQL_TYPE[ftype]})"


def to_sql(node: Node, *, first_param: int = 1) -> CompiledFilter:
    """`node` as SQL over `metadata`, its values bound from `$first_param` on."""
    renderer = _Renderer(first_param)
    sql = renderer.render(node)
    return CompiledFilter(sql, renderer.params)
