"""The OpenAPI 3 description of the REST surface, `envoy/openapi.json`, generated from protos/.

`make gen` writes it (through tools/gen.py) and `tools/gen.py --check` finds drift. Three steps:

1. grpc-gateway's `protoc-gen-swagger` (1.6.4, from Debian's golang-grpc-gateway package;
   `make install` unpacks it under .venv/) reads the `google.api.http` annotations and writes
   Swagger 2.0, one file per proto (its merge option keeps the comments of the first file
   only), through tools/swagger_plugin.py (the generator predates proto3 `optional`). Field
   names are the proto names, as the transcoder prints them (`preserve_proto_field_names`).
2. `swagger2openapi` (npm, tools/npm/) converts the merged document to OpenAPI 3.0.
3. `correct` fixes what the generator cannot know or gets wrong about Envoy's transcoder and
   our server; each step below says what and why. docs/openapi.md lists them.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from embedd_server.domain.ids import PREFIXES
from embedd_server.domain.validation import MAX_PAGE
from google.api import field_behavior_pb2  # type: ignore[import-untyped]
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUTPUT = ROOT / "envoy" / "openapi.json"
GENERATOR = ROOT / ".venv" / "grpc-gateway" / "usr" / "bin" / "protoc-gen-swagger"  # make install
SWAGGER2OPENAPI = ROOT / "tools" / "npm" / "node_modules" / ".bin" / "swagger2openapi"
PLUGIN = Path(__file__).resolve().parent / "swagger_plugin.py"

Json = dict[str, Any]
_B = field_behavior_pb2.FieldBehavior
_PACKAGE = "embedd.v1"
# grpc-gateway names a message's schema after the last package component and its nesting.
_PREFIX = "v1"
_METHODS = ("get", "put", "post", "delete", "patch")

# Counts carried as `double` so that JSON prints numbers (proto JSON prints 64-bit integers
# as strings); the transcoder prints a whole double without a fraction (`5000`).
WHOLE_NUMBERS = {
    "v1GetSyncStatusResponse": (
        "synced_rows",
        "total_rows",
        "rows_pending",
        "rows_skipped",
        "rows_imported",
        "batch_tokens",
        "estimated_saving_tokens",
    ),
    "v1TaskProgress": (
        "rows_processed",
        "rows_total",
        "rows_failed",
        "rows_skipped",
        "rows_imported",
        "batches_submitted",
        "batches_completed",
        "batch_rows_submitted",
        "batch_rows_completed",
        "batch_tokens",
        "estimated_saving_tokens",
    ),
}

# Every error our server or Envoy answers: the status, and what it means on this API.
ERROR_STATUSES = {
    "400": "The request is invalid (`validation_error`, with `details` naming each field).",
    "401": "No valid API key (`unauthorized`, `key_revoked`).",
    "403": "The key may not do this (`permission_denied`: `read_only` keys read and query only).",
    "404": "No such resource in the caller's environment (`connection_not_found`, ...), "
    "or no such route (`not_found`).",
    "409": "The name is taken, or the resource's state refuses the request "
    "(`connection_conflict`, `sync_already_paused`, ...).",
    "413": "The request body is larger than 8 MiB (`payload_too_large`).",
    "422": "The resource is not ready for this yet (`vector_table_not_ready`, `connection_not_ready`).",
    "429": "The organisation's request limit is used up (`rate_limit_exceeded`); retry after "
    "`Retry-After` seconds.",
    "431": "The request headers are too large.",
    "5XX": "A failure on our side or of a provider (`internal_error`, `unavailable`, `timeout`); "
    "`request_id` identifies it.",
}
# 409 and 422 answer requests that change or use a resource's state, never reads.
_STATE_STATUSES = ("409", "422")

RATE_LIMIT_HEADERS = {
    "X-RateLimit-Limit": "Requests per minute allowed to the organisation.",
    "X-RateLimit-Remaining": "Requests left in the current window.",
    "X-RateLimit-Reset": "When the current minute stops counting in full (Unix seconds).",
}

NDJSON = "application/x-ndjson"


# --------------------------------------------------------------------------- generation


def _run(cmd: list[str], **kwargs: Any) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stderr.strip()}")


def _require(tool: Path) -> None:
    if not tool.exists():
        raise RuntimeError(f"{tool} is missing: run `make install`")


def _sources() -> list[str]:
    return sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "embedd" / "v1").glob("*.proto"))


def _swagger(tmp: Path) -> Json:
    """Swagger 2.0 of every proto file, merged."""
    _require(GENERATOR)
    launcher = tmp / "protoc-gen-swagger"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{PLUGIN}" "{GENERATOR}"\n')
    launcher.chmod(0o755)
    out = tmp / "swagger"
    out.mkdir()
    _run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--plugin=protoc-gen-swagger={launcher}",
            f"--swagger_out={out}",
            *_sources(),
        ]
    )
    merged: Json = {}
    for path in sorted(out.rglob("*.swagger.json")):
        _merge(merged, json.loads(path.read_text()), path.name)
    _ref_siblings(merged["definitions"])  # or the conversion drops the fields' descriptions
    return merged


def _merge(into: Json, part: Json, name: str) -> None:
    for key, value in part.items():
        if key not in ("paths", "definitions"):
            into.setdefault(key, value)
            continue
        section = into.setdefault(key, {})
        for item, body in value.items():
            if key == "paths" and item in section:
                clash = set(section[item]) & set(body)
                if clash:
                    raise RuntimeError(f"{name}: {sorted(clash)} {item} is defined twice")
                section[item].update(body)
            elif section.setdefault(item, body) != body:
                raise RuntimeError(f"{name}: definition {item} differs between files")


def _openapi3(swagger: Json, tmp: Path) -> Json:
    _require(SWAGGER2OPENAPI)
    src, dst = tmp / "swagger.json", tmp / "openapi.json"
    src.write_text(json.dumps(swagger))
    _run([str(SWAGGER2OPENAPI), str(src), "-o", str(dst)])
    converted: Json = json.loads(dst.read_text())
    return converted


def _descriptors(tmp: Path) -> descriptor_pb2.FileDescriptorSet:
    out = tmp / "descriptors.binpb"
    _run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *_sources(),
        ]
    )
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def generate() -> str:
    """The text of envoy/openapi.json."""
    with tempfile.TemporaryDirectory(prefix="embedd-openapi-") as name:
        tmp = Path(name)
        doc = _openapi3(_swagger(tmp), tmp)
        doc = correct(doc, _descriptors(tmp))
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- corrections


def correct(doc: Json, files: descriptor_pb2.FileDescriptorSet) -> Json:
    """The generated description, made true to the REST surface Envoy and the server serve."""
    doc = copy.deepcopy(doc)
    messages = _messages(files)
    _info(doc, files)
    _one_update_path(doc)
    _well_known_types(doc)
    _body_without_path_fields(doc)
    _update_mask(doc)
    _field_behavior(doc, messages)
    _whole_numbers(doc)
    _parameter_bounds(doc)
    _closed_objects(doc)
    _drop_boolean_format(doc)
    _watch_ndjson(doc)
    _auth_and_environment(doc)
    _errors(doc)
    _rate_limit_headers(doc)
    _operation_ids(doc)
    _ref_siblings(doc["components"]["schemas"])
    _drop_unused_schemas(doc)
    return doc


def _operations(doc: Json) -> Iterator[tuple[str, str, Json]]:
    for path, item in doc["paths"].items():
        for method in _METHODS:
            if method in item:
                yield path, method, item[method]


def _messages(files: descriptor_pb2.FileDescriptorSet) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Our messages by the schema name grpc-gateway gives them (`v1VectorTable`, `v1ModeValue`)."""
    out: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, msgs: Any) -> None:
        for msg in msgs:
            out[prefix + msg.name] = msg
            walk(prefix + msg.name, msg.nested_type)

    for f in files.file:
        if f.package == _PACKAGE:
            walk(_PREFIX, f.message_type)
    return out


def _info(doc: Json, files: descriptor_pb2.FileDescriptorSet) -> None:
    """A title instead of the first file's name; the services' comments as tag descriptions."""
    doc["info"] = {
        "title": "Embedd vector sync API",
        "version": "v1",
        "description": (
            "The `/v1` REST surface: Envoy's gRPC-JSON transcoder in front of the `embedd.v1` "
            "gRPC services. Generated from protos/ by `make gen`.\n\n"
            "JSON field names are snake_case, value sets lowercase strings, timestamps RFC 3339 "
            "UTC. Lists take `limit` (1-100, default 20) and `cursor` (the previous page's "
            '`next_cursor`). Every error is `{"error": {"code", "message", "request_id", '
            '"details"?}}` with a stable `code`.'
        ),
    }
    tags = []
    for f in files.file:
        if f.package != _PACKAGE:
            continue
        comments = {tuple(loc.path): loc.leading_comments.strip() for loc in f.source_code_info.location}
        for index, service in enumerate(f.service):
            tag: Json = {"name": service.name}
            # Path 6 = FileDescriptorProto.service.
            if comments.get((6, index)):
                tag["description"] = comments[(6, index)]
            tags.append(tag)
    doc["tags"] = sorted(tags, key=lambda t: str(t["name"]))


def _one_update_path(doc: Json) -> None:
    """The generator names UpdateVectorTable's path variable after the field it binds
    (`{vector_table.id}`): a second template of the same path, which OpenAPI forbids and tools
    cannot expand. It is `{vector_table_id}`, as for the other methods of that path."""
    old, new = "/v1/vector-tables/{vector_table.id}", "/v1/vector-tables/{vector_table_id}"
    for method, op in doc["paths"].pop(old).items():
        for param in op["parameters"]:
            if param["in"] == "path" and param["name"] == "vector_table.id":
                param["name"] = "vector_table_id"
                param["description"] = "The vector table's identifier (the body's `id`)."
        if method in doc["paths"][new]:
            raise RuntimeError(f"{method} {new} is defined twice")
        doc["paths"][new][method] = op


_PLAIN_JSON: dict[str, Json] = {
    "protobufStruct": {"type": "object", "additionalProperties": True},
    "googleprotobufValue": {},
    "protobufListValue": {"type": "array", "items": {}},
}


def _well_known_types(doc: Json) -> None:
    """Struct, Value and ListValue print as plain JSON (an object, any value, an array), not as
    the messages the generator describes: written in place, with the field's description. (A
    FieldMask is a parameter: see _update_mask.)"""
    refs = {f"#/components/schemas/{name}": plain for name, plain in _PLAIN_JSON.items()}
    for node in _nodes(doc):
        target = node.get("$ref") or next(iter(node.get("allOf") or [{}])).get("$ref")
        if target in refs:
            node.pop("$ref", None)
            node.pop("allOf", None)
            node.update({**copy.deepcopy(refs[target]), **node})
    for name in (*_PLAIN_JSON, "protobufNullValue", "protobufFieldMask"):
        doc["components"]["schemas"].pop(name, None)


def _nodes(doc: Any) -> Iterator[Json]:
    """Every object in the document."""
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _ref_siblings(schemas: Json) -> None:
    """OpenAPI 3.0 (and Swagger 2.0) ignore whatever sits beside a `$ref` - a field's
    description, its readOnly - and swagger2openapi drops it: such a field refers through
    `allOf` instead. Run on the Swagger document too, before the conversion."""
    for node in _nodes(schemas):
        if "$ref" in node and len(node) > 1:
            node["allOf"] = [{"$ref": node.pop("$ref")}]


def _body_without_path_fields(doc: Json) -> None:
    """`body: "*"` binds every field that the path does not: the generator still lists the path's
    fields in the body, where the transcoder refuses any value but the path's
    (`reject_binding_body_field_collisions`). Such bodies get their own schema without them."""
    schemas = doc["components"]["schemas"]
    for _, _, op in _operations(doc):
        body = op.get("requestBody", {}).get("content", {}).get("application/json")
        path_fields = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        if body is None or not path_fields or "$ref" not in body["schema"]:
            continue
        name = _ref_name(body["schema"])
        props = schemas[name]["properties"]
        if not path_fields & set(props):
            continue  # the body is one field (`body: "vector_table"`), not the whole request
        trimmed = copy.deepcopy(schemas[name])
        for field in path_fields:
            trimmed["properties"].pop(field)
        body_name = f"{name}Body"
        schemas[body_name] = trimmed
        body["schema"] = {"$ref": f"#/components/schemas/{body_name}"}


def _update_mask(doc: Json) -> None:
    """UpdateVectorTable's `update_mask` (a FieldMask, which the generator skips) is a query
    parameter: the fields to change, comma-separated (PATCH); without it every mutable field
    given is changed (PUT). The body of an update requires nothing."""
    schemas = doc["components"]["schemas"]
    update = copy.deepcopy(schemas["v1VectorTable"])
    update["description"] = (
        "The new values: with `update_mask`, the fields it names; without, every mutable field given."
    )
    schemas["v1VectorTableUpdate"] = update
    mask = {
        "name": "update_mask",
        "in": "query",
        "required": False,
        "description": (
            "The fields to change, comma-separated (e.g. `columns,sync_interval_seconds`); "
            "absent means every mutable field given. `connection_id`, `source_table`, `mode` "
            "and `primary_key_column` cannot be changed."
        ),
        "schema": {"type": "string"},
    }
    found = 0
    for _, _, op in _operations(doc):
        if op["operationId"].startswith("UpdateVectorTable"):
            op["parameters"].append(copy.deepcopy(mask))
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/v1VectorTableUpdate"}}
                },
            }
            found += 1
    if found != 2:
        raise RuntimeError(f"expected UpdateVectorTable on PUT and PATCH, found {found}")
    doc["components"].get("requestBodies", {}).pop("v1VectorTable", None)
    _inline_request_bodies(doc)


def _inline_request_bodies(doc: Json) -> None:
    """swagger2openapi shares a body used twice as components/requestBodies; with the update's
    own schema the create body is used once: keep it inline."""
    shared = doc["components"].pop("requestBodies", {})
    for _, _, op in _operations(doc):
        ref = op.get("requestBody", {}).get("$ref")
        if ref is not None:
            op["requestBody"] = copy.deepcopy(shared[ref.rsplit("/", 1)[1]])


def _always_printed(field: descriptor_pb2.FieldDescriptorProto) -> bool:
    """`always_print_primitive_fields` prints every scalar, enum and repeated field, set or
    not; a message field (and a proto3 `optional` one) only when set."""
    if field.proto3_optional:
        return False
    if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        return True
    return field.type != descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE


def _field_behavior(doc: Json, messages: dict[str, descriptor_pb2.DescriptorProto]) -> None:
    """What grpc-gateway 1.6 ignores in `google.api.field_behavior`: REQUIRED fields are
    `required`; OUTPUT_ONLY and IDENTIFIER fields `readOnly` (clients do not send them),
    INPUT_ONLY fields `writeOnly` (never returned). A field the transcoder always prints is
    also `required` where only responses can see it: when it is `readOnly` (OpenAPI applies
    `required` to responses only then), or everywhere in a schema no request uses."""
    schemas = doc["components"]["schemas"]
    in_requests = _request_schemas(doc)
    for name, schema in schemas.items():
        msg = messages.get(name) or messages.get(name.removesuffix("Body").removesuffix("Update"))
        if msg is None or "properties" not in schema:
            continue
        response_only = name not in in_requests
        required = []
        for field in msg.field:
            prop = schema["properties"].get(field.name)
            if prop is None:
                continue
            behavior = set(field.options.Extensions[field_behavior_pb2.field_behavior])
            read_only = bool(behavior & {_B.OUTPUT_ONLY, _B.IDENTIFIER})
            if read_only:
                prop["readOnly"] = True
            if _B.INPUT_ONLY in behavior:
                prop["writeOnly"] = True
            if _B.REQUIRED in behavior or (_always_printed(field) and (read_only or response_only)):
                required.append(field.name)
        if required and not name.endswith("Update"):  # an update requires nothing
            schema["required"] = required


def _request_schemas(doc: Json) -> set[str]:
    """Schemas reachable from a request body or parameter."""
    roots = []
    for _, _, op in _operations(doc):
        roots.extend(op.get("parameters", []))
        roots.append(op.get("requestBody", {}))
    return _reachable(doc, roots)


def _reachable(doc: Json, roots: list[Any]) -> set[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                if name not in seen:
                    seen.add(name)
                    stack.append(doc["components"]["schemas"][name])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return seen


def _whole_numbers(doc: Json) -> None:
    """Row counts are whole numbers in JSON: `integer`, not `number` (see WHOLE_NUMBERS)."""
    schemas = doc["components"]["schemas"]
    for name, fields in WHOLE_NUMBERS.items():
        for field in fields:
            prop = schemas[name]["properties"][field]
            if prop.get("format") != "double":
                raise RuntimeError(f"{name}.{field} is no longer a double: update WHOLE_NUMBERS")
            prop.update({"type": "integer", "format": "int64", "minimum": 0})


def _parameter_bounds(doc: Json) -> None:
    """What the server checks of every identifier and page size (domain/ids.py,
    domain/validation.py): an id starts with its type's prefix; `limit` is 1-100 (0, the
    absent value, means 20)."""
    prefixes = {f"{kind}_id": prefix for kind, prefix in PREFIXES.items()}
    for _, _, op in _operations(doc):
        for param in op.get("parameters", []):
            name, schema = param.get("name"), param.get("schema", {})
            if param.get("in") == "path" and name in prefixes:
                schema.update({"pattern": f"^{prefixes[name]}", "maxLength": 64})
            elif param.get("in") == "query" and name == "limit":
                schema.update({"minimum": 0, "maximum": MAX_PAGE})


def _closed_objects(doc: Json) -> None:
    """The transcoder prints no field a message does not have: a schema only responses use is
    closed. One that requests use stays open, since the transcoder ignores unknown fields."""
    in_requests = _request_schemas(doc)
    for name, schema in doc["components"]["schemas"].items():
        if name not in in_requests and schema.get("type") == "object" and "properties" in schema:
            schema["additionalProperties"] = False


def _drop_boolean_format(doc: Json) -> None:
    """`format: boolean` is Swagger 2 noise of the generator, not an OpenAPI format."""
    for node in _nodes(doc):
        if node.get("type") == "boolean":
            node.pop("format", None)


_WATCHES = {
    "/v1/tasks/{task_id}/watch": (
        "The task's progress as it happens: one `WatchTaskResponse` JSON object per line, flushed "
        "per event; the last line has `done: true` and says how the work ended. A failure after "
        "the first line cannot change the status; the last line says how the work ended."
    ),
    "/v1/vector-tables/{vector_table_id}/watch": (
        "The table's events for as long as the client stays: one `VectorTableEvent` JSON object "
        "per line, flushed per event - a snapshot first (or, with `after_sequence`, the events "
        "since), then progress, sync cycles and status changes, and a heartbeat every few "
        "seconds while nothing happens (docs/watch.md)."
    ),
}


def _watch_ndjson(doc: Json) -> None:
    """Watch streams: newline-delimited JSON, one message per line (the generator describes one
    JSON document)."""
    for path, description in _WATCHES.items():
        ok = doc["paths"][path]["get"]["responses"]["200"]
        ok["description"] = description
        ok["content"] = {NDJSON: ok["content"]["application/json"]}


def _auth_and_environment(doc: Json) -> None:
    """Every call takes `Authorization: Bearer sk_...` and may name an environment."""
    components = doc["components"]
    components["securitySchemes"] = {
        "apiKey": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "sk_...",
            "description": "An API key of the organisation: `full`, or `read_only` (reads and queries).",
        }
    }
    doc["security"] = [{"apiKey": []}]
    components["parameters"] = {
        "EnvironmentId": {
            "name": "X-Environment-Id",
            "in": "header",
            "required": False,
            "description": "The environment (`env_...` or its name) of the call; `prod` when absent.",
            "schema": {"type": "string"},
        }
    }
    for _, _, op in _operations(doc):
        op.setdefault("parameters", []).append({"$ref": "#/components/parameters/EnvironmentId"})


def _errors(doc: Json) -> None:
    """The error body of our server (errors.py via Envoy's Lua filter) and of Envoy's own
    replies (envoy.yaml `local_reply_config`), on every status the surface answers with."""
    components = doc["components"]
    components["schemas"]["Error"] = {
        "type": "object",
        "description": "Every error response.",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "request_id"],
                "additionalProperties": False,
                "properties": {
                    "code": {
                        "type": "string",
                        "description": "Stable, for programs: `validation_error`, `unauthorized`, "
                        "`connection_not_found`, `rate_limit_exceeded`, ...",
                    },
                    "message": {"type": "string", "description": "For people: what is wrong and what to do."},
                    "request_id": {
                        "type": "string",
                        "description": "The request's `x-request-id` (also a response header).",
                    },
                    "details": {
                        "type": "array",
                        "description": "One entry per invalid field (`validation_error`).",
                        "items": {"$ref": "#/components/schemas/FieldViolation"},
                    },
                },
            }
        },
    }
    components["schemas"]["FieldViolation"] = {
        "type": "object",
        "required": ["field", "description"],
        "additionalProperties": False,
        "properties": {
            "field": {"type": "string", "description": "The field's path, e.g. `credentials.port`."},
            "description": {"type": "string", "description": "What is wrong with it."},
        },
    }
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    components["responses"] = {
        f"Error{status}": {"description": text, "content": copy.deepcopy(error)}
        for status, text in ERROR_STATUSES.items()
    }
    for _, method, op in _operations(doc):
        for status in ERROR_STATUSES:
            if method == "get" and status in _STATE_STATUSES:
                continue
            op["responses"][status] = {"$ref": f"#/components/responses/Error{status}"}


def _rate_limit_headers(doc: Json) -> None:
    """X-RateLimit-* on every answered call; Retry-After on a 429 as well."""
    components = doc["components"]
    headers: Json = {
        name: {"description": text, "required": True, "schema": {"type": "integer", "minimum": 0}}
        for name, text in RATE_LIMIT_HEADERS.items()
    }
    headers["Retry-After"] = {
        "description": "Seconds to wait before the next request is admitted.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
    components["headers"] = headers
    refs = {name: {"$ref": f"#/components/headers/{name}"} for name in RATE_LIMIT_HEADERS}
    for _, _, op in _operations(doc):
        op["responses"]["200"]["headers"] = copy.deepcopy(refs)
    components["responses"]["Error429"]["headers"] = {
        **copy.deepcopy(refs),
        "Retry-After": {"$ref": "#/components/headers/Retry-After"},
    }


def _operation_ids(doc: Json) -> None:
    """The generator numbers a second binding of one RPC (`UpdateVectorTable2`)."""
    op = doc["paths"]["/v1/vector-tables/{vector_table_id}"]["patch"]
    if op["operationId"] != "UpdateVectorTable2":
        raise RuntimeError(f"unexpected PATCH operationId {op['operationId']!r}")
    op["operationId"] = "PatchVectorTable"


def _drop_unused_schemas(doc: Json) -> None:
    """Schemas the corrections replaced (a request with its path fields, FieldMask's)."""
    used = _reachable(doc, [doc["paths"], doc["components"].get("responses", {})])
    for name in set(doc["components"]["schemas"]) - used:
        del doc["components"]["schemas"][name]


def _ref_name(schema: Json) -> str:
    return str(schema["$ref"]).rsplit("/", 1)[1]


# --------------------------------------------------------------------------- entry points


def write(path: Path = OUTPUT) -> None:
    path.write_text(generate())


def drifted(path: Path = OUTPUT) -> bool:
    return not path.exists() or path.read_text() != generate()
