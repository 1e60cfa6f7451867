"""The pure half of the node's API: fleet's page tokens, and JSON read and written the way fleet's Go code
does it, with Go's error messages.

Kept apart from ``api.py`` (which does the HTTP) so every rule here is a plain function with a table of
tests. Sources: ``fleet-observed.md`` §4 (decoding), §6 (messages), §7 (pagination), §11 (PATCH).
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fleetop.fleet.units import UnitOption

TOKEN_LIMIT = 100
T = TypeVar("T")
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64_INDEX = {c: i for i, c in enumerate(_B64)}


class WireError(ValueError):
    """A request fleet would refuse with 400; ``str()`` is fleet's message."""


# -- page tokens ------------------------------------------------------------------------------------


def encode_token(page: int, limit: int = TOKEN_LIMIT) -> str:
    """URL-safe base64 of two little-endian uint16, ``{Limit, Page}``: page 2 is ``ZAACAA==``."""
    return base64.urlsafe_b64encode(struct.pack("<HH", limit & 0xFFFF, page & 0xFFFF)).decode()


def _go_b64decode(text: str) -> bytes:
    """Go's ``base64.URLEncoding.DecodeString`` with its ``illegal base64 data at input byte N``."""
    src = text.encode("latin-1", errors="replace")
    out = bytearray()
    si = 0
    while si < len(src):
        quantum: list[int] = []
        while len(quantum) < 4:
            if si == len(src):
                if not quantum:
                    return bytes(out)
                raise WireError(f"illegal base64 data at input byte {si - len(quantum)}")
            char = chr(src[si])
            si += 1
            if char in _B64_INDEX:
                quantum.append(_B64_INDEX[char])
                continue
            if char in "\r\n":
                continue
            if char != "=" or len(quantum) < 2:
                raise WireError(f"illegal base64 data at input byte {si - 1}")
            if len(quantum) == 2:
                while si < len(src) and chr(src[si]) in "\r\n":
                    si += 1
                if si == len(src):
                    raise WireError(f"illegal base64 data at input byte {len(src)}")
                if chr(src[si]) != "=":
                    raise WireError(f"illegal base64 data at input byte {si - 1}")
                si += 1
            while si < len(src) and chr(src[si]) in "\r\n":
                si += 1
            if si < len(src):
                raise WireError(f"illegal base64 data at input byte {si}")
            break
        value = 0
        for index, digit in enumerate(quantum):
            value |= digit << (18 - 6 * index)
        out.extend(value.to_bytes(3, "big")[: max(0, len(quantum) - 1)])
        if len(quantum) < 4:
            return bytes(out)
    return bytes(out)


def page_from_query(values: Sequence[str], limit: int = TOKEN_LIMIT) -> int:
    """The page asked for by the ``nextPageToken`` query values (1 when absent). Raises WireError
    with fleet's messages: too many values, bad base64, EOF, token limit, page zero."""
    if not values:
        return 1
    if len(values) > 1:
        raise WireError("too many values for page token")
    raw = _go_b64decode(values[0])
    if not raw:
        raise WireError("EOF")
    if len(raw) < 4:
        raise WireError("unexpected EOF")
    token_limit, page = struct.unpack("<HH", raw[:4])
    if token_limit != limit:
        raise WireError(f"token limit must be {limit}")
    if page == 0:
        raise WireError("token page must be greater than zero")
    return int(page)


def paginate(items: Sequence[T], page: int, limit: int = TOKEN_LIMIT) -> tuple[list[T], str | None]:
    """fleet's page extraction: a full page always carries the next token, even at the very end."""
    start, stop = (page - 1) * limit, page * limit
    if start >= len(items):
        return [], None
    if stop > len(items):
        return list(items[start:]), None
    return list(items[start:stop]), encode_token(page + 1, limit)


def page_body(key: str, items: list[dict[str, Any]], token: str | None) -> dict[str, Any]:
    """A page as fleet serves it: ``{}`` when empty; keys in Go struct order."""
    body: dict[str, Any] = {}
    if items:
        body[key] = items
    if token:
        body["nextPageToken"] = token
    return body


# -- JSON the Go way --------------------------------------------------------------------------------


def go_json(value: Any) -> bytes:
    """``json.Marshal``: compact, UTF-8, with Go's HTML-safe escapes of < > & U+2028 U+2029."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode("utf-8")


def error_body(code: int, message: str = "") -> bytes:
    return go_json({"error": {"code": code, "message": message}})


_SYNTAX_CONTEXT = {
    "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
    "Expecting ':' delimiter": "after object key",
    "Expecting ',' delimiter": "after object key:value pair",
    "Expecting value": "looking for beginning of value",
}


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def go_decode(body: bytes) -> Any:
    """Decode the first JSON value of ``body`` like Go's ``json.Decoder.Decode`` (trailing data is
    ignored). Raises WireError with Go's ``EOF`` / ``unexpected EOF`` / ``invalid character`` text."""
    text = body.decode("utf-8", errors="replace")
    start = len(text) - len(text.lstrip(" \t\r\n"))
    if start == len(text):
        raise WireError("EOF")
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    try:
        value, _ = decoder.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip(" \t\r\n")) or exc.msg.startswith("Unterminated string"):
            raise WireError("unexpected EOF") from exc
        char = text[exc.pos]
        context = _SYNTAX_CONTEXT.get(exc.msg, "looking for beginning of value")
        raise WireError(f"invalid character {char!r} {context}") from exc
    except ValueError as exc:
        raise WireError("invalid character 'N' looking for beginning of value") from exc
    return value


def go_kind(value: Any) -> str:
    """The JSON kind Go names in ``cannot unmarshal <kind> into ...``."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_error(value: Any, where: str, go_type: str) -> WireError:
    return WireError(f"json: cannot unmarshal {go_kind(value)} into {where} of type {go_type}")


def _fold(obj: dict[str, Any]) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in obj.items()}


def _string_field(obj: dict[str, Any], key: str, struct_name: str, errors: list[WireError]) -> str:
    value = obj.get(key.lower())
    if value is None:
        return ""
    if not isinstance(value, str):
        errors.append(_type_error(value, f"Go struct field {struct_name}.{key}", "string"))
        return ""
    return value


@dataclass(frozen=True, slots=True)
class UnitBody:
    """The fields of a PUT /units body the server reads (read-only ones are ignored)."""

    name: str
    desired_state: str
    options: tuple[UnitOption, ...]


def decode_unit_body(value: Any) -> UnitBody:
    """A decoded JSON value as ``schema.Unit``. Like Go, type errors do not stop decoding; the first one
    is raised at the end (the caller prefixes ``unable to decode body: ``)."""
    if value is None:
        return UnitBody("", "", ())
    if not isinstance(value, dict):
        raise _type_error(value, "Go value", "schema.Unit")
    errors: list[WireError] = []
    obj = _fold(value)
    for readonly in ("currentState", "machineID"):
        _string_field(obj, readonly, "Unit", errors)
    name = _string_field(obj, "name", "Unit", errors)
    desired = _string_field(obj, "desiredState", "Unit", errors)
    options: list[UnitOption] = []
    raw = obj.get("options")
    if raw is not None and not isinstance(raw, list):
        errors.append(_type_error(raw, "Go struct field Unit.options", "[]*schema.UnitOption"))
    for item in raw if isinstance(raw, list) else []:
        if item is None:
            continue
        if not isinstance(item, dict):
            errors.append(_type_error(item, "Go struct field Unit.options", "schema.UnitOption"))
            continue
        fields = _fold(item)
        section, opt_name, opt_value = (
            _string_field(fields, key, "Unit.options", errors) for key in ("section", "name", "value")
        )
        options.append(UnitOption(section, opt_name, opt_value))
    if errors:
        raise errors[0]
    return UnitBody(name, desired, tuple(options))


_VALUE_TYPE = 'struct { Value string "json:\\"value\\"" }'


@dataclass(frozen=True, slots=True)
class MetadataPatch:
    """One decoded ``machineMetadataOp``."""

    op: str
    path: str
    value: str


def decode_metadata_ops(value: Any) -> list[MetadataPatch]:
    """A decoded JSON value as ``[]api.machineMetadataOp`` (the value wrapped as ``{"value": ...}``)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _type_error(value, "Go value", "[]api.machineMetadataOp")
    errors: list[WireError] = []
    ops: list[MetadataPatch] = []
    for item in value:
        if item is None:
            ops.append(MetadataPatch("", "", ""))
            continue
        if not isinstance(item, dict):
            errors.append(_type_error(item, "Go value", "api.machineMetadataOp"))
            continue
        obj = _fold(item)
        op = _string_field(obj, "op", "machineMetadataOp", errors)
        path = _string_field(obj, "Path", "machineMetadataOp", errors)
        wrapped = obj.get("value")
        inner = ""
        if isinstance(wrapped, dict):
            inner = _string_field(_fold(wrapped), "value", "machineMetadataOp.Value", errors)
        elif wrapped is not None:
            errors.append(_type_error(wrapped, "Go struct field machineMetadataOp.Value", _VALUE_TYPE))
        ops.append(MetadataPatch(op, path, inner))
    if errors:
        raise errors[0]
    return ops
