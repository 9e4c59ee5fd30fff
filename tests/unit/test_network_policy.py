"""The network policy (network_policy.py): which addresses pass, after resolution, for
PostgreSQL hosts and for HTTP requests - IP literals and redirects included. Real sockets on
loopback (127.0.0.1 and 127.0.0.2, both on `lo`), no network."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from embedd_server.network_policy import (
    PERMISSIVE,
    NetworkPolicy,
    NetworkPolicyDenied,
    denied,
    http_connector,
)
from embedd_server.sources.pg_check import ssl_argument

PUBLIC_ONLY = NetworkPolicy.from_settings("public_only", "")


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # shared address space
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
    ],
)
def test_public_only_refuses_non_public_addresses(address: str, public: bool) -> None:
    ip = ipaddress.ip_address(address)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    assert PUBLIC_ONLY.allows_address(mapped) is public
    assert PERMISSIVE.allows_address(mapped)


def test_allow_list_of_cidrs_and_names() -> None:
    policy = NetworkPolicy.from_settings("public_only", " 10.0.0.0/8, 192.168.1.5 ,Db.Internal.")
    assert policy.allows_address(ipaddress.ip_address("10.9.9.9"))
    assert policy.allows_address(ipaddress.ip_address("192.168.1.5"))
    assert not policy.allows_address(ipaddress.ip_address("192.168.1.6"))
    assert policy.allows_host_name("db.internal") and not policy.allows_host_name("other.internal")
    with pytest.raises(ValueError, match="permissive or public_only"):
        NetworkPolicy.from_settings("strict", "")


async def test_pg_hosts_resolves_and_checks() -> None:
    assert await PERMISSIVE.pg_hosts("localhost", 5432) == ["localhost"]  # untouched
    for host in ("localhost", "127.0.0.1", "::1"):
        with pytest.raises(NetworkPolicyDenied, match="non-public"):
            await PUBLIC_ONLY.pg_hosts(host, 5432)
    by_cidr = NetworkPolicy.from_settings("public_only", "127.0.0.0/8,::1/128")
    assert set(await by_cidr.pg_hosts("localhost", 5432)) <= {"127.0.0.1", "::1"}
    by_name = NetworkPolicy.from_settings("public_only", "localhost")
    assert await by_name.pg_hosts("localhost", 5432) == ["localhost"]


def _text(body: str) -> web.Handler:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(text=body)

    return handler


@pytest.fixture
async def servers() -> AsyncIterator[tuple[str, str]]:
    """`a` (127.0.0.1) answers 200 at /ok and redirects /hop to `b` (127.0.0.2)."""
    b_app = web.Application()
    b_app.router.add_get("/ok", _text("b"))
    b_runner = web.AppRunner(b_app)
    await b_runner.setup()
    b_site = web.TCPSite(b_runner, "127.0.0.2", 0)
    await b_site.start()
    b_port = b_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def hop(_: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.2:{b_port}/ok")

    a_app = web.Application()
    a_app.router.add_get("/ok", _text("a"))
    a_app.router.add_get("/hop", hop)
    a_runner = web.AppRunner(a_app)
    await a_runner.setup()
    a_site = web.TCPSite(a_runner, "127.0.0.1", 0)
    await a_site.start()
    a_port = a_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{a_port}", f"localhost:{a_port}"
    finally:
        await a_runner.cleanup()
        await b_runner.cleanup()


async def _get(policy: NetworkPolicy, url: str) -> str:
    connector = http_connector(policy)
    async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as response:
        return await response.text()


async def test_http_ip_literals_names_and_redirects(servers: tuple[str, str]) -> None:
    a, a_by_name = servers
    assert await _get(PERMISSIVE, f"{a}/hop") == "b"
    for url in (f"{a}/ok", f"http://{a_by_name}/ok"):
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await _get(PUBLIC_ONLY, url)
        assert denied(info.value)
    # 127.0.0.1 allowed, the redirect target 127.0.0.2 is not: the hop is checked too
    only_a = NetworkPolicy.from_settings("public_only", "127.0.0.1/32")
    assert await _get(only_a, f"{a}/ok") == "a"
    with pytest.raises(aiohttp.ClientConnectorError) as info:
        await _get(only_a, f"{a}/hop")
    assert denied(info.value)
    assert await _get(NetworkPolicy.from_settings("public_only", "127.0.0.0/8"), f"{a}/hop") == "b"
    # a name on the allow-list may resolve to a private address
    assert (
        await _get(NetworkPolicy.from_settings("public_only", "localhost"), f"http://{a_by_name}/ok") == "a"
    )


def test_tls_verifies_the_host_name_when_connecting_to_its_address() -> None:
    """Connections go to the resolved (checked) address; verify-full must still check the
    certificate against the connection's host name, not against that address."""
    context = ssl_argument("verify-full", server_name="db.example.com")
    assert isinstance(context, ssl.SSLContext) and context.check_hostname
    tls = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="203.0.113.7")
    assert tls.server_hostname == "db.example.com"
    plain = ssl_argument("verify-full")
    assert isinstance(plain, ssl.SSLContext)
    assert plain.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="h").server_hostname == "h"
