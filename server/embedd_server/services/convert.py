"""Small conversions between domain values and protobuf messages."""

from __future__ import annotations

import datetime as dt
from typing import TypeVar

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp in whole seconds, so JSON prints `2026-03-13T10:00:00Z` as the seed shows."""
    if value is None:
        return None
    return timestamp_pb2.Timestamp(seconds=int(value.timestamp()))


def set_counters(message: M, **values: int) -> M:
    """Sets integer fields of `message`, each value clamped into its field's range: protobuf
    raises on a value out of range, which would turn a large count (or a negative one) into an
    internal_error. The range is read from the field's declared type, whatever it is."""
    fields = message.DESCRIPTOR.fields_by_name
    for name, value in values.items():
        low, high = _INT_RANGES[fields[name].cpp_type]
        setattr(message, name, min(max(int(value), low), high))
    return message
