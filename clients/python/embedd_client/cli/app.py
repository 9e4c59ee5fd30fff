"""The `embedd` command's root: global options (from the environment the dev stack writes)
and the command groups."""

from __future__ import annotations

from typing import Annotated

import typer

from embedd_client.aio import DEFAULT_TIMEOUT_S
from embedd_client.cli import jobs, query, resources
from embedd_client.cli.context import Config

app = typer.Typer(
    name="embedd",
    help="The Embedd vector sync API from a terminal. `source .embedd/dev.env` for the dev stack.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    grpc: Annotated[
        str | None, typer.Option("--grpc", envvar="EMBEDD_GRPC", help="The gRPC server, host:port.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="EMBEDD_API_KEY", help="An API key, sk_...", show_default=False)
    ] = None,
    environment: Annotated[
        str | None, typer.Option(envvar="EMBEDD_ENVIRONMENT", help="Environment id or name (default prod).")
    ] = None,
    timeout: Annotated[
        float, typer.Option(envvar="EMBEDD_TIMEOUT", help="Deadline of each call, in seconds.")
    ] = DEFAULT_TIMEOUT_S,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON from every command.")] = False,
) -> None:
    ctx.obj = Config(grpc, api_key, environment, timeout, as_json)


app.add_typer(resources.connections, name="connections")
app.add_typer(resources.providers, name="providers")
app.add_typer(resources.tables, name="tables")
app.add_typer(resources.keys, name="keys")
app.add_typer(jobs.sync, name="sync")
app.add_typer(jobs.tasks, name="tasks")
app.command("backfill")(jobs.backfill)
app.command("watch")(jobs.watch)
app.command("query")(query.query)
