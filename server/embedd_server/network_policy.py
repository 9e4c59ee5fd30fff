"""Where the server may connect on a tenant's behalf: users' PostgreSQL servers (connection
tests, vector-table creation, backfills, syncs, queries) and embedding providers' `base_url`.

One setting (`EMBEDD_NETWORK_POLICY`, config.py):

- `permissive` (the default): anything the server can reach. Right for a self-hosted server
  whose users are its operators (the dev stack's databases are on loopback).
- `public_only`: only public addresses, plus `EMBEDD_NETWORK_ALLOW` (CIDRs, IP addresses,
  host names). Private, loopback, link-local (the cloud metadata service at 169.254.169.254),
  shared, reserved and multicast ranges are refused, as are IPv4-mapped IPv6 forms of them.

The rule applies to addresses, after DNS resolution, so a name that resolves to 10.0.0.5 is
refused like 10.0.0.5 itself, and the connection then goes to the checked address (no second
lookup a rebinding DNS server could answer differently):

- PostgreSQL: `pg_hosts` resolves and checks the host; asyncpg connects to those addresses
  (TLS still verifies the certificate against the host name: `sources.pg_check.ssl_argument`).
- HTTP (aiohttp): `http_connector` checks every name it resolves (`_PolicyResolver`) and, in
  its socket factory, every address it connects to - IP literals in a URL and each redirect's
  target included.

A refusal is `NetworkPolicyDenied` (an `OSError`, so callers that handle an unreachable
address handle it too); its message says what to do and never shows the resolved address.
The facts this relies on (aiohttp skips the resolver for IP literals, asyncio's TLS uses the
address as server name): docs/security.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

REASON = "network_policy_denied"


class NetworkPolicyDenied(OSError):
    """The server's network policy refuses this destination."""

    def __init__(self, target: str) -> None:
        super().__init__(
            f"{target} is a private, loopback or otherwise non-public address (or resolves to one), "
            "and this server's network policy only allows public destinations. Use a publicly "
            "reachable host, or ask the operator to allow it (EMBEDD_NETWORK_ALLOW)."
        )
        self.target = target


def _address(text: str) -> Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _host_key(host: str) -> str:
    return host.strip().rstrip(".").lower()


@dataclass(frozen=True)
class NetworkPolicy:
    public_only: bool = False
    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_settings(cls, mode: str, allow: str) -> NetworkPolicy:
        """`mode` permissive|public_only; `allow` comma-separated CIDRs, addresses, host names."""
        if mode not in ("permissive", "public_only"):
            raise ValueError(f"EMBEDD_NETWORK_POLICY must be permissive or public_only, not {mode!r}")
        networks: list[Network] = []
        hosts: set[str] = set()
        for item in (part.strip() for part in allow.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(_host_key(item))
        return cls(public_only=mode == "public_only", networks=tuple(networks), hosts=frozenset(hosts))

    def allows_address(self, ip: Address) -> bool:
        if not self.public_only:
            return True
        if any(ip in net for net in self.networks if net.version == ip.version):
            return True
        return ip.is_global and not ip.is_multicast

    def allows_host_name(self, host: str) -> bool:
        """True when the host is allow-listed by name (then its addresses are not checked)."""
        return not self.public_only or _host_key(host) in self.hosts

    async def pg_hosts(self, host: str, port: int) -> list[str]:
        """The hosts asyncpg connects to for `host`: the host itself when the policy does not
        look at it, else its resolved addresses, every one checked."""
        if self.allows_host_name(host):
            return [host]
        literal = _address(host)
        if literal is not None:
            addresses = [literal]
        else:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = [a for a in (_address(str(i[4][0])) for i in infos) if a is not None]
        self.check_addresses(host, addresses)
        return list(dict.fromkeys(str(a) for a in addresses))

    def check_addresses(self, target: str, addresses: Iterable[Address]) -> None:
        # Every address must pass: a name answering with one public and one private address
        # is how DNS rebinding slips through.
        if not all(self.allows_address(a) for a in addresses):
            raise NetworkPolicyDenied(target)


PERMISSIVE = NetworkPolicy()


class _PolicyResolver(AbstractResolver):
    """aiohttp's resolver, with every answer checked; names allowed by name are vouched for,
    so that the socket factory lets their (possibly private) addresses through."""

    def __init__(self, policy: NetworkPolicy, vouched: set[Address]) -> None:
        self._inner = aiohttp.ThreadedResolver()  # getaddrinfo; nothing to close
        self._policy = policy
        self._vouched = vouched

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        addresses = [a for a in (_address(r["host"]) for r in results) if a is not None]
        if self._policy.allows_host_name(host):
            self._vouched.update(addresses)
        else:
            self._policy.check_addresses(host, addresses)
        return results

    async def close(self) -> None:
        await self._inner.close()


def http_connector(policy: NetworkPolicy, **options: Any) -> aiohttp.TCPConnector:
    """A TCPConnector that applies `policy` to every name and every address (redirects too)."""
    if not policy.public_only:
        return aiohttp.TCPConnector(**options)
    vouched: set[Address] = set()

    def open_socket(info: Any) -> socket.socket:
        family, type_, proto, _, sockaddr = info
        ip = _address(str(sockaddr[0]))
        if ip is None or not (policy.allows_address(ip) or ip in vouched):
            # The same text for every address: aiohttp keeps one error when all agree.
            raise NetworkPolicyDenied("the destination")
        return socket.socket(family=family, type=type_, proto=proto)

    resolver = _PolicyResolver(policy, vouched)
    return aiohttp.TCPConnector(resolver=resolver, socket_factory=open_socket, **options)


def denied(exc: BaseException) -> bool:
    """Whether an HTTP client error is the network policy's refusal."""
    if isinstance(exc, NetworkPolicyDenied):
        return True
    if isinstance(exc, aiohttp.ClientConnectorError):
        return isinstance(exc.os_error, NetworkPolicyDenied)
    return False
