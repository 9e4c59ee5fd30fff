"""Request validation rules shared by the servicers. Each failure names its field."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import json
import re
from dataclasses import dataclass
from urllib.parse import urlparse

from embedd_server.domain.credentials import SSL_MODES
from embedd_server.domain.errors import FieldViolation, invalid_field, validation_error

DEFAULT_PAGE = 20
MAX_PAGE = 100
_ENV_NAME = re.compile(r"^[a-z0-9_-]{1,50}$")
# PostgreSQL truncates identifiers (table, column, schema, role, database names) to 63 bytes:
# a longer one can never name what the user meant.
MAX_IDENTIFIER_BYTES = 63
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")
_ID = re.compile(r"^[a-z]+_[a-z0-9]{1,60}$")
MAX_URL_CHARS = 2048


class Violations:
    """Collects every problem of a request, so the caller fixes them in one round."""

    def __init__(self) -> None:
        self._items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self._items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self._items:
            raise validation_error(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)


def check_name(v: Violations, value: str, field: str = "name", max_len: int = 100) -> None:
    if not value.strip():
        v.add(field, "is required")
    elif len(value) > max_len:
        v.add(field, f"must be at most {max_len} characters (got {len(value)})")


def check_env_name(v: Violations, value: str) -> None:
    if not _ENV_NAME.match(value):
        v.add("name", "must be 1-50 characters of lowercase letters, digits, '-' and '_'")


def check_identifier(v: Violations, value: str, field: str) -> None:
    """A PostgreSQL identifier as the user spells it (no quotes): present, at most 63 bytes."""
    if not value:
        v.add(field, "is required")
    elif len(value.encode()) > MAX_IDENTIFIER_BYTES:
        v.add(
            field,
            f"is {len(value.encode())} bytes long; PostgreSQL names are at most {MAX_IDENTIFIER_BYTES} bytes",
        )


def check_host(v: Violations, value: str, field: str) -> None:
    """A host name or an IP address (no port, no socket path, no list of hosts)."""
    if not value:
        return  # "is required" is the caller's
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOST_NAME.match(value):
            v.add(field, "must be a host name (db.example.com) or an IP address, without a port")


def add_id_violation(v: Violations, value: str, prefix: str, field: str) -> None:
    """Records why `value` is not an id with `prefix` (`conn_...`), if it is not."""
    if not value:
        v.add(field, "is required")
    elif not value.startswith(prefix) or not _ID.match(value):
        v.add(field, f"must be an id starting with {prefix!r}")


def check_id(value: str, prefix: str, field: str) -> str:
    """A resource id with the right prefix; a 400 for an empty or malformed one."""
    v = Violations()
    add_id_violation(v, value, prefix, field)
    v.raise_if_any()
    return value


def check_port(v: Violations, port: int | None, field: str) -> int:
    if port is None:
        return 5432
    if not 1 <= port <= 65535:
        v.add(field, "must be between 1 and 65535")
    return port


def check_ssl_mode(v: Violations, value: str, field: str) -> str:
    if not value:
        return "prefer"
    normalised = value.replace("_", "-")
    if normalised not in SSL_MODES:
        v.add(field, f"must be one of {', '.join(SSL_MODES)}")
    return normalised


def check_base_url(v: Violations, value: str, field: str) -> None:
    if len(value) > MAX_URL_CHARS:
        v.add(field, f"must be at most {MAX_URL_CHARS} characters")
        return
    try:
        parsed = urlparse(value)
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parsed = urlparse("")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        v.add(field, "must be an absolute http:// or https:// URL")
    elif parsed.username or parsed.password:
        v.add(field, "must not carry credentials (user:password@): put the key in api_key")


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    after: tuple[dt.datetime, str] | None


def page_request(limit: int, cursor: str) -> PageRequest:
    """Validates `limit` (1-100, 20 when 0) and decodes the opaque cursor."""
    if limit == 0:
        limit = DEFAULT_PAGE
    if not 1 <= limit <= MAX_PAGE:
        raise invalid_field("limit", f"must be between 1 and {MAX_PAGE}")
    if not cursor:
        return PageRequest(limit, None)
    after = _decode_cursor(cursor)
    if after is None:
        raise invalid_field("cursor", "is not a cursor this API returned; omit it to start over")
    return PageRequest(limit, after)


def _decode_cursor(cursor: str) -> tuple[dt.datetime, str] | None:
    """Strictly what `encode_cursor` writes: [an aware timestamp in range, an id]."""
    try:
        created, ident = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        when = dt.datetime.fromisoformat(created)
        if when.tzinfo is None:
            return None
        when = when.astimezone(dt.UTC)  # OverflowError past year 1 or 9999
    except (ValueError, TypeError, OverflowError, binascii.Error):
        return None
    if not isinstance(ident, str) or not _ID.match(ident):
        return None
    return when, ident


def encode_cursor(created_at: dt.datetime, ident: str) -> str:
    raw = json.dumps([created_at.isoformat(), ident]).encode()
    return base64.urlsafe_b64encode(raw).decode()
