"""The published config's wire format: plain below the threshold, compressed above, refused when it
cannot be read; and a 100,000-backend config through a real etcd with its default request limit."""

from __future__ import annotations

import base64
import json
import zlib

import pytest

from fleetop.errors import FleetopError
from fleetop.etcd.client import Etcd
from fleetop.local.etcdserver import EtcdServer
from fleetop.models import ProxySpec, PublishedConfig
from fleetop.models.status import FollowedBackend
from fleetop.proxy.backends import collect_backends
from fleetop.proxy.published import (
    COMPRESS_ABOVE,
    FORMAT_COMPRESSED,
    PublishedFormatError,
    decode_published,
    encode_published,
)
from fleetop.proxy.render import RenderPaths, render


def config(body: str, **extra: object) -> PublishedConfig:
    return PublishedConfig.model_validate(
        {"hash": "h" * 64, "generation": 7, "kind": "nginx", "body": body, **extra}
    )


def big_body(lines: int = 20000) -> str:
    return "".join(f"        server 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:80;\n" for i in range(lines))


def test_a_small_config_is_published_as_before() -> None:
    cfg = config("events {}\n", checkCmd=["true"])
    raw = encode_published(cfg)
    assert raw == cfg.model_dump_json(by_alias=True).encode()
    assert decode_published(raw) == cfg


def test_a_large_config_is_compressed_and_round_trips() -> None:
    cfg = config(big_body(), reloadCmd="nginx -s reload", configPath="/etc/nginx/nginx.conf")
    assert len(cfg.body) > COMPRESS_ABOVE
    raw = encode_published(cfg)
    document = json.loads(raw)
    assert document["format"] == FORMAT_COMPRESSED and "body" not in document
    assert document["hash"] == cfg.hash and document["generation"] == 7
    assert len(raw) < len(cfg.body) / 5
    assert decode_published(raw) == cfg
    header = decode_published(raw, body=False)
    assert header.body == "" and header.hash == cfg.hash and header.reload_cmd == "nginx -s reload"


def compressed(**changes: object) -> bytes:
    document = json.loads(encode_published(config(big_body())))
    document.update(changes)
    return json.dumps({k: v for k, v in document.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (compressed(format=3), "format 3"),
        (compressed(encoding="zstd"), "encoding 'zstd'"),
        (compressed(bodyZ="!!not base64!!"), "does not decode"),
        (compressed(bodyZ=base64.b64encode(b"not zlib").decode()), "does not decode"),
        (compressed(bodyZ=base64.b64encode(zlib.compress(b"other text")).decode()), "bodySha256"),
        (compressed(bodySha256=None), "lacks bodyZ or bodySha256"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"hash": "x", "generation": 1, "kind": "nginx"}).encode(), "not valid"),
    ],
)
def test_a_document_that_cannot_be_read_is_refused_with_the_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(PublishedFormatError, match=reason):
        decode_published(raw)


def test_a_format_2_document_is_refused_by_a_format_1_reader() -> None:
    """An older agent validates the document as a PublishedConfig: without ``body`` it refuses it."""
    with pytest.raises(ValueError, match="body"):
        PublishedConfig.model_validate(json.loads(encode_published(config(big_body()))))


def test_a_config_too_large_even_compressed_is_refused_at_publish() -> None:
    with pytest.raises(PublishedFormatError, match="above the 1,000 bytes"):
        encode_published(config(big_body()), limit=1000)


def hundred_thousand() -> PublishedConfig:
    """The nginx config of 10,000 services x 10 backends (100,000 keys), routed by host."""
    items = {}
    for n in range(10000):
        prefix = f"/services/s{n:05d}/"
        pairs = [(f"{prefix}{i}", f"10.{n >> 8 & 255}.{n & 255}.{i + 1}:80".encode()) for i in range(10)]
        items[f"s{n:05d}"] = (prefix, pairs)
    routes = [{"service": name, "host": f"{name}.example.com"} for name in items]
    spec = ProxySpec.model_validate({"kind": "nginx", "listen": 8080, "routes": routes})
    rendered = render("big", spec, collect_backends(items).valid, paths=RenderPaths("/var/lib/fleetop/big"))
    return rendered.published(spec, 1)


async def test_a_100k_key_config_goes_through_etcd_with_its_default_request_limit(
    etcd: Etcd, etcd_server: EtcdServer
) -> None:
    assert not any("max-request-bytes" in arg for arg in etcd_server.command())
    cfg = hundred_thousand()
    plain = cfg.model_dump_json(by_alias=True)
    assert len(plain) > 1_572_864  # etcd's default limit: the plain document would not fit
    with pytest.raises(FleetopError):
        await etcd.put("/proxies/big/plain", plain)
    raw = encode_published(cfg)
    await etcd.put("/proxies/big/config", raw)
    kv = await etcd.get("/proxies/big/config")
    assert kv is not None
    back = decode_published(kv.value)
    assert back == cfg
    assert back.body.count("server 10.") == 100_000


def rules(count: int) -> list[FollowedBackend]:
    return [
        FollowedBackend(
            service=f"s{n:05d}",
            prefix=f"/services/s{n:05d}/",
            revision=1000 + n,
            launched=["a", "b"] if n % 2 else None,
            networks=[["10.0.0.0/8", "127.0.0.0/8"]],
            block={"handler_header": True},
        )
        for n in range(count)
    ]


def test_follow_rules_round_trip_plain_and_compressed() -> None:
    small = config("global\n", kind="haproxy", follow=rules(3))
    raw = encode_published(small)
    assert b"followZ" not in raw and decode_published(raw) == small
    many = config("global\n", kind="haproxy", follow=rules(1000))  # a small body, many rules
    raw = encode_published(many)
    assert json.loads(raw)["format"] == FORMAT_COMPRESSED and b'"follow"' not in raw
    assert len(raw) < 20_000  # 1,000 rules plain are about 200 KB
    assert decode_published(raw) == many
    assert decode_published(raw, body=False).follow == []  # a header read skips them


def test_follow_rules_that_do_not_decode_are_refused() -> None:
    document = json.loads(encode_published(config("global\n", kind="haproxy", follow=rules(1000))))
    document["followZ"] = base64.b64encode(b"not zlib").decode()
    with pytest.raises(PublishedFormatError, match="followZ does not decode"):
        decode_published(json.dumps(document).encode())


async def test_a_100k_key_haproxy_config_with_its_follow_rules_goes_through_etcd(etcd: Etcd) -> None:
    nginx = hundred_thousand()
    cfg = nginx.model_copy(update={"kind": "haproxy", "follow": rules(10_000)})
    raw = encode_published(cfg)
    await etcd.put("/proxies/big/config", raw)
    kv = await etcd.get("/proxies/big/config")
    assert kv is not None and decode_published(kv.value) == cfg
