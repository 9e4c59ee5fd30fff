"""What every command shares: where the server is, the client, the output, error handling."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from embedd_client.cli.output import Output
from embedd_client.errors import EmbeddError
from embedd_client.sync import SyncEmbeddClient

if TYPE_CHECKING:
    # What the generated stubs declare a `Xxx.Value` enum (values_pb2) to be; stubs only.
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (the REST API's shapes).")]
LimitOption = Annotated[int, typer.Option(help="Page size, 1-100.")]
CursorOption = Annotated[str, typer.Option(help="`next_cursor` of the previous page.")]


@dataclass(frozen=True, slots=True)
class Config:
    """The root options (from the environment `.embedd/dev.env` exports, or flags)."""

    grpc: str | None
    api_key: str | None
    environment: str | None
    timeout_s: float
    json: bool

    def client(self) -> SyncEmbeddClient:
        if not self.grpc or not self.api_key:
            raise typer.BadParameter(
                "set EMBEDD_GRPC and EMBEDD_API_KEY (`source .embedd/dev.env` for the dev stack) "
                "or pass --grpc and --api-key"
            )
        return SyncEmbeddClient(
            self.grpc, self.api_key, environment_id=self.environment, timeout_s=self.timeout_s
        )


@contextmanager
def session(ctx: typer.Context, as_json: bool) -> Iterator[tuple[SyncEmbeddClient, Output]]:
    """A client and the output for one command; a failed call prints the error, exit 1."""
    config: Config = ctx.find_root().obj
    out = Output(as_json or config.json)
    try:
        with config.client() as client:
            yield client, out
    except EmbeddError as err:
        out.error(err)
        raise typer.Exit(1) from None


def choices(enum: _EnumTypeWrapper[Any]) -> list[str]:
    return [name for name, _ in enum.items() if name != "unspecified"]


def choice(enum: _EnumTypeWrapper[Any], value: str, option: str) -> Any:
    """The enum number for a value name, or a usage error listing the valid names."""
    if value not in choices(enum):
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices(enum))}", param_hint=option)
    return enum.Value(value)
