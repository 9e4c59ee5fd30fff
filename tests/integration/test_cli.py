"""The `embedd` command in-process (typer's runner) against the real server: the seed's steps
as a person types them, `--json` for scripts, errors with their codes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from embedd_client.cli.app import app
from embedd_server import app as server_app
from typer.testing import CliRunner, Result

from tests.conftest import PRODUCT_ROWS, UserDb
from tests.harness import Org, counting
from tests.integration.test_vector_tables import SEED_COLUMNS, create_vt

SEED_FILTER = '{"in_stock": {"eq": true}, "price": {"lte": 150}}'
LOCAL = ("--provider", "local", "--model", "local-lexical-384")


def db_options(user_db: UserDb) -> list[str]:
    creds = user_db.credentials()
    return [f"--{key}={creds[key]}" for key in ("host", "port", "database", "user")]


class Embedd:
    """Runs `embedd ...` configured like the dev stack's environment (EMBEDD_GRPC,
    EMBEDD_API_KEY), off the event loop that serves it."""

    def __init__(self, org: Org, **env: str) -> None:
        self.env = {"EMBEDD_GRPC": org.grpc_target, "EMBEDD_API_KEY": org.key, "COLUMNS": "200", **env}
        self.runner = CliRunner()

    async def __call__(self, *args: str, code: int = 0, input: str | None = None) -> Result:
        result = await asyncio.to_thread(self.runner.invoke, app, list(args), env=self.env, input=input)
        assert result.exit_code == code, (args, result.exit_code, result.output, result.exception)
        return result

    async def json(self, *args: str) -> Any:
        return json.loads((await self(*args, "--json")).stdout)


async def test_the_seed_steps_from_the_command_line(org: Org, user_db: UserDb) -> None:
    embedd = Embedd(org)
    password = f"--password={user_db.password}"
    conn = await embedd.json("connections", "create", "product-db", *db_options(user_db), password)
    assert conn["id"].startswith("conn_") and conn["status"] == "created"
    assert user_db.password not in json.dumps(conn)
    tested = await embedd("connections", "test", conn["id"])
    assert "status" in tested.stdout and "ok" in tested.stdout

    emb = await embedd.json("providers", "create", "local", *LOCAL)
    assert emb["id"].startswith("emb_") and emb["provider"] == "local"

    vt = await embedd.json(
        "tables", "create", "products-search", "--connection", conn["id"], "--provider", emb["id"],
        "--source", "public.products", "--pk", "id", "--model", "local-lexical-384", "--dims", "384",
        "--embed", "name=Product: ", "--embed", "description=Description: ",
        "--metadata", "category=keyword", "--metadata", "price=float", "--metadata", "in_stock=boolean",
    )  # fmt: skip
    assert vt["columns"] == SEED_COLUMNS and vt["sync_status"] == "pending"  # as the REST body makes

    filled = await embedd("backfill", vt["id"], "--watch")
    assert "completed" in filled.stderr
    assert f"{PRODUCT_ROWS} of {PRODUCT_ROWS} rows, 0 failed" in filled.stderr
    status = await embedd.json("sync", "status", vt["id"])
    assert status["sync_status"] == "synced" and status["synced_rows"] == PRODUCT_ROWS

    query = ("query", vt["id"], "something warm for hiking", "--limit", "5", "--filter", SEED_FILTER)
    shown = await embedd(*query)
    assert "hits for 'something warm for hiking'" in shown.stdout.splitlines()[0]
    assert all(name in shown.stdout for name in ("score", "category", "price", "in_stock"))
    hits = await embedd.json(*query)
    rest = await org.http(
        "POST",
        f"/v1/vector-tables/{vt['id']}/query",
        {"query": "something warm for hiking", "limit": 5, "filters": json.loads(SEED_FILTER)},
    )
    assert hits == rest.json() and 0 < len(hits["results"]) <= 5  # the same answer as REST
    for hit in hits["results"]:
        assert hit["id"] in shown.stdout
        assert hit["metadata"]["in_stock"] is True and hit["metadata"]["price"] <= 150

    tasks = await embedd.json("tasks", "list", "--table", vt["id"])
    (task,) = tasks["tasks"]
    assert task["status"] == "completed" and task["progress"]["rows_processed"] == PRODUCT_ROWS
    watched = (await embedd("watch", task["id"], "--json")).stdout.splitlines()
    assert [json.loads(line)["done"] for line in watched] == [True]  # done already: one NDJSON line
    idle = await embedd("watch", vt["id"], "--until-synced")  # synced already: the snapshot, done
    assert f"{vt['id']}  synced  {PRODUCT_ROWS} of {PRODUCT_ROWS} rows" in idle.stderr
    events = (await embedd("watch", vt["id"], "--until-synced", "--json")).stdout.splitlines()
    (snapshot,) = [json.loads(line) for line in events]
    assert snapshot["snapshot"]["status"]["sync_status"] == "synced" and snapshot["sequence"] > 0
    assert task["id"] in (await embedd("tasks", "get", task["id"])).stdout

    await embedd("tables", "delete", vt["id"], "--drop-vectors")
    await embedd("providers", "delete", emb["id"])
    await embedd("connections", "delete", conn["id"])
    assert (await embedd.json("connections", "list")) == {"connections": [], "next_cursor": ""}


async def test_watch_follows_a_tables_running_backfill(
    org: Org, user_db: UserDb, service: server_app.Service
) -> None:
    made = await create_vt(org, user_db)
    embedd = Embedd(org)
    with counting(service, delay_s=1.0):  # still running when `watch` starts
        queued = await embedd.json("backfill", made["id"])
        followed = await embedd("watch", made["id"], "--until-synced")
    assert queued["status"] == "pending"
    assert f"completed {queued['task_id']}: {PRODUCT_ROWS} of {PRODUCT_ROWS} rows" in followed.stderr
    assert "status: backfilling → synced (backfill completed)" in followed.stderr
    await embedd("tables", "delete", made["id"], "--drop-vectors")


async def test_sync_pause_resume_and_their_errors(org: Org, user_db: UserDb) -> None:
    embedd = Embedd(org)
    # Without --password the command asks for it, without echo.
    asked = await embedd(
        "connections", "create", "db", *db_options(user_db), "--json", input=f"{user_db.password}\n"
    )
    prompt, made = asked.stdout.splitlines()
    assert prompt.startswith("Password:") and user_db.password not in asked.output
    conn = json.loads(made)
    assert (await embedd("connections", "test", conn["id"])).exit_code == 0
    emb = await embedd.json("providers", "create", "local", *LOCAL)
    vt = await embedd.json(
        "tables", "create", "t", "--connection", conn["id"], "--provider", emb["id"],
        "--source", "public.products", "--pk", "id", "--embed", "name",
    )  # fmt: skip
    paused = await embedd.json("sync", "pause", vt["id"])
    assert paused["sync_status"] == "paused"
    again = await embedd("sync", "pause", vt["id"], code=1)
    assert (
        again.stdout == "" and "error sync_already_paused:" in again.stderr and "request id" in again.stderr
    )
    assert (await embedd.json("sync", "resume", vt["id"]))["vector_table_id"] == vt["id"]
    await embedd("tables", "delete", vt["id"], "--drop-vectors")


async def test_errors_are_printed_with_their_code_and_as_json(org: Org) -> None:
    embedd = Embedd(org)
    missing = await embedd("connections", "get", "conn_nope", "--json", code=1)
    body = json.loads(missing.stderr)["error"]
    assert body["code"] == "connection_not_found" and len(body["request_id"]) == 32 and missing.stdout == ""
    invalid = await embedd("query", "vt_x", "q", "--limit", "1000", code=1)
    assert "validation_error" in invalid.stderr and "limit:" in invalid.stderr
    bad_filter = await embedd("query", "vt_x", "q", "--filter", "{nope", code=2)
    assert "not a JSON object" in bad_filter.output
    bad_choice = await embedd("providers", "create", "x", "--provider", "nope", "--model", "m", code=2)
    assert "openai, gemini, voyage, local" in bad_choice.output
    unconfigured = Embedd(org, EMBEDD_GRPC="")
    assert "source .embedd/dev.env" in (await unconfigured("connections", "list", code=2)).output


async def test_api_keys_from_the_command_line(org: Org) -> None:
    embedd = Embedd(org)
    made = await embedd.json("keys", "create", "ci", "--read-only")
    assert made["key"].startswith("sk_") and made["permission"] == "read_only"
    listed = await embedd("keys", "list")
    assert made["id"] in listed.stdout and made["key"] not in listed.stdout
    reader = Embedd(org, EMBEDD_API_KEY=made["key"])
    denied = await reader("keys", "create", "more", "--json", code=1)
    assert json.loads(denied.stderr)["error"]["code"] == "permission_denied"
    assert (await embedd.json("keys", "revoke", made["id"]))["revoked_at"]
    refused = await reader("connections", "list", "--json", code=1)
    assert json.loads(refused.stderr)["error"]["code"] in ("key_revoked", "unauthorized")
