"""Small conversions between domain values and protobuf messages."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

import structlog
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

Msg = TypeVar("Msg", bound=Message)

_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}

log = structlog.get_logger(__name__)


class _Record(Protocol):
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=_Record)
M = TypeVar("M")


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp in whole seconds, so JSON prints `2026-03-13T10:00:00Z` as the seed shows."""
    if value is None:
        return None
    return timestamp_pb2.Timestamp(seconds=int(value.timestamp()))


def render_all(records: Iterable[R], to_proto: Callable[[R], M]) -> list[M]:
    """A list page's messages. A stored record that cannot be rendered (a value out of the
    API's range) is left out and logged: one bad row must not take the whole list down."""
    out: list[M] = []
    for record in records:
        try:
            out.append(to_proto(record))
        except (ValueError, TypeError) as exc:
            log.error("stored record left out of a list: cannot be rendered", id=record.id, error=repr(exc))
    return out


def set_counters(message: Msg, **values: int) -> Msg:
    """Sets numeric fields of `message`, each integer clamped into its field's range: protobuf
    raises on a value out of range, which would turn a large count (or a negative one) into an
    internal_error. The range is read from the field's declared type, whatever it is; counts
    carried as doubles (exact to 2^53) take any count, never a negative one."""
    fields = message.DESCRIPTOR.fields_by_name
    for name, value in values.items():
        bounds = _INT_RANGES.get(fields[name].cpp_type)
        if bounds is None:
            setattr(message, name, float(max(value, 0)))
        else:
            setattr(message, name, min(max(int(value), bounds[0]), bounds[1]))
    return message
