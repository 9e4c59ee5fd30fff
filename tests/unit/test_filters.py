"""The filter parser and its SQL rendering: tree shapes, SQL, bound parameters, the indexed
expressions, every error.

tests/oracle.py holds independent brute-force readings of the same language (of the raw filter
and of the parsed tree); tests/integration/test_query.py checks, with random filters over
random rows, that PostgreSQL running the rendered SQL agrees with both (filters are never
bypassed).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import pytest
from embedd_server.domain.errors import ApiError
from embedd_server.domain.filters import MATCH_ALL, And, AnyOf, Compare, Exists, Or, parse_filters
from embedd_server.domain.vector_tables import ColumnSpec
from embedd_server.sinks.pgvector import metadata_expression
from embedd_server.sinks.pgvector_filters import to_sql

from tests.oracle import evaluate, matches

COLUMNS = (
    ColumnSpec("name", "embedding", 1, "Product: "),
    ColumnSpec("category", "metadata", filter_type="keyword"),
    ColumnSpec("qty", "metadata", filter_type="integer"),
    ColumnSpec("price", "metadata", filter_type="float"),
    ColumnSpec("in_stock", "metadata", filter_type="boolean"),
    ColumnSpec("updated_at", "metadata", filter_type="datetime"),
    ColumnSpec("tags", "metadata", filter_type=None),
)
TYPES = {c.name: c.filter_type for c in COLUMNS if c.role == "metadata" and c.filter_type}


def compile_(filters: Mapping[str, Any] | None, first: int = 1) -> tuple[str, list[object]]:
    out = to_sql(parse_filters(filters, COLUMNS), first_param=first)
    return out.sql, out.params


# -- the tree -------------------------------------------------------------------------------------


def test_tree_is_typed_and_flat() -> None:
    assert parse_filters(None, COLUMNS) == MATCH_ALL
    assert parse_filters({"category": "bags"}, COLUMNS) == Compare("category", "keyword", "eq", "bags")
    assert parse_filters({"price": {"gte": 5, "lt": 9}, "qty": {"in": [1.0, 2]}}, COLUMNS) == And(
        (
            Compare("price", "float", "gte", 5.0),
            Compare("price", "float", "lt", 9.0),
            AnyOf("qty", "integer", (1, 2)),
        )
    )
    tree = parse_filters(
        {"$or": [{"in_stock": {"neq": True}}, {"updated_at": {"exists": False}}], "qty": {"nin": [3]}},
        COLUMNS,
    )
    assert tree == And(
        (
            Or((Compare("in_stock", "boolean", "ne", True), Exists("updated_at", False))),
            AnyOf("qty", "integer", (3,), negated=True),
        )
    )
    when = parse_filters({"updated_at": {"gt": "2026-03-13T12:00:00+02:00"}}, COLUMNS)
    assert isinstance(when, Compare) and when.value == dt.datetime(2026, 3, 13, 10, tzinfo=dt.UTC)
    # Nested groups flatten; an alternative that matches everything makes the OR match-all.
    assert parse_filters({"$and": [{"$and": [{"category": "a"}]}]}, COLUMNS) == Compare(
        "category", "keyword", "eq", "a"
    )
    assert parse_filters({"$or": [{}, {"category": "x"}]}, COLUMNS) == MATCH_ALL


def test_tree_oracle_reads_like_the_raw_oracle() -> None:
    row = {"category": "bags", "qty": 3, "price": 9.5, "in_stock": None}
    for filters in (
        {"category": "bags", "price": {"lt": 10}},
        {"in_stock": {"ne": True}},
        {"in_stock": {"eq": False}},
        {"$or": [{"qty": {"gt": 5}}, {"category": {"nin": ["x"]}}]},
        {"updated_at": {"exists": True}},
        {"qty": {"in": [3, 4]}, "$and": [{"price": {"gte": 9.5}}]},
    ):
        assert matches(parse_filters(filters, COLUMNS), row) == evaluate(filters, row, TYPES), filters


# -- SQL ------------------------------------------------------------------------------------------


def test_no_filter_is_true() -> None:
    assert compile_(None) == ("TRUE", [])
    assert compile_({}) == ("TRUE", [])
    assert to_sql(parse_filters({}, COLUMNS)).is_empty


def test_seed_filter_compares_the_indexed_expressions_with_bound_values() -> None:
    sql, params = compile_({"in_stock": {"eq": True}, "price": {"lte": 150}}, first=2)
    in_stock = metadata_expression(COLUMNS[4])
    price = metadata_expression(COLUMNS[3])
    assert sql == f"(({in_stock} = $2::boolean) AND ({price} <= $3::float8))"
    assert params == [True, 150.0]
    assert "150" not in sql and "true" not in sql.lower().replace("$2::boolean", "")


def test_every_operator_per_type() -> None:
    kw = metadata_expression(COLUMNS[1])
    qty = metadata_expression(COLUMNS[2])
    cases: list[tuple[dict[str, Any], str, list[object]]] = [
        ({"category": "bags"}, f"({kw} = $1::text)", ["bags"]),
        ({"category": {"ne": "bags"}}, f"({kw} IS DISTINCT FROM $1::text)", ["bags"]),
        ({"category": {"neq": "bags"}}, f"({kw} IS DISTINCT FROM $1::text)", ["bags"]),
        ({"category": {"in": ["a", "b"]}}, f"({kw} = ANY($1::text[]))", [["a", "b"]]),
        ({"category": {"nin": ["a"]}}, f"({kw} IS NULL OR {kw} <> ALL($1::text[]))", [["a"]]),
        ({"category": {"exists": True}}, "((metadata->>'category') IS NOT NULL)", []),
        ({"category": {"exists": False}}, "((metadata->>'category') IS NULL)", []),
        ({"qty": {"gt": 1.0}}, f"({qty} > $1::bigint)", [1]),
        ({"qty": {"gte": 2, "lt": 9}}, f"(({qty} >= $1::bigint) AND ({qty} < $2::bigint))", [2, 9]),
        ({"qty": {"in": [1.0, 2.0]}}, f"({qty} = ANY($1::bigint[]))", [[1, 2]]),
    ]
    for filters, sql, params in cases:
        assert compile_(filters) == (sql, params), filters
    sql, params = compile_({"updated_at": {"gte": "2026-03-13T10:00:00Z"}})
    assert sql == "(((metadata->>'updated_at')::timestamptz) >= $1::timestamptz)"
    assert params == [dt.datetime(2026, 3, 13, 10, tzinfo=dt.UTC)]
    sql, params = compile_({"updated_at": {"lt": "2026-03-13"}})
    assert params == [dt.datetime(2026, 3, 13, tzinfo=dt.UTC)]
    sql, params = compile_({"price": {"gt": 10, "lte": 99.5}, "in_stock": False})
    assert params == [10.0, 99.5, False]


def test_or_and_nest_and_number_parameters_in_order() -> None:
    sql, params = compile_(
        {
            "$or": [{"category": "bags"}, {"price": {"lt": 20}, "$and": [{"qty": 1}, {"in_stock": True}]}],
            "qty": {"exists": True},
        },
        first=5,
    )
    assert params == ["bags", 20.0, 1, True]
    assert sql.count(" OR ") == 1 and "$5::text" in sql and "$8::boolean" in sql
    assert sql.index("$5") < sql.index("$6") < sql.index("$7") < sql.index("$8")
    # An empty alternative matches every row: the OR is no filter at all.
    assert compile_({"$or": [{}, {"category": "x"}]}) == ("TRUE", [])


def test_names_are_literals_never_identifiers_or_text() -> None:
    cols = (ColumnSpec("it's", "metadata", filter_type="keyword"),)
    out = to_sql(parse_filters({"it's": "x'; DROP TABLE t; --"}, cols))
    assert out.sql == "((metadata->>'it''s') = $1::text)"
    assert out.params == ["x'; DROP TABLE t; --"]


# -- errors: 400 naming the field path and what is allowed -----------------------------------------

ERRORS: list[tuple[Any, str, str]] = [
    ({"colour": "red"}, "filters.colour", "no metadata column 'colour'"),
    ({"name": "x"}, "filters.name", "embedding column"),
    ({"tags": "x"}, "filters.tags", "has no filter type"),
    ({"in_stock": {"gt": True}}, "filters.in_stock.gt", "allowed for boolean: eq, ne, exists"),
    ({"category": {"lt": "m"}}, "filters.category.lt", "allowed for keyword: eq, ne, in, nin, exists"),
    ({"price": {"between": [1, 2]}}, "filters.price.between", "unknown operator 'between'"),
    ({"price": {"$lte": 5}}, "filters.price.$lte", "unknown operator"),
    ({"price": {"gt": "10"}}, "filters.price.gt", "must be a number"),
    ({"price": {"gt": True}}, "filters.price.gt", "must be a number"),
    ({"price": {"gt": float("nan")}}, "filters.price.gt", "finite"),
    ({"qty": {"eq": 1.5}}, "filters.qty.eq", "must be an integer"),
    ({"qty": 1e30}, "filters.qty", "2^53-1"),
    ({"qty": {"gt": 9007199254740994}}, "filters.qty.gt", "lose precision"),
    ({"qty": {"in": [1, -(2**53)]}}, "filters.qty.in[1]", "2^53-1"),
    ({"updated_at": {"gt": "0001-01-01T00:00:00+14:00"}}, "filters.updated_at.gt", "in UTC"),
    ({"updated_at": {"lt": "9999-12-31T23:59:59-14:00"}}, "filters.updated_at.lt", "in UTC"),
    ({"updated_at": {"in": ["9999-12-31T23:00:00-01:00"]}}, "filters.updated_at.in[0]", "in UTC"),
    ({"category": 5}, "filters.category", "must be a string"),
    ({"in_stock": "true"}, "filters.in_stock", "must be true or false"),
    ({"updated_at": {"gt": "yesterday"}}, "filters.updated_at.gt", "RFC 3339"),
    ({"updated_at": {"gt": 1700000000}}, "filters.updated_at.gt", "RFC 3339"),
    ({"category": {"in": []}}, "filters.category.in", "non-empty list"),
    ({"category": {"in": "bags"}}, "filters.category.in", "non-empty list"),
    ({"category": {"in": ["a", 1]}}, "filters.category.in[1]", "must be a string"),
    ({"category": {"exists": "yes"}}, "filters.category.exists", "true or false"),
    ({"category": None}, "filters.category", "exists"),
    ({"category": ["a", "b"]}, "filters.category", '{"in": [...]}'),
    ({"category": {}}, "filters.category", "at least one operator"),
    ({"$or": {"category": "a"}}, "filters.$or", "non-empty list"),
    ({"$or": []}, "filters.$or", "non-empty list"),
    ({"$or": ["bags"]}, "filters.$or[0]", "must be an object"),
    ({"$or": [{"category": "a"}, {"colour": "x"}]}, "filters.$or[1].colour", "no metadata column"),
    ({"$nor": [{"category": "a"}]}, "filters.$nor", "unknown operator '$nor'"),
    ({"$and": [{"$or": [{"qty": {"lt": "x"}}]}]}, "filters.$and[0].$or[0].qty.lt", "must be an integer"),
]


@pytest.mark.parametrize(("filters", "field", "text"), ERRORS, ids=[e[1] + ":" + e[2] for e in ERRORS])
def test_invalid_filters_name_the_field(filters: Any, field: str, text: str) -> None:
    with pytest.raises(ApiError) as info:
        compile_(filters)
    err = info.value
    assert err.code == "validation_error" and err.kind.value == "invalid"
    fields = [v.field for v in err.violations]
    assert field in fields, (fields, err.message)
    description = next(v.description for v in err.violations if v.field == field)
    assert text in description, description


def test_unknown_column_lists_the_filterable_ones() -> None:
    with pytest.raises(ApiError) as info:
        compile_({"colour": "red"})
    assert (
        "filterable columns: category (keyword), qty (integer), price (float), in_stock (boolean),"
        " updated_at (datetime)" in info.value.message
    )


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ApiError) as info:
        compile_({"colour": 1, "in_stock": {"lt": 1}, "price": "x"})
    assert [v.field for v in info.value.violations] == [
        "filters.colour",
        "filters.in_stock.lt",
        "filters.price",
    ]


def test_edge_values_that_fit_are_bound_in_utc() -> None:
    """The largest safe integers and the extreme timestamps that stay in range after the UTC
    conversion compile; datetimes are bound as UTC (what PostgreSQL's timestamptz stores)."""
    _, params = compile_({"qty": {"gte": -(2**53 - 1), "lte": 2**53 - 1}})
    assert params == [-(2**53 - 1), 2**53 - 1]
    _, params = compile_(
        {"updated_at": {"gt": "0001-01-01T00:00:00-14:00", "lt": "9999-12-31T23:59:59+14:00"}}
    )
    assert params == [
        dt.datetime(1, 1, 1, 14, 0, tzinfo=dt.UTC),
        dt.datetime(9999, 12, 31, 9, 59, 59, tzinfo=dt.UTC),
    ]
    assert all(p.utcoffset() == dt.timedelta(0) for p in params)  # type: ignore[attr-defined]


def test_nesting_and_size_are_bounded() -> None:
    deep: dict[str, Any] = {"category": "a"}
    for _ in range(10):
        deep = {"$or": [deep]}
    with pytest.raises(ApiError, match="nests too deep"):
        compile_(deep)
    with pytest.raises(ApiError, match="at most 1000"):
        compile_({"category": {"in": [str(i) for i in range(1001)]}})


def test_evaluator_reads_the_language_the_same_way() -> None:
    row = {"category": "bags", "qty": 3, "price": 9.5, "in_stock": None}
    assert evaluate({"category": "bags", "price": {"lt": 10}}, row, TYPES)
    assert evaluate({"in_stock": {"ne": True}}, row, TYPES)  # missing matches ne
    assert not evaluate({"in_stock": {"eq": False}}, row, TYPES)
    assert evaluate({"$or": [{"qty": {"gt": 5}}, {"category": {"nin": ["x"]}}]}, row, TYPES)
    assert not evaluate({"updated_at": {"exists": True}}, row, TYPES)
