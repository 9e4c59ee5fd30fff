"""List cursors as clients see them: opaque and tamper-evident.

A store's cursor (`domain.validation.encode_cursor`: the last row's keyset position) is sealed
with an HMAC-SHA256 tag, keyed by a key derived from the server's secret key and bound to the
list method, the organisation and the environment. A cursor that was forged, edited, cut short,
or made by another list, organisation or environment is a 400 `validation_error` before it is
decoded - so no crafted position ever reaches a query.

The interceptor applies this to every request's `cursor` field and every response's
`next_cursor`, so the servicers and stores only ever see their own cursors (docs/security.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from embedd_server.domain.errors import invalid_field

_TAG = 16  # bytes of the HMAC kept: 128 bits


class CursorSealer:
    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the cursor key must be at least 32 bytes")
        self._key = key

    def _tag(self, raw: bytes, scope: str) -> bytes:
        return hmac.new(self._key, scope.encode() + b"\x00" + raw, hashlib.sha256).digest()[:_TAG]

    def seal(self, raw: str, scope: str) -> str:
        """The client's cursor for a store cursor (empty stays empty: the last page)."""
        if not raw:
            return ""
        data = raw.encode()
        return base64.urlsafe_b64encode(data + self._tag(data, scope)).decode().rstrip("=")

    def open(self, token: str, scope: str) -> str:
        """The store cursor inside a client's cursor, or a 400 when it is not one we made."""
        if not token:
            return ""
        try:
            blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            blob = b""
        data, tag = blob[:-_TAG], blob[-_TAG:]
        if len(blob) <= _TAG or not hmac.compare_digest(tag, self._tag(data, scope)):
            raise invalid_field(
                "cursor",
                "is not a cursor this list returned (for this organisation and environment); "
                "pass next_cursor from the previous page unchanged, or omit it to start over",
            )
        return data.decode()
