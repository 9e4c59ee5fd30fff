"""The CLI's progress line: the phase appears as soon as the server sends one."""

from __future__ import annotations

from embedd.v1 import task_pb2, values_pb2
from embedd_client.cli.progress import duration, eta, label, phase_of
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

_F = descriptor_pb2.FieldDescriptorProto


def event_type_with_a_phase(enum: bool) -> type[Message]:
    """A WatchTask-like event whose proto has a `phase` field, as issue 14 will add."""
    file = descriptor_pb2.FileDescriptorProto(name=f"phase_{enum}.proto", package="t", syntax="proto3")
    phase = file.enum_type.add(name="Phase")
    for number, name in enumerate(("unspecified", "reading", "embedding", "writing", "indexing")):
        phase.value.add(name=name, number=number)
    message = file.message_type.add(name="Event")
    message.field.add(
        name="phase",
        number=1,
        label=_F.LABEL_OPTIONAL,
        type=_F.TYPE_ENUM if enum else _F.TYPE_STRING,
        type_name=".t.Phase" if enum else None,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))


def test_the_phase_is_read_from_the_event_once_its_proto_has_one() -> None:
    assert phase_of(task_pb2.WatchTaskResponse()) is None  # today's protos: no phase
    as_enum, as_string = event_type_with_a_phase(True), event_type_with_a_phase(False)
    assert phase_of(as_enum(phase=4)) == "indexing"
    assert phase_of(as_enum()) is None  # unspecified
    assert phase_of(as_string(phase="embedding")) == "embedding"
    assert phase_of(as_string()) is None


def test_label_and_times() -> None:
    running = task_pb2.WatchTaskResponse(task=task_pb2.Task(status=values_pb2.TaskStatus.running))
    assert label(running) == "running"
    assert eta(running) == "-"
    running.eta_seconds = 3725.4
    assert eta(running) == "1:02:05"
    assert duration(59.6) == "1:00"
