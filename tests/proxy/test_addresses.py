"""Registration keys and values: what is an address and what is refused (and why)."""

from __future__ import annotations

import pytest

from fleetop.discovery.addresses import (
    InvalidRegistration,
    Registration,
    parse_registration,
    parse_registrations,
    parse_value,
    preview,
    registration_key,
    registrations_under,
)
from fleetop.errors import InputError
from fleetop.keys import child

VALID = [
    # article 001: etcdctl set /test/apache-8001 ${COREOS_PRIVATE_IPV4}:%i
    ("172.17.8.101:8001", "172.17.8.101", 8001, "172.17.8.101:8001"),
    # article 002: /services/apache/<ip> = "<ip>:8888"
    ("10.132.249.206:8888", "10.132.249.206", 8888, "10.132.249.206:8888"),
    ("127.0.0.1:1", "127.0.0.1", 1, "127.0.0.1:1"),
    ("0.0.0.0:65535", "0.0.0.0", 65535, "0.0.0.0:65535"),
    ("[::1]:80", "::1", 80, "[::1]:80"),
    ("[2001:DB8:0:0::1]:8080", "2001:db8::1", 8080, "[2001:db8::1]:8080"),
    ("[::ffff:10.0.0.1]:80", "::ffff:a00:1", 80, "[::ffff:a00:1]:80"),
    ("localhost:8080", "localhost", 8080, "localhost:8080"),
    ("web-1.internal:80", "web-1.internal", 80, "web-1.internal:80"),
    ("Web-1.Example.COM:80", "web-1.example.com", 80, "web-1.example.com:80"),
    ("a.b.c.d.example.com.:443", "a.b.c.d.example.com", 443, "a.b.c.d.example.com:443"),
    ("1host.example:80", "1host.example", 80, "1host.example:80"),
    ("x" * 63 + ".example:80", "x" * 63 + ".example", 80, "x" * 63 + ".example:80"),
    ('{"host": "10.0.0.5", "port": 8001}', "10.0.0.5", 8001, "10.0.0.5:8001"),
    ('{"port": 80, "host": "::1"}', "::1", 80, "[::1]:80"),
    ('{"host": "[fe80::1]", "port": 80}', "fe80::1", 80, "[fe80::1]:80"),
    ('{"host": "db.internal", "port": 5432}\n', "db.internal", 5432, "db.internal:5432"),
]


@pytest.mark.parametrize(("value", "host", "port", "address"), VALID)
def test_valid_values(value: str, host: str, port: int, address: str) -> None:
    parsed = parse_registration("/services/web/1", value.encode())
    assert parsed == Registration("/services/web/1", host, port)
    assert isinstance(parsed, Registration)
    assert parsed.address == address


INVALID = [
    ("", "empty"),
    ("127.0.0.1:80; } server { listen 9999; }", "not allowed"),
    ("127.0.0.1:80;", "not allowed"),
    ("127.0.0.1:80\n", "not allowed"),
    ("127.0.0.1:80\r\n", "not allowed"),
    ("127.0.0.1:80\nserver evil:1", "not allowed"),
    ('"127.0.0.1:80"', "not allowed"),
    ("'127.0.0.1:80'", "not allowed"),
    ("127.0.0.1:80 #", "not allowed"),
    ("127.0.0.1#:80", "not allowed"),
    ("$host:80", "not allowed"),
    ("127.0.0.1:$port", "not allowed"),
    (" 127.0.0.1:80", "not allowed"),
    ("127.0.0.1 :80", "not allowed"),
    ("127.0.0.1:80 backup", "not allowed"),
    ("127.0.0.1:80\t", "not allowed"),
    ("10.0.0.1:80\x00", "not allowed"),
    ("{", "invalid JSON"),
    ("}", "not allowed"),
    ("a{b}:80", "not allowed"),
    ("\\x:80", "not allowed"),
    ("web_1:80", "not allowed"),
    ("héllo.example:80", "not allowed"),
    ("127.0.0.1:٨٠", "not allowed"),
    ("::1:80", "brackets"),
    ("2001:db8::1:80", "brackets"),
    ("fe80::1", "brackets"),
    ("[::1]", "':port'"),
    ("[::1]80", "':port'"),
    ("[::1:80", "closing bracket"),
    ("[fe80::1%eth0]:80", "not allowed"),
    ("[not-ipv6]:80", "not a valid IPv6"),
    ("[1.2.3.4]:80", "not a valid IPv6"),
    ("127.0.0.1", "port is missing"),
    ("127.0.0.1:", "not a number"),
    ("127.0.0.1:0", "out of range"),
    ("127.0.0.1:65536", "out of range"),
    ("127.0.0.1:70000", "out of range"),
    ("127.0.0.1:123456", "not a number"),
    ("127.0.0.1:080", "not a number"),
    ("127.0.0.1:-80", "not a number"),
    ("127.0.0.1:+80", "not allowed"),
    ("256.1.1.1:80", "not a valid IPv4"),
    ("1.2.3:80", "not a valid IPv4"),
    ("01.2.3.4:80", "not a valid IPv4"),
    ("1.2.3.4.5:80", "not a valid IPv4"),
    ("example.123:80", "neither"),
    ("-web.example:80", "labels"),
    ("web-.example:80", "labels"),
    ("web..example:80", "labels"),
    (".example:80", "labels"),
    ("x" * 64 + ".example:80", "labels"),
    (("a" * 60 + ".") * 5 + "com:80", "longer than 253"),
    (":80", "empty"),
    ('{"host": "10.0.0.1"}', "port"),
    ('{"host": "10.0.0.1", "port": "80"}', "integer"),
    ('{"host": "10.0.0.1", "port": true}', "integer"),
    ('{"host": "10.0.0.1", "port": 80.0}', "integer"),
    ('{"host": "10.0.0.1", "port": 0}', "out of range"),
    ('{"host": "10.0.0.1", "port": 65536}', "out of range"),
    ('{"host": 10, "port": 80}', "string"),
    ('{"host": "10.0.0.1; }", "port": 80}', "host name"),
    ('{"host": "10.0.0.1\\n", "port": 80}', "host name"),
    ('{"host": "10.0.0.1", "port": 80, "weight": 5}', "unknown field"),
    ('["10.0.0.1", 80]', "not allowed"),
    ('{"host": "10.0.0.1", "port": 80', "invalid JSON"),
    ("x" * 2000, "longer than"),
]


@pytest.mark.parametrize(("value", "reason"), INVALID)
def test_invalid_values(value: str, reason: str) -> None:
    parsed = parse_registration("/services/web/1", value.encode())
    assert isinstance(parsed, InvalidRegistration), parsed
    assert reason in parsed.reason
    assert parsed.key == "/services/web/1"
    assert "\n" not in parsed.value_preview and "\n" not in parsed.reason
    assert len(parsed.value_preview) <= 80


def test_non_utf8_is_refused() -> None:
    parsed = parse_registration("/k", b"\xff\xfe:80")
    assert isinstance(parsed, InvalidRegistration)
    assert "UTF-8" in parsed.reason


def test_registrator_keys_and_values() -> None:
    # article 004: registrator -internal etcd:///services → /services/<name>/<host>:<container>:<port>
    items = [
        ("/services/dumbserve/core01:dumbserve:8080", b"10.1.15.2:8080"),
        ("/services/dumbserve/core02:dumbserve:8080", b"10.1.16.2:8080"),
    ]
    valid, invalid = parse_registrations(items)
    assert invalid == []
    assert [r.address for r in valid] == ["10.1.15.2:8080", "10.1.16.2:8080"]
    assert valid[0].key == "/services/dumbserve/core01:dumbserve:8080"


def test_parse_registrations_sorts_splits_and_dedupes_by_key() -> None:
    items = [
        ("/services/web/c", b"10.0.0.3:80"),
        ("/services/web/a", b"10.0.0.1:80"),
        ("/services/web/bad", b"10.0.0.9:80; }"),
        ("/services/web/b", b"10.0.0.1:80"),  # same address as /a, another instance key
        ("/services/web/a", b"10.0.0.1:80"),  # the same key again counts once
    ]
    valid, invalid = parse_registrations(items)
    assert [(r.key, r.address) for r in valid] == [
        ("/services/web/a", "10.0.0.1:80"),
        ("/services/web/b", "10.0.0.1:80"),
        ("/services/web/c", "10.0.0.3:80"),
    ]
    assert [i.key for i in invalid] == ["/services/web/bad"]
    assert parse_registrations(list(reversed(items[:4]))) == (valid, invalid)  # input order is irrelevant


def test_the_last_value_of_a_repeated_key_wins() -> None:
    valid, _ = parse_registrations([("/k", b"10.0.0.1:80"), ("/k", b"10.0.0.2:80")])
    assert [r.address for r in valid] == ["10.0.0.2:80"]


def test_parse_value_accepts_str_and_preview_escapes() -> None:
    assert parse_value("10.0.0.1:80") == ("10.0.0.1", 80)
    assert preview("a\nb") == "a\\nb"
    assert preview("x" * 100).endswith("...")


def test_registrations_under_a_prefix_are_its_direct_keys() -> None:
    items = [
        ("/services/web/8001", b"10.0.0.1:8001"),
        ("/services/web/8002", b"junk"),
        ("/services/web/a/b", b"10.0.0.1:80"),  # deeper: no instance
        ("/services/web/", b"10.0.0.1:80"),  # the prefix itself
        ("/services/webx/1", b"10.0.0.1:80"),  # another service
    ]
    found = list(registrations_under("/services/web/", items))
    assert [(instance, type(parsed).__name__) for instance, parsed in found] == [
        ("8001", "Registration"),
        ("8002", "InvalidRegistration"),
    ]
    assert found[0][1] == Registration("/services/web/8001", "10.0.0.1", 8001)


@pytest.mark.parametrize(
    ("key", "prefix", "expected"),
    [("/a/b", "/a/", "b"), ("/a/b/c", "/a/", None), ("/a/", "/a/", None), ("/ab", "/a/", None)],
)
def test_child_is_the_one_segment_under_a_prefix(key: str, prefix: str, expected: str | None) -> None:
    assert child(key, prefix) == expected


def test_registration_key() -> None:
    assert registration_key("web", "8001") == "/services/web/8001"
    assert registration_key("web", "8001", "/team/web/") == "/team/web/8001"


@pytest.mark.parametrize(
    ("service", "instance", "prefix", "flag"),
    [
        ("Web", "8001", None, "--service"),
        ("web", "-1", None, "--instance"),
        ("web", "a/b", None, "--instance"),
        ("web", "8001", "services/web", "--prefix"),
        ("web", "8001", "/services/../x", "--prefix"),
        ("web", "8001", "/services/web\n", "--prefix"),
    ],
)
def test_registration_key_names_the_flag_at_fault(
    service: str, instance: str, prefix: str | None, flag: str
) -> None:
    with pytest.raises(InputError) as info:
        registration_key(service, instance, prefix)
    assert info.value.where == flag
