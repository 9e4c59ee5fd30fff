"""`embedd-server` / `python -m embedd_server`: serve, or administer organisations."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

import structlog

from embedd_server import app
from embedd_server.config import load_settings
from embedd_server.domain.tiers import DEFAULT_TIER, TIERS, requests_per_minute
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


async def create_org(name: str, key_name: str, permission: str, tier: str, rpm: int | None) -> None:
    """Creates an organisation (with its `prod` environment) and prints its first API key."""
    settings = load_settings()
    pool = await create_pool(settings.database_url.get_secret_value(), min_size=1, max_size=2)
    try:
        orgs = OrgStore(pool)
        org_id = await orgs.create_org(name, tier, rpm)
        key, secret = await orgs.create_api_key(org_id, key_name, permission)
        print(
            json.dumps(
                {
                    "org_id": org_id,
                    "api_key_id": key.id,
                    "api_key": secret,
                    "tier": tier,
                    "requests_per_minute": requests_per_minute(tier, rpm),
                }
            )
        )
    finally:
        await pool.close()


async def update_org(org_id: str, tier: str | None, rpm: int | None, tier_limit: bool) -> None:
    """Changes an organisation's tier and/or its own request limit; prints the result."""
    settings = load_settings()
    pool = await create_pool(settings.database_url.get_secret_value(), min_size=1, max_size=2)
    try:
        orgs = OrgStore(pool)
        found = await orgs.org_limits(org_id) is not None
        if found and tier is not None:
            await orgs.set_tier(org_id, tier)
        if found and (rpm is not None or tier_limit):
            await orgs.set_request_limit(org_id, rpm)
        limits = await orgs.org_limits(org_id)
        if limits is None:
            raise SystemExit(f"no organisation {org_id!r}")
        now_tier, now_rpm = limits
        print(
            json.dumps(
                {
                    "org_id": org_id,
                    "tier": now_tier,
                    "requests_per_minute": requests_per_minute(now_tier, now_rpm),
                    "own_limit": now_rpm is not None,
                }
            )
        )
    finally:
        await pool.close()


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def main() -> None:
    parser = argparse.ArgumentParser(prog="embedd-server", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve gRPC (the default)")
    org = sub.add_parser("create-org", help="create an organisation and print its first API key")
    org.add_argument("--name", required=True)
    org.add_argument("--key-name", default="default")
    org.add_argument("--permission", choices=("full", "read_only"), default="full")
    org.add_argument("--tier", choices=tuple(TIERS), default=DEFAULT_TIER)
    org.add_argument(
        "--requests-per-minute",
        type=_positive,
        help="the organisation's own request limit (overrides the tier's)",
    )
    upd = sub.add_parser("update-org", help="change an organisation's tier or request limit")
    upd.add_argument("--org", required=True, help="the organisation id (org_...)")
    upd.add_argument("--tier", choices=tuple(TIERS))
    limit = upd.add_mutually_exclusive_group()
    limit.add_argument("--requests-per-minute", type=_positive, help="the organisation's own request limit")
    limit.add_argument("--tier-limit", action="store_true", help="drop the own limit: use the tier's again")
    args = parser.parse_args()
    if args.command == "create-org":
        asyncio.run(
            create_org(args.name, args.key_name, args.permission, args.tier, args.requests_per_minute)
        )
    elif args.command == "update-org":
        asyncio.run(update_org(args.org, args.tier, args.requests_per_minute, args.tier_limit))
    else:
        asyncio.run(serve())


if __name__ == "__main__":
    main()
