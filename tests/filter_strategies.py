"""Random filters over random rows (hypothesis strategies), shared by every store's
"filters are never bypassed" property test: the store's answer must equal the oracle's
(tests/oracle.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from embedd_server.domain.vector_tables import ColumnSpec
from hypothesis import strategies as st

PROP_COLUMNS = (
    ColumnSpec("k", "metadata", filter_type="keyword"),
    ColumnSpec("i", "metadata", filter_type="integer"),
    ColumnSpec("f", "metadata", filter_type="float"),
    ColumnSpec("b", "metadata", filter_type="boolean"),
    ColumnSpec("t", "metadata", filter_type="datetime"),
)
PROP_TYPES = {c.name: c.filter_type or "" for c in PROP_COLUMNS}
_INSTANTS = [dt.datetime(2026, 3, 13, h, tzinfo=dt.UTC) for h in (0, 9, 10, 23)]
DOMAIN: dict[str, list[Any]] = {
    "k": ["a", "b", "B", "é", "it's", ""],
    "i": [-3, 0, 1, 2, 7],
    "f": [-1.5, 0.0, 2.0, 2.5, 100.25],
    "b": [True, False],
    "t": [d.isoformat() for d in _INSTANTS],
}
# Filter values of datetime columns in several spellings of the same instants.
T_VALUES = [
    *(d.isoformat() for d in _INSTANTS),
    *(d.strftime("%Y-%m-%dT%H:%M:%SZ") for d in _INSTANTS),
    "2026-03-13",
    "2026-03-13T11:00:00+01:00",
]
OPS = {
    "keyword": ["eq", "ne", "neq", "in", "nin", "exists"],
    "integer": ["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "exists"],
    "float": ["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "exists"],
    "boolean": ["eq", "ne", "exists"],
    "datetime": ["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "exists"],
}


def _value(col: str) -> st.SearchStrategy[Any]:
    if col == "t":
        return st.sampled_from(T_VALUES)
    if col == "i":  # Struct numbers are doubles
        return st.sampled_from(DOMAIN["i"]).map(float)
    return st.sampled_from(DOMAIN[col])


@st.composite
def _condition(draw: st.DrawFn, col: str) -> Any:
    if draw(st.booleans()):
        return draw(_value(col))
    ops = draw(st.lists(st.sampled_from(OPS[PROP_TYPES[col]]), min_size=1, max_size=2, unique=True))
    out: dict[str, Any] = {}
    for op in ops:
        if op == "exists":
            out[op] = draw(st.booleans())
        elif op in ("in", "nin"):
            out[op] = draw(st.lists(_value(col), min_size=1, max_size=3))
        else:
            out[op] = draw(_value(col))
    return out


def random_filters() -> st.SearchStrategy[dict[str, Any]]:
    leaf = st.sampled_from(list(PROP_TYPES)).flatmap(lambda c: _condition(c).map(lambda cond: {c: cond}))
    return st.recursive(
        st.lists(leaf, min_size=0, max_size=3).map(lambda parts: {k: v for p in parts for k, v in p.items()}),
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=3).map(lambda fs: {"$or": fs}),
            st.lists(inner, min_size=1, max_size=2).map(lambda fs: {"$and": fs}),
            st.tuples(inner, inner).map(lambda p: {**p[0], **p[1]}),
        ),
        max_leaves=6,
    )


ROW = st.fixed_dictionaries(
    {},
    optional={c: st.one_of(st.none(), st.sampled_from(v)) for c, v in DOMAIN.items()},
)
