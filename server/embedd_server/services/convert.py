"""Small conversions between domain values and protobuf messages."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp in whole seconds, so JSON prints `2026-03-13T10:00:00Z` as the seed shows."""
    if value is None:
        return None
    return timestamp_pb2.Timestamp(seconds=int(value.timestamp()))
