"""Small conversions between domain values and protobuf messages."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

import structlog
from google.protobuf import timestamp_pb2

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
