"""Vector table specs, physical naming and type rules (pure: no I/O)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from embedd_server.domain.errors import FieldViolation

# PostgreSQL cuts identifiers at 63 bytes; the live name must leave room for `_swap`.
MAX_IDENT = 63
_SUFFIX_ROOM = len("_swap")
_PREFIX = "embedd_vt_"
# HNSW on `vector` allows at most 2000 dimensions; above, index a halfvec expression.
HNSW_MAX_VECTOR_DIMS = 2000
HNSW_MAX_HALFVEC_DIMS = 4000
# From here a new table's index is over halfvec (docs/indexes.md): at 1,536 dimensions it had
# the vector index's recall at half the size and built faster; at 384 the vector index
# recalled more (0.997-0.998 vs 0.985-0.991) for no clear gain in build time. Not measured
# between the two.
HALFVEC_MIN_DIMS = 1024

FILTER_TYPES = ("keyword", "integer", "float", "boolean", "datetime")
DEFAULT_SYNC_INTERVAL_S = 60
MAX_ORDINAL = 1000


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    name: str
    role: str  # "embedding" | "metadata"
    ordinal: int | None = None
    name_prefix: str | None = None
    filter_type: str | None = None


EMBEDDING_STRATEGIES = ("standard", "batch")


@dataclass(frozen=True, slots=True)
class ImportSpec:
    """Where vectors made before already are (docs/import.md): `column` of the source table,
    or of the table `table_schema.table` keyed by `key_column`. The catalog check fills
    `key_type`."""

    column: str
    embedding_model: str
    embedding_dimensions: int
    table_schema: str | None = None
    table: str | None = None
    key_column: str | None = None
    # The text (or its md5) each vector was made from; None: the declaration is trusted.
    text_column: str | None = None
    # SQL type of `key_column` (a separate table's), to join on the key's own type.
    key_type: str = ""

    @property
    def separate(self) -> bool:
        return self.table is not None


def import_applies(spec: VectorTableSpec, *, first_fill: bool) -> bool:
    """Whether a fill of `spec` takes vectors from its import (docs/import.md): the vectors
    were made with the model and size `spec` embeds with, and either each is checked against
    its row's text (`text_column`) or this is the table's first fill - the moment the user's
    declaration is about. Later fills (re-backfills, a second backfill) cannot know the rows
    kept their text since, so they trust only what they can check."""
    imp = spec.embedding_import
    if imp is None:
        return False
    same_model = (
        imp.embedding_model == spec.embedding_model and imp.embedding_dimensions == spec.embedding_dimensions
    )
    return same_model and (imp.text_column is not None or first_fill)


@dataclass(frozen=True, slots=True)
class VectorTableSpec:
    """What a vector table maps, as stored in the control plane (`vector_tables.spec`)."""

    source_schema: str
    source_table: str
    primary_key_column: str
    embedding_model: str
    embedding_dimensions: int
    columns: tuple[ColumnSpec, ...]
    sync_mode: str = "batch"
    sync_interval_seconds: int = DEFAULT_SYNC_INTERVAL_S
    cursor_column: str | None = None
    target_schema: str = "public"
    # Filled from the catalog at creation: SQL type of the primary key, for keyset reads.
    pk_type: str = "text"
    extra: dict[str, Any] = field(default_factory=dict)
    # Where the vectors live: "platform" (pgvector, the user's database) or "managed" (Qdrant).
    mode: str = "platform"
    # Which generation of the store holds this spec's vectors (managed mode's collections
    # are versioned: a re-backfill builds the next one and swaps the alias to it).
    store_version: int = 1
    # Vectors to import instead of embedding (None: none), and how fills embed the rest.
    embedding_import: ImportSpec | None = None
    embedding_strategy: str = "standard"
    # Platform mode's HNSW index over `embedding::halfvec(d)` from HALFVEC_MIN_DIMS: the same
    # recall as over the vector, half the size, built faster (docs/indexes.md). Tables made
    # before it index the vector itself up to 2,000 dimensions (a spec stored without the
    # key), and keep that index through re-backfills: queries must order by the indexed
    # expression.
    hnsw_halfvec: bool = True

    @property
    def embedding_columns(self) -> list[ColumnSpec]:
        cols = [c for c in self.columns if c.role == "embedding"]
        return sorted(cols, key=lambda c: c.ordinal or 0)

    @property
    def metadata_columns(self) -> list[ColumnSpec]:
        return [c for c in self.columns if c.role == "metadata"]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["columns"] = [asdict(c) for c in self.columns]
        if not self.hnsw_halfvec:
            del data["hnsw_halfvec"]  # as such specs were stored: their swap markers stay
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VectorTableSpec:
        data = dict(data)
        data["columns"] = tuple(ColumnSpec(**c) for c in data["columns"])
        data.setdefault("hnsw_halfvec", False)
        if data.get("embedding_import") is not None:
            data["embedding_import"] = ImportSpec(**data["embedding_import"])
        return cls(**data)


def swap_marker(spec: VectorTableSpec) -> str:
    """What a re-backfill's swap writes on the table it swaps in (a table comment, in the
    swap's transaction): a resumed re-backfill that finds it knows the swap committed, even if
    its holder died before the control plane recorded it."""
    digest = hashlib.sha256(json.dumps(spec.to_json(), sort_keys=True).encode()).hexdigest()[:16]
    return f"embedd swap {digest}"


def slug(name: str, max_len: int) -> str:
    """`products-search` -> `products_search`: lowercase ASCII letters, digits and `_`."""
    text = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    text = text[:max_len].rstrip("_")
    return text or "table"


def vector_ref(vector_table_id: str, name: str) -> str:
    """`embedd_vt_<8 hex>_<slug>`, short enough that `<ref>_swap` and `<ref>_old` fit 63 bytes."""
    digest = hashlib.sha256(vector_table_id.encode()).hexdigest()[:8]
    head = f"{_PREFIX}{digest}_"
    return head + slug(name, MAX_IDENT - _SUFFIX_ROOM - len(head))


def index_name(ref: str, kind: str) -> str:
    """Index names built from the ref's fixed-length head (`embedd_vt_<hex>`), so they fit."""
    head = ref[: len(_PREFIX) + 8]
    return f"{head}_{kind}"[:MAX_IDENT]


def split_table_name(value: str) -> tuple[str, str] | None:
    """`schema.table` or `table` (schema `public`); quoted identifiers are not accepted."""
    parts = value.strip().split(".")
    if len(parts) == 1:
        parts = ["public", parts[0]]
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


# --- SQL types and filter types ------------------------------------------------------------

_TEXT_TYPES = {"text", "character varying", "character", "citext", "uuid", "name", "bpchar", "varchar"}
_INT_TYPES = {"smallint", "integer", "bigint"}
_FLOAT_TYPES = {"real", "double precision", "numeric"} | _INT_TYPES
_BOOL_TYPES = {"boolean"}
_TIME_TYPES = {"timestamp with time zone", "timestamp without time zone", "date"}


def base_type(sql_type: str) -> str:
    """`character varying(20)` -> `character varying`; `numeric(10,2)` -> `numeric`."""
    return re.sub(r"\(.*\)", "", sql_type).strip()


def allowed_filter_types(sql_type: str, is_enum: bool = False) -> list[str]:
    """Filter types that fit a column of this SQL type (`format_type` spelling)."""
    t = base_type(sql_type)
    allowed = []
    if t in _TEXT_TYPES or is_enum:
        allowed.append("keyword")
    if t in _INT_TYPES:
        allowed.append("integer")
    if t in _FLOAT_TYPES:
        allowed.append("float")
    if t in _BOOL_TYPES:
        allowed.append("boolean")
    if t in _TIME_TYPES:
        allowed.append("datetime")
    return allowed


def default_filter_type(sql_type: str, is_enum: bool = False) -> str | None:
    allowed = allowed_filter_types(sql_type, is_enum)
    return allowed[0] if allowed else None


def order_embedding_columns(columns: Sequence[ColumnSpec]) -> tuple[list[ColumnSpec], list[FieldViolation]]:
    """Gives every embedding column its ordinal (the order their texts are joined in), with
    the problems found (paths `columns[i].ordinal`, in request order). The rule: explicit
    ordinals are honoured as given; columns without one come after all of those, in the
    order given (they take the next ordinals). Two columns with one ordinal are an error
    naming both."""
    problems: list[FieldViolation] = []
    owner: dict[int, str] = {}
    for i, col in enumerate(columns):
        if col.role != "embedding" or col.ordinal is None:
            continue
        if not 1 <= col.ordinal <= MAX_ORDINAL:
            problems.append(FieldViolation(f"columns[{i}].ordinal", f"must be between 1 and {MAX_ORDINAL}"))
        elif col.ordinal in owner:
            problems.append(
                FieldViolation(
                    f"columns[{i}].ordinal",
                    f"columns {owner[col.ordinal]!r} and {col.name!r} both have ordinal {col.ordinal};"
                    " give each embedding column its own (or leave it out to follow the others)",
                )
            )
        else:
            owner[col.ordinal] = col.name
    next_ordinal = max(owner, default=0) + 1
    out: list[ColumnSpec] = []
    for col in columns:
        if col.role == "embedding" and col.ordinal is None:
            out.append(ColumnSpec(col.name, col.role, next_ordinal, col.name_prefix, None))
            next_ordinal += 1
        else:
            out.append(col)
    return out, problems
