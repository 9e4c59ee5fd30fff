"""Bring your own vectors, the pure parts: the catalog check of an import, the SQL that reads
imported vectors, when a fill may use them, and how a chunk's vectors are put together."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from embedd_server.domain.errors import ApiError
from embedd_server.domain.vector_tables import ColumnSpec, ImportSpec, VectorTableSpec, import_applies
from embedd_server.engine.backfill import EMPTY_TEXT, with_imported
from embedd_server.engine.imports import check_import, vector_size
from embedd_server.providers.base import EmbedResult
from embedd_server.sinks.base import SourceRow
from embedd_server.sources.postgres import SourceColumn, SourceTable
from embedd_server.sources.queries import keyset_read
from embedd_server.sources.reader import imported_vector

SPEC = VectorTableSpec(
    "public", "items", "id", "local-lexical-384", 4, (ColumnSpec("body", "embedding", 1),), pk_type="bigint"
)


def _table(
    *columns: tuple[str, str], readable: bool = True, unique: tuple[str, ...] = ("id",)
) -> SourceTable:
    return SourceTable(
        "public",
        "items",
        1,
        True,
        {name: SourceColumn(name, sql_type, False, readable, True) for name, sql_type in columns},
        frozenset(unique),
    )


HOLDER = _table(
    ("id", "bigint"), ("body", "text"), ("vec", "vector(4)"), ("half", "halfvec(4)"), ("src", "text")
)


def _check(imp: ImportSpec, holder: SourceTable | None = HOLDER) -> ImportSpec:
    return check_import(SPEC, imp, holder, "app")


def _refused(imp: ImportSpec, holder: SourceTable | None = HOLDER) -> ApiError:
    with pytest.raises(ApiError) as err:
        _check(imp, holder)
    return err.value


def test_vector_sizes_as_the_catalog_spells_them() -> None:
    assert vector_size("vector(384)") == 384 and vector_size("halfvec(3072)") == 3072
    assert vector_size("extensions.vector(8)") == 8  # the extension outside the search path
    assert vector_size("vector") is None and vector_size("real[]") is None and vector_size("text") is None


def test_a_fitting_import_is_completed_from_the_catalog() -> None:
    done = _check(ImportSpec("half", "", 0, text_column="src"))
    assert (done.embedding_model, done.embedding_dimensions, done.key_type) == (
        "local-lexical-384",
        4,
        "bigint",
    )
    assert done.key_column is None  # the source table's own key
    other = _table(("item_id", "integer"), ("vec", "vector(4)"), unique=("item_id",))
    separate = _check(ImportSpec("vec", "", 4, "public", "vectors", "item_id"), other)
    assert (separate.key_column, separate.key_type) == ("item_id", "integer")


@pytest.mark.parametrize(
    ("imp", "code", "field"),
    [
        (ImportSpec("body", "", 0), "import_column_not_vector", "embedding_import.column"),
        (ImportSpec("vec", "", 8), "import_dimensions_mismatch", "embedding_import.embedding_dimensions"),
        (
            ImportSpec("vec", "text-embedding-3-small", 0),
            "import_model_mismatch",
            "embedding_import.embedding_model",
        ),
        (ImportSpec("nope", "", 0), "validation_error", "embedding_import.column"),
        (ImportSpec("vec", "", 0, text_column="vec"), "validation_error", "embedding_import.text_column"),
        (ImportSpec("vec", "", 0, "public", "v", "body"), "validation_error", "embedding_import.key_column"),
    ],
)
def test_misfits_name_their_field_and_code(imp: ImportSpec, code: str, field: str) -> None:
    err = _refused(imp)
    assert err.code == code and [v.field for v in err.violations] == [field], err


def test_a_column_of_another_size_says_both_sizes() -> None:
    err = _refused(ImportSpec("vec", "", 0), _table(("id", "bigint"), ("vec", "vector(3)")))
    assert err.code == "import_dimensions_mismatch"
    assert "3-dimension" in err.message and "embedding_dimensions 4" in err.message


def test_unreadable_or_missing_tables_are_403_with_the_grant() -> None:
    err = _refused(ImportSpec("vec", "", 0), _table(("id", "bigint"), ("vec", "vector(4)"), readable=False))
    assert err.code == "source_table_access_denied" and 'GRANT SELECT ("id", "vec")' in err.message
    err = _refused(ImportSpec("vec", "", 0, "public", "gone", "id"), None)
    assert err.code == "source_table_access_denied" and '"public"."gone"' in err.message


def test_the_read_joins_quoted_names_and_checks_the_text() -> None:
    imp = ImportSpec(
        'v"ec', "m", 4, "other", "Vectors", "Item Id", text_column="made from", key_type="integer"
    )
    sql = keyset_read(dataclasses.replace(SPEC, embedding_import=imp), imported=True).sql
    assert 'LEFT JOIN "other"."Vectors" i ON i."Item Id"::text = s."id"::text' in sql  # types differ
    assert 'i."v""ec"::real[] END AS imported_vector' in sql
    assert 'i."made from" = concat_ws(' in sql and 'i."made from" = md5(concat_ws(' in sql
    same_type = dataclasses.replace(imp, key_type="bigint", text_column=None)
    sql = keyset_read(dataclasses.replace(SPEC, embedding_import=same_type), imported=True).sql
    assert 'ON i."Item Id" = s."id"' in sql and "md5(concat_ws" not in sql.split("row_hash")[1]
    assert "imported_vector" not in keyset_read(SPEC).sql


def test_imported_vectors_are_normalised_or_refused() -> None:
    vector = imported_vector([3.0, 0.0, 4.0, 0.0], 4)
    assert vector is not None and vector.dtype == np.float32
    np.testing.assert_allclose(vector, [0.6, 0.0, 0.8, 0.0])
    assert imported_vector(None, 4) is None
    assert imported_vector([1.0, 2.0], 4) is None  # another size
    assert imported_vector([0.0] * 4, 4) is None  # cosine has no direction for it
    assert imported_vector([float("nan"), 1.0, 0.0, 0.0], 4) is None


def test_only_what_can_be_checked_is_trusted_after_the_first_fill() -> None:
    trusted = dataclasses.replace(SPEC, embedding_import=ImportSpec("vec", "local-lexical-384", 4))
    checked = dataclasses.replace(
        trusted, embedding_import=ImportSpec("vec", "local-lexical-384", 4, text_column="t")
    )
    assert import_applies(trusted, first_fill=True) and not import_applies(trusted, first_fill=False)
    assert import_applies(checked, first_fill=False)
    assert not import_applies(dataclasses.replace(checked, embedding_model="other"), first_fill=True)
    assert not import_applies(dataclasses.replace(checked, embedding_dimensions=8), first_fill=True)
    assert not import_applies(SPEC, first_fill=True)


def test_spec_with_an_import_survives_the_control_plane() -> None:
    spec = dataclasses.replace(
        SPEC, embedding_import=ImportSpec("vec", "m", 4, "s", "t", "k"), embedding_strategy="batch"
    )
    assert VectorTableSpec.from_json(spec.to_json()) == spec


def _row(pk: str, text: str | None, imported: list[float] | None = None) -> SourceRow:
    vector = None if imported is None else np.asarray(imported, dtype=np.float32)
    return SourceRow(pk, text, "{}", "h" * 64, imported=vector)


def test_a_chunk_keeps_imported_vectors_and_embeds_the_rest_in_order() -> None:
    rows = [_row("1", "a", [1, 0, 0, 0]), _row("2", "b"), _row("3", None, [0, 1, 0, 0]), _row("4", "d")]
    # the provider saw the rows with text and without a vector: 2 and 4; it rejected 4
    result = EmbedResult(np.asarray([[0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32), failed={1: "rejected"})
    batch, failures = with_imported(rows, result)
    assert [r.pk for r in batch.rows] == ["1", "2"]
    np.testing.assert_array_equal(batch.vectors, [[1, 0, 0, 0], [0, 0, 1, 0]])
    assert failures == [("3", EMPTY_TEXT), ("4", "rejected")]  # no text: no vector either
    every = [_row("1", "a", [1, 0, 0, 0]), _row("2", "b", [0, 1, 0, 0])]
    batch, failures = with_imported(every, None)
    assert [r.pk for r in batch.rows] == ["1", "2"] and failures == []
