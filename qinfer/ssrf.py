"""SSRF guard for callback URLs.

A callback URL comes from whoever submits a job, and the callbacks worker sits
inside the fleet's network; so only http(s) to public addresses is allowed,
unless QINFER_CALLBACK_ALLOW (hosts and CIDRs) opens a chosen destination.
The host is resolved once, every resolved address is checked, and the
delivery connects to that checked address (no second lookup a DNS rebinding
could answer differently). Redirects are never followed (delivery.py).
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Iterable, Optional, Union
from urllib.parse import urlsplit

from qinfer.config import get_settings
from qinfer.errors import InvalidRequestError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

ALLOWED_SCHEMES = ("http", "https")
# Ranges named explicitly because `is_global` alone misses some of them
# (multicast counts as global) and the list documents what is refused.
REFUSED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8", "64:ff9b::/96",
))


class CallbackURLRefused(InvalidRequestError):
    """The callback URL points somewhere callbacks may not go."""


@dataclass(frozen=True)
class Allowlist:
    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, spec: Union[str, Iterable[str], None]) -> "Allowlist":
        """`"127.0.0.1, 10.1.0.0/16, hooks.internal"` -> networks and host names."""
        items = spec.split(",") if isinstance(spec, str) else list(spec or ())
        hosts, networks = set(), []
        for item in (i.strip().lower() for i in items if i and i.strip()):
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows_ip(self, ip: IPAddress) -> bool:
        return any(ip in n for n in self.networks if n.version == ip.version)


@dataclass(frozen=True)
class Destination:
    """Where one delivery connects: the URL's parts plus the checked address."""
    scheme: str
    host: str           # for the Host header and TLS SNI / certificate check
    port: int
    target: str         # path and query
    ip: str


def check_callback_url(url: str, allow: Optional[Allowlist] = None) -> None:
    """Submit-time check: scheme, host present, and a literal address not refused.

    Host names are only resolved at delivery (they may not resolve from the
    submitting machine, and the answer may change); the delivery re-checks.
    `allow` defaults to QINFER_CALLBACK_ALLOW.
    """
    allow = allow if allow is not None else Allowlist.parse(get_settings().callback_allow)
    parts = _split(url)
    literal = _literal_ip(parts.hostname)
    if literal is not None and parts.hostname not in allow.hosts:
        _check_ip(literal, allow, url)


def resolve_destination(url: str, allow: Optional[Allowlist] = None) -> Destination:
    """Resolve the host once and check every address; raise CallbackURLRefused if any is refused."""
    allow = allow or Allowlist()
    parts = _split(url)
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ips = _resolve(host, port)
    if host not in allow.hosts:
        for ip in ips:
            _check_ip(ip, allow, url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return Destination(parts.scheme, host, port, target, str(ips[0]))


def is_refused_ip(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4 carried inside IPv6 (::ffff:a.b.c.d, 6to4 2002:abcd::) is judged as that IPv4
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            return is_refused_ip(embedded)
    if any(ip in n for n in REFUSED_NETWORKS if n.version == ip.version):
        return True
    return not ip.is_global or ip.is_multicast or ip.is_reserved


def _check_ip(ip: IPAddress, allow: Allowlist, url: str) -> None:
    if is_refused_ip(ip) and not allow.allows_ip(ip):
        raise CallbackURLRefused(
            f"callback URL {url!r} resolves to {ip}, a non-public address; "
            "add it to QINFER_CALLBACK_ALLOW to permit it")


def _split(url: str):
    try:
        parts = urlsplit(url)
        parts.port  # raises on a bad port
    except ValueError as exc:
        raise CallbackURLRefused(f"callback URL {url!r} is malformed: {exc}") from None
    if parts.scheme not in ALLOWED_SCHEMES:
        raise CallbackURLRefused(f"callback URL {url!r}: scheme must be http or https")
    if not parts.hostname:
        raise CallbackURLRefused(f"callback URL {url!r} has no host")
    if parts.username or parts.password:
        raise CallbackURLRefused(f"callback URL {url!r} must not carry credentials")
    return parts


def _literal_ip(host: str) -> Optional[IPAddress]:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        # the resolver also reads legacy IPv4 forms ("127.1", "0x7f000001", "2130706433")
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConnectionError(f"cannot resolve {host!r}: {exc}") from None
    # scope ids ("fe80::1%eth0") are dropped: the address alone decides
    ips = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not ips:
        raise ConnectionError(f"{host!r} has no address")
    return ips
