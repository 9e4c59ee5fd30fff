"""`embedd-server` / `python -m embedd_server`: serve, or administer organisations."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

import structlog

from embedd_server import app
from embedd_server.config import load_settings
from embedd_server.logs import configure_logging
from embedd_server.store.db import create_pool
from embedd_server.store.orgs import OrgStore

log = structlog.get_logger("embedd")


async def serve() -> None:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    service = await app.start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", grace_s=settings.shutdown_grace_s)
    await service.stop(settings.shutdown_grace_s)
    log.info("stopped")


async def create_org(name: str, key_name: str, permission: str) -> None:
    """Creates an organisation (with its `prod` environment) and prints its first API key."""
    settings = load_settings()
    pool = await create_pool(settings.database_url.get_secret_value(), min_size=1, max_size=2)
    try:
        orgs = OrgStore(pool)
        org_id = await orgs.create_org(name)
        key, secret = await orgs.create_api_key(org_id, key_name, permission)
        print(json.dumps({"org_id": org_id, "api_key_id": key.id, "api_key": secret}))
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="embedd-server", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve gRPC (the default)")
    org = sub.add_parser("create-org", help="create an organisation and print its first API key")
    org.add_argument("--name", required=True)
    org.add_argument("--key-name", default="default")
    org.add_argument("--permission", choices=("full", "read_only"), default="full")
    args = parser.parse_args()
    if args.command == "create-org":
        asyncio.run(create_org(args.name, args.key_name, args.permission))
    else:
        asyncio.run(serve())


if __name__ == "__main__":
    main()
