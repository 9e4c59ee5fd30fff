"""SQL identifier quoting. User identifiers are validated against the catalog first and
then always quoted; values are always bound parameters, never formatted into SQL."""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """Quote an SQL identifier the way PostgreSQL's quote_ident() does (always quoting)."""
    if not name or "\x00" in name:
        raise ValueError("an SQL identifier must be non-empty and must not contain NUL")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote an SQL string literal the way PostgreSQL's quote_literal() does."""
    if "\x00" in value:
        raise ValueError("an SQL string literal must not contain NUL")
    quoted = "'" + value.replace("'", "''") + "'"
    if "\\" in value:
        return "E" + quoted.replace("\\", "\\\\")
    return quoted


def qualified(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"
