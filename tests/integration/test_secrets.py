"""Secrets are encrypted at rest, never returned and never logged."""

from __future__ import annotations

import secrets
from pathlib import Path

import asyncpg

from tests.conftest import UserDb
from tests.harness import Org


async def test_secrets_never_leak(org: Org, user_db: UserDb, control_dsn: str, log_path: Path) -> None:
    db_password = "pw-" + secrets.token_hex(12)
    provider_key = "sk-proj-" + secrets.token_hex(12)
    creds = user_db.credentials(password=db_password)  # wrong password: the test fails, and says so
    responses = []
    made = await org.http(
        "POST",
        "/v1/providers/postgresql/connections",
        {"name": "leak", "mode": "platform", "credentials": creds},
    )
    responses.append(made)
    conn_id = made.json()["id"]
    responses.append(await org.http("POST", f"/v1/connections/{conn_id}/test"))
    responses.append(await org.http("GET", f"/v1/connections/{conn_id}"))
    responses.append(await org.http("GET", "/v1/connections"))
    emb = await org.http(
        "POST",
        "/v1/embedding-providers",
        {
            "name": "k",
            "provider": "openai",
            "api_key": provider_key,
            "default_model": "text-embedding-3-small",
        },
    )
    responses.append(emb)
    responses.append(await org.http("GET", f"/v1/embedding-providers/{emb.json()['id']}"))
    responses.append(await org.http("GET", "/v1/embedding-providers"))
    # a failing call that carries the secret in its body
    responses.append(
        await org.http(
            "POST",
            "/v1/embedding-providers",
            {"name": "", "provider": "openai", "api_key": provider_key, "default_model": "nope"},
        )
    )
    assert responses[1].json()["reason"] == "bad_credentials"
    for r in responses:
        assert db_password not in r.text and provider_key not in r.text, r.text
        assert db_password not in str(r.headers) and provider_key not in str(r.headers)

    # at rest: only ciphertext in the control plane
    conn = await asyncpg.connect(control_dsn)
    try:
        blob = await conn.fetchval("SELECT credentials_enc FROM connections WHERE id = $1", conn_id)
        key_blob = await conn.fetchval(
            "SELECT api_key_enc FROM embedding_providers WHERE id = $1", emb.json()["id"]
        )
        dump = " ".join(str(r) for r in await conn.fetch("SELECT * FROM connections WHERE id = $1", conn_id))
    finally:
        await conn.close()
    for raw in (bytes(blob), bytes(key_blob)):
        assert db_password.encode() not in raw and provider_key.encode() not in raw
    assert db_password not in dump and user_db.host not in dump  # the whole credentials object is sealed

    # and never in the logs, which did record these calls
    text = log_path.read_text()  # noqa: ASYNC240 - a small file, read once
    assert '"method": "/embedd.v1.ConnectionService/TestConnection"' in text
    assert db_password not in text and provider_key not in text
    assert org.key not in text
