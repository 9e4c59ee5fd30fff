"""Request validation rules shared by the servicers. Each failure names its field."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from dataclasses import dataclass
from urllib.parse import urlparse

from embedd_server.domain.credentials import SSL_MODES
from embedd_server.domain.errors import FieldViolation, invalid_field, validation_error

DEFAULT_PAGE = 20
MAX_PAGE = 100
_ENV_NAME = re.compile(r"^[a-z0-9_-]{1,50}$")


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


def check_id(value: str, prefix: str, field: str) -> str:
    """A resource id with the right prefix; a 400 for an empty or malformed one."""
    if not value:
        raise invalid_field(field, "is required")
    if not value.startswith(prefix) or len(value) > 64:
        raise invalid_field(field, f"must be an id starting with {prefix!r}")
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
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        v.add(field, "must be an absolute http:// or https:// URL")


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
    try:
        created, ident = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return PageRequest(limit, (dt.datetime.fromisoformat(created), str(ident)))
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError) as exc:
        raise invalid_field("cursor", "is not a cursor this API returned; omit it to start over") from exc


def encode_cursor(created_at: dt.datetime, ident: str) -> str:
    raw = json.dumps([created_at.isoformat(), ident]).encode()
    return base64.urlsafe_b64encode(raw).decode()
