"""Rules every request message obeys, whatever the RPC, checked before any servicer runs.

The servicers validate what their fields mean; this module rejects what no field may hold,
so that it never reaches PostgreSQL or a provider:

- a NUL character (U+0000) in any string: PostgreSQL text cannot store it;
- a string longer than `MAX_STRING_CHARS`;
- an enum number that is not a value of its enum: proto3 (and Envoy's JSON transcoding)
  accepts any number for an enum field, and `"mode": 99` must not read as some default.

It walks nested messages, repeated fields, maps and `google.protobuf.Struct` values (query
filters), naming each offending field by its JSON path (`columns[1].role`,
`filters.$or[0].category`). Invalid UTF-8 never gets this far: the protobuf decoder refuses
it (see `decode_error`), as it refuses messages nested deeper than its recursion limit.
Every limit and why it is what it is: docs/limits.md.
"""

from __future__ import annotations

from google.api import annotations_pb2  # type: ignore[import-untyped]
from google.protobuf import descriptor, descriptor_pool
from google.protobuf.message import DecodeError, Message

from embedd_server.domain.errors import ApiError, Kind
from embedd_server.domain.validation import Violations

# Longer than any field's own limit (a query is at most 10,000 characters), so those limits
# speak first; this one bounds what no servicer looks at.
MAX_STRING_CHARS = 16_384
# At most this many problems are reported: a hostile request could otherwise have thousands.
_MAX_REPORTED = 20

_FD = descriptor.FieldDescriptor
_STRUCT = "google.protobuf.Struct"
_VALUE = "google.protobuf.Value"
_LIST = "google.protobuf.ListValue"


def check_request(message: Message, *, body_field: str = "") -> None:
    """Raises a `validation_error` naming every field that breaks a rule above. `body_field`
    is the request field that is the whole REST body (`vector_table` of CreateVectorTable):
    paths inside it are named as REST sees them (`columns[1].role`), as the servicers do."""
    v = _Collector(f"{body_field}." if body_field else "")
    _message(message, "", v)
    v.raise_if_any()


def body_field(full_method: str) -> str:
    """The request field an RPC's HTTP rule takes as its whole body (`body: "vector_table"`),
    or "" (`body: "*"`, or no body)."""
    service, _, name = full_method.strip("/").rpartition("/")
    try:
        method = descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]
    except KeyError:
        return ""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return ""
    body: str = options.Extensions[annotations_pb2.http].body
    return "" if body == "*" else body


def decode_error(exc: DecodeError) -> ApiError:
    """The 400 for a request body the protobuf decoder refused (a REST client's JSON is
    transcoded by Envoy into the same protobuf bytes a gRPC client sends)."""
    text = str(exc)
    if "Depth" in text or "depth" in text:
        why = (
            "The request nests too deeply for the decoder (about 20 levels of $or/$and, or 50 of "
            "nested lists, in a filter; filters themselves allow 8 levels of $or/$and). Flatten "
            "the filter."
        )
    elif "UTF-8" in text:
        why = (
            "The request contains a string that is not valid UTF-8 (in the path or the body). "
            "Send every id, name and value as UTF-8 text."
        )
    else:
        why = "The request body could not be decoded. Send a body that matches the API's JSON shape."
    return ApiError(Kind.INVALID, "validation_error", why)


class _Collector(Violations):
    def __init__(self, flatten: str = "") -> None:
        super().__init__()
        self.count = 0
        self._flatten = flatten

    def add(self, field: str, description: str) -> None:
        self.count += 1
        if self._flatten and field.startswith(self._flatten):
            field = field[len(self._flatten) :]
        if self.count <= _MAX_REPORTED:
            super().add(field or "request", description)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _message(msg: Message, path: str, v: _Collector) -> None:
    name = msg.DESCRIPTOR.full_name
    if name == _STRUCT:
        for key, value in msg.fields.items():  # type: ignore[attr-defined]
            _string(key, _join(path, key), v, what="key")
            _message(value, _join(path, key), v)
        return
    if name == _LIST:
        for i, value in enumerate(msg.values):  # type: ignore[attr-defined]
            _message(value, f"{path}[{i}]", v)
        return
    for field, value in msg.ListFields():
        # A Value's oneof members (string_value, struct_value, ...) are not JSON path steps.
        field_path = path if name == _VALUE else _join(path, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                if isinstance(key, str):
                    _string(key, f"{field_path}.{key}", v, what="key")
                _scalar(value_field, item, f"{field_path}.{key}", v)
        elif field.is_repeated:
            for i, item in enumerate(value):
                _scalar(field, item, f"{field_path}[{i}]", v)
        else:
            _scalar(field, value, field_path, v)


def _scalar(field: descriptor.FieldDescriptor, value: object, path: str, v: _Collector) -> None:
    if field.type == _FD.TYPE_MESSAGE:
        assert isinstance(value, Message)
        _message(value, path, v)
    elif field.type == _FD.TYPE_STRING:
        assert isinstance(value, str)
        _string(value, path, v)
    elif field.type == _FD.TYPE_ENUM:
        assert isinstance(value, int)
        enum = field.enum_type
        assert enum is not None
        if value not in enum.values_by_number:
            names = ", ".join(repr(n) for n in enum.values_by_name if n != "unspecified")
            v.add(path, f"{value} is not a valid value; use one of {names}")


def _string(value: str, path: str, v: _Collector, what: str = "value") -> None:
    if "\x00" in value:
        v.add(path, f"the {what} contains a NUL character (U+0000), which no field may hold")
    if len(value) > MAX_STRING_CHARS:
        v.add(path, f"the {what} is {len(value)} characters long; at most {MAX_STRING_CHARS}")
