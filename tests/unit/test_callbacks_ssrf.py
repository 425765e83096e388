"""SSRF guard: refused ranges and schemes, allowlist, resolve-once-and-connect-there,
no redirects; and how delivery reads receivers' answers."""
from __future__ import annotations

import socket

import pytest

from qinfer.callbacks import CallbackURLRefused, check_callback_url
from qinfer.callbacks.delivery import DELIVERED, GONE, REFUSED, RETRY, parse_retry_after, post_webhook
from qinfer.ssrf import Allowlist, resolve_destination

NOBODY = Allowlist()
LOOPBACK = Allowlist.parse("127.0.0.1")

REFUSED_HOSTS = [
    "127.0.0.1", "127.8.9.10",                  # loopback
    "10.1.2.3", "172.16.0.1", "172.31.255.254", "192.168.1.1",   # RFC 1918
    "169.254.169.254", "169.254.1.1",           # link-local, cloud metadata
    "100.64.0.1", "100.127.255.254",            # CGNAT
    "224.0.0.1", "239.255.255.250",             # multicast
    "0.0.0.0", "255.255.255.255", "240.0.0.1",  # unspecified, broadcast, reserved
    "[::1]", "[::]",                            # IPv6 loopback, unspecified
    "[fc00::1]", "[fd12:3456::1]",              # IPv6 ULA
    "[fe80::1]",                                # IPv6 link-local
    "[ff02::1]",                                # IPv6 multicast
    "[::ffff:127.0.0.1]", "[::ffff:10.0.0.1]", "[::ffff:169.254.169.254]",   # IPv4-mapped
    "[2002:7f00:1::]", "[2002:a00:1::]",        # 6to4 of loopback, RFC 1918
    "2130706433", "0x7f.1", "127.1",            # legacy IPv4 spellings of loopback
]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_refused_literal_addresses(host):
    with pytest.raises(CallbackURLRefused, match="QINFER_CALLBACK_ALLOW"):
        check_callback_url(f"http://{host}/hook", NOBODY)
    with pytest.raises(CallbackURLRefused):
        resolve_destination(f"https://{host}:8443/hook", NOBODY)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://127.0.0.1:6379/_PING",
                                 "ftp://example.com/x", "hook.example.com/x", "http:///nohost",
                                 "http://user:pw@example.com/", "http://example.com:99999/"])
def test_refused_urls(url):
    with pytest.raises(CallbackURLRefused):
        check_callback_url(url, NOBODY)


def test_public_literal_and_hostnames_pass_the_submit_check():
    check_callback_url("https://93.184.216.34/hook", NOBODY)
    check_callback_url("https://[2606:4700::1111]/hook", NOBODY)
    check_callback_url("https://hooks.example.com/hook", NOBODY)   # resolved only at delivery


def test_hostname_resolving_to_loopback_is_refused():
    with pytest.raises(CallbackURLRefused, match="127.0.0.1|::1"):
        resolve_destination("http://localhost/hook", NOBODY)


def test_any_refused_address_among_several_refuses(monkeypatch):
    _fake_dns(monkeypatch, {"mixed.example": ["93.184.216.34", "10.0.0.5"]})
    with pytest.raises(CallbackURLRefused, match="10.0.0.5"):
        resolve_destination("https://mixed.example/hook", NOBODY)


def test_allowlist_opens_cidrs_and_host_names(monkeypatch):
    _fake_dns(monkeypatch, {"hooks.internal": ["10.9.8.7"]})
    allow = Allowlist.parse("10.1.0.0/16, hooks.internal, ::1")
    assert resolve_destination("http://10.1.2.3:8080/x?a=1", allow).target == "/x?a=1"
    assert resolve_destination("http://hooks.internal/", allow).ip == "10.9.8.7"
    check_callback_url("http://[::1]/", allow)
    with pytest.raises(CallbackURLRefused):
        check_callback_url("http://10.2.0.1/", allow)


def test_check_defaults_to_the_configured_allowlist(monkeypatch):
    from qinfer.config import get_settings
    monkeypatch.setenv("QINFER_CALLBACK_ALLOW", "127.0.0.1")
    get_settings.cache_clear()
    try:
        check_callback_url("http://127.0.0.1:9/hook")
    finally:
        get_settings.cache_clear()



def test_allowlisted_loopback_is_delivered(receiver):
    result = post_webhook(receiver.url("/ok"), {"webhook-id": "m"}, b"{}", 5, LOOPBACK)
    assert (result.outcome, result.status) == (DELIVERED, 200)
    assert receiver.requests("/ok")[0].headers["webhook-id"] == "m"


def test_loopback_not_allowlisted_is_refused_without_connecting(receiver):
    result = post_webhook(receiver.url("/ok"), {}, b"{}", 5, NOBODY)
    assert result.outcome == REFUSED
    assert receiver.requests("/ok") == []


def test_connects_to_the_checked_address_with_the_url_host(monkeypatch, receiver):
    _fake_dns(monkeypatch, {"hooks.example": ["127.0.0.1"]})
    result = post_webhook(receiver.url("/pinned", host="hooks.example"), {}, b"{}", 5, LOOPBACK)
    assert result.outcome == DELIVERED
    assert receiver.requests("/pinned")[0].headers["Host"] == f"hooks.example:{receiver.port}"


def test_redirect_to_an_internal_address_is_not_followed(receiver):
    internal = receiver.url("/internal")
    receiver.plan("/redirect", 302, headers={"Location": internal})
    result = post_webhook(receiver.url("/redirect"), {}, b"{}", 5, LOOPBACK)
    assert (result.outcome, result.status) == (RETRY, 302)
    assert receiver.requests("/internal") == []


def test_410_stops_and_429_503_carry_retry_after(receiver):
    receiver.plan("/gone", 410)
    receiver.plan("/busy", 429, headers={"Retry-After": "7"})
    receiver.plan("/down", 503, headers={"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"})
    receiver.plan("/err", 500, headers={"Retry-After": "7"})
    post = lambda path: post_webhook(receiver.url(path), {}, b"{}", 5, LOOPBACK)  # noqa: E731
    assert post("/gone").outcome == GONE
    assert post("/busy").retry_after_s == 7
    assert post("/down").retry_after_s > 1e9
    assert (post("/err").outcome, post("/err").retry_after_s) == (RETRY, None)


def test_timeout_is_retried(receiver):
    receiver.plan("/slow", 200, delay_s=1.0)
    result = post_webhook(receiver.url("/slow"), {}, b"{}", 0.2, LOOPBACK)
    assert result.outcome == RETRY and result.status is None and "timed out" in result.error


def test_parse_retry_after():
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40) == 60
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def _fake_dns(monkeypatch, table: dict[str, list[str]]):
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in table:
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
                for ip in table[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
