"""The published config's wire format at ``/fleetop/proxies/<name>/config``: plain JSON, or compressed.

etcd refuses a request larger than ``--max-request-bytes`` (1.5 MiB by default), and a config at
10,000 backends is 0.7 MB of text, at 100,000 backends 7 MB. Configs are very repetitive (the same
directives around each address), so zlib shrinks them about twentyfold: a body above
``COMPRESS_ABOVE`` is published compressed, which keeps 100,000 backends (7.2 MB of nginx config) in
one value of about 0.5 MB, one etcd write and one watch event, with no partial state an agent could
read half of. Small configs stay plain JSON (format 1, unchanged), readable with ``etcdctl get``.

Format 2 is JSON as well, with every field of format 1 but ``body`` and ``follow``::

    {"format": 2, "hash": ..., "generation": ..., "kind": ..., (checkCmd, reloadCmd, configPath),
     "encoding": "zlib", "bodySha256": <sha256 of the text>, "bodyZ": <base64 of zlib(text)>,
     ("followZ": <base64 of zlib(the follow list as JSON)>)}

``follow`` (the backends agents may follow themselves, one rule per routed service) repeats the same
networks and values for every service: 200 KB at 1,000 services, which every agent and every watcher
would receive with each change. Compressed it is a few KB; a document is compressed when the body and
the rules together exceed ``COMPRESS_ABOVE``. An agent that does not know ``followZ`` ignores it.

``format`` says how to read the document. An agent that meets a format it does not know, an
encoding it does not know, data that does not inflate or a text whose sha256 is not ``bodySha256``
reports why and applies nothing. An older agent (format 1 only) refuses a format 2 document too:
it has no ``body``. ``hash`` keeps its meaning in both formats (what agents compare and report).

A document that is still above ``MAX_VALUE`` compressed is refused at publish time with
:class:`PublishedFormatError`: the operator reports it and keeps the published config.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import zlib
from typing import Any

from pydantic import TypeAdapter, ValidationError

from fleetop.errors import ProxyError
from fleetop.models.status import FollowedBackend, PublishedConfig

FORMAT_PLAIN = 1
FORMAT_COMPRESSED = 2
FORMATS = (FORMAT_PLAIN, FORMAT_COMPRESSED)
ENCODING = "zlib"
COMPRESS_ABOVE = 64 * 1024
"""Bodies larger than this (bytes of UTF-8) are published compressed."""
MAX_VALUE = 1_400_000
"""The largest value published: etcd's default request limit is 1.5 MiB (1,572,864 bytes) for the
whole request, key and transaction included."""
_RULES = TypeAdapter(list[FollowedBackend])
_LEVEL = 1  # zlib's fastest: 19x on a 10,000-backend config in 2 ms (level 6: 20x in 4 ms)


class PublishedFormatError(ProxyError):
    """A published config that cannot be written (too large) or read (unknown format, corrupt data)."""


def encode_published(
    config: PublishedConfig,
    *,
    compress_above: int = COMPRESS_ABOVE,
    limit: int = MAX_VALUE,
    body_sha256: str | None = None,
) -> bytes:
    """The value to put in etcd for ``config``. ``body_sha256``: the body's sha256 when the caller
    has it already (the render's hash), so a large body is not hashed twice."""
    text = config.body.encode("utf-8")
    rules = _follow_json(config)
    if len(text) + len(rules) <= compress_above:
        value = config.model_dump_json(by_alias=True).encode()
    else:
        header: dict[str, Any] = config.model_dump(by_alias=True, exclude={"body", "follow"})
        packed = base64.b64encode(zlib.compress(text, _LEVEL)).decode("ascii")
        header.update(
            format=FORMAT_COMPRESSED,
            encoding=ENCODING,
            bodySha256=body_sha256 or hashlib.sha256(text).hexdigest(),
            bodyZ=packed,
        )
        if rules:
            header["followZ"] = base64.b64encode(zlib.compress(rules, _LEVEL)).decode("ascii")
        value = json.dumps(header, separators=(",", ":")).encode()
    if len(value) > limit:
        raise PublishedFormatError(
            f"the config is {len(text):,} bytes and {len(value):,} bytes published, above the "
            f"{limit:,} bytes one etcd request may carry"
        )
    return value


def decode_published(raw: bytes, *, body: bool = True) -> PublishedConfig:
    """The config in ``raw`` (either format). ``body=False`` skips inflating a compressed body (the
    result has ``body=""``): enough to compare hashes and generations."""
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise PublishedFormatError(f"the published config is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise PublishedFormatError("the published config is not a JSON object")
    version = document.pop("format", FORMAT_PLAIN)
    if version not in FORMATS:
        raise PublishedFormatError(
            f"the published config has format {version!r}; this agent reads formats "
            f"{', '.join(map(str, FORMATS))} (is the operator newer than the agent?)"
        )
    if version == FORMAT_COMPRESSED:
        document["body"] = _inflate(document, body)
        rules = document.pop("followZ", None)
        if rules is not None and body:
            document["follow"] = _inflate_follow(rules)
    try:
        return PublishedConfig.model_validate(document)
    except ValidationError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PublishedFormatError(f"the published config is not valid: {first}") from None


def _inflate(document: dict[str, Any], wanted: bool) -> str:
    encoding = document.pop("encoding", None)
    digest = document.pop("bodySha256", None)
    packed = document.pop("bodyZ", None)
    if encoding != ENCODING:
        raise PublishedFormatError(f"the published config has encoding {encoding!r}, not {ENCODING!r}")
    if not isinstance(packed, str) or not isinstance(digest, str):
        raise PublishedFormatError("the published config (format 2) lacks bodyZ or bodySha256")
    if not wanted:
        return ""
    try:
        text = zlib.decompress(base64.b64decode(packed, validate=True))
    except (binascii.Error, zlib.error) as exc:
        raise PublishedFormatError(f"the published config's body does not decode: {exc}") from None
    if hashlib.sha256(text).hexdigest() != digest:
        raise PublishedFormatError("the published config's body does not match its bodySha256")
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        raise PublishedFormatError("the published config's body is not UTF-8") from None


def _follow_json(config: PublishedConfig) -> bytes:
    """The follow rules as JSON (empty when there are none)."""
    if not config.follow:
        return b""
    return _RULES.dump_json(config.follow, by_alias=True)


def _inflate_follow(packed: object) -> Any:
    if not isinstance(packed, str):
        raise PublishedFormatError("the published config's followZ is not a string")
    try:
        return json.loads(zlib.decompress(base64.b64decode(packed, validate=True)))
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise PublishedFormatError(f"the published config's followZ does not decode: {exc}") from None
