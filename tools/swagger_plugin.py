"""A protoc plugin in front of grpc-gateway's `protoc-gen-swagger` (Debian's golang-grpc-gateway).

That generator (grpc-gateway 1.6.4) predates proto3 `optional`: protoc refuses to run a plugin
that does not declare FEATURE_PROTO3_OPTIONAL on files that use it. Presence does not change a
field's JSON shape (the name and type are the same; only whether it may be absent), so this
shim hands the generator the request with every `proto3_optional` field made a plain field
and the synthetic oneofs protoc made for them removed, and declares the feature on its answer.

    protoc --plugin=protoc-gen-swagger=LAUNCHER --swagger_out=OPTIONS:OUT FILES

where LAUNCHER runs `python tools/swagger_plugin.py GENERATOR` (tools/openapi.py writes it).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2


def _drop_proto3_optional(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    for message in messages:
        synthetic = set()
        for field in message.field:
            if field.proto3_optional:
                synthetic.add(field.oneof_index)
                field.ClearField("oneof_index")
                field.proto3_optional = False
        # protoc puts synthetic oneofs after every real one (descriptor.proto says so).
        if synthetic:
            del message.oneof_decl[len(message.oneof_decl) - len(synthetic) :]
        _drop_proto3_optional(message.nested_type)


def main() -> int:
    generator = sys.argv[1]
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    for proto in request.proto_file:
        _drop_proto3_optional(proto.message_type)
    proc = subprocess.run([generator], input=request.SerializeToString(), capture_output=True, check=False)
    sys.stderr.buffer.write(proc.stderr)
    if proc.returncode != 0:
        return proc.returncode
    response = plugin_pb2.CodeGeneratorResponse.FromString(proc.stdout)
    response.supported_features |= plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    sys.stdout.buffer.write(response.SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main())
