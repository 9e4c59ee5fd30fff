"""List cursors are sealed (HMAC) and bound to their list and organisation (cursors.py)."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from embedd_server.cursors import CursorSealer
from embedd_server.domain.errors import ApiError
from embedd_server.domain.validation import encode_cursor, page_request
from embedd_server.secretbox import SecretBox

KEY = SecretBox(bytes(range(32))).derive_key("list cursors")
SCOPE = "/embedd.v1.ConnectionService/ListConnections|org_a"


def test_round_trip_and_empty() -> None:
    sealer = CursorSealer(KEY)
    raw = encode_cursor(dt.datetime(2026, 3, 13, tzinfo=dt.UTC), "conn_abc")
    token = sealer.seal(raw, SCOPE)
    assert token != raw and "=" not in token
    assert sealer.open(token, SCOPE) == raw
    assert sealer.seal("", SCOPE) == "" and sealer.open("", SCOPE) == ""


def _forged(created: str, ident: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created, ident]).encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        _forged("9999-12-31T23:59:59-12:00", "x"),  # the forged cursors, as sent raw
        _forged("0001-01-01T00:00:00+14:00", "x"),
        _forged("2026-01-01T00:00:00Z", "a\x00b"),
        "not-a-cursor!",
        "é",
        "A",
        "",  # handled: empty means the first page
    ],
)
def test_forged_cursors_are_400(token: str) -> None:
    sealer = CursorSealer(KEY)
    if not token:
        assert sealer.open(token, SCOPE) == ""
        return
    with pytest.raises(ApiError) as info:
        sealer.open(token, SCOPE)
    assert info.value.code == "validation_error" and info.value.violations[0].field == "cursor"


def test_tampered_or_foreign_cursors_are_400() -> None:
    sealer = CursorSealer(KEY)
    token = sealer.seal(encode_cursor(dt.datetime(2026, 3, 13, tzinfo=dt.UTC), "conn_abc"), SCOPE)
    blob = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    blob[3] ^= 1
    edited = base64.urlsafe_b64encode(bytes(blob)).decode()
    for bad, scope in (
        (edited, SCOPE),
        (token[:-2], SCOPE),
        (token, "/embedd.v1.TaskService/ListTasks|org_a"),  # another list
        (token, "/embedd.v1.ConnectionService/ListConnections|org_b"),  # another organisation
    ):
        with pytest.raises(ApiError, match="cursor"):
            sealer.open(bad, scope)
    with pytest.raises(ApiError, match="cursor"):
        CursorSealer(SecretBox(bytes(32)).derive_key("list cursors")).open(token, SCOPE)  # another server key


@pytest.mark.parametrize(
    "raw",
    [
        _forged("9999-12-31T23:59:59-12:00", "conn_abc"),
        _forged("0001-01-01T00:00:00+14:00", "conn_abc"),
        _forged("2026-01-01T00:00:00", "conn_abc"),  # no offset: never written
        _forged("2026-01-01T00:00:00Z", "conn_a\x00b"),
        base64.urlsafe_b64encode(b'["2026-01-01T00:00:00Z"]').decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
    ],
)
def test_store_cursors_are_parsed_strictly(raw: str) -> None:
    """Behind the seal, the store's cursor format is still range-checked: an edge that would
    overflow when converted to UTC is a 400, never an exception."""
    with pytest.raises(ApiError, match="cursor"):
        page_request(10, raw)
