"""Turn JSON text or decoded documents into specs, with errors that name the JSON path.

A spec written raw with ``etcdctl put``, one written by ``fleetop apply`` and one changed by ``patch``
or ``scale`` go through the same functions (:func:`parse_service`, :func:`parse_proxy`), key name
included, so they are read exactly alike.

Anyone who may write ``/desired`` is a client of the operator, and one value must not be able to stop
it: a spec is read with bounds (:data:`SPEC_LIMITS`: document size, nesting depth, string and key
lengths, entries per list or map, nodes in all) before pydantic sees it, each refused with the JSON
path and the limit; duplicate keys in an object are refused (JSON's "last one wins" hides mistakes);
``NaN``/``Infinity`` are not JSON and are refused. The walk is iterative, so no document can exhaust
the stack, and :func:`decode_json` turns any failure of the decoder (``RecursionError`` included)
into :class:`SpecInvalid`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from fleetop import specjson
from fleetop.errors import SpecInvalid
from fleetop.models.base import check_name, shown
from fleetop.models.service import ServiceSpec

if TYPE_CHECKING:
    from fleetop.models.proxy import ProxySpec

    SPEC_KINDS: dict[str, type[ServiceSpec] | type[ProxySpec]]

SPEC_KIND_NAMES = ("Service", "Proxy")
M = TypeVar("M", bound=BaseModel)
MAX_REPORTED = 10
"""Errors listed in one SpecInvalid (the rest are counted): a status message stays readable."""
_TYPE_TAGS = frozenset({"int", "str", "float", "bool", "list", "dict"})
_TAG_PREFIXES = ("function-", "union[", "literal[", "constrained-")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class Limits:
    """Bounds on a decoded document, checked before validation (the models bound each field)."""

    document_bytes: int = 1024 * 1024
    """etcd refuses requests over 1.5 MiB anyway; a proxy routing 10,000 services takes about 600 KiB."""
    depth: int = 16
    """A spec is at most 5 levels deep (an apply document 6)."""
    string_chars: int = 64 * 1024
    """The longest field is a proxy's template (64 KiB); the models bound each field further."""
    key_chars: int = 256
    entries: int = 10_000
    """A proxy may route up to 10,000 services; other lists and maps are bounded lower by the models."""
    nodes: int = 100_000


SPEC_LIMITS = Limits()


class _Pairs(dict[str, Any]):
    """An object as decoded, remembering keys that appeared more than once."""

    duplicates: list[str]


def _pairs(items: list[tuple[str, Any]]) -> _Pairs:
    out = _Pairs()
    out.duplicates = []
    for key, value in items:
        if key in out and key not in out.duplicates:
            out.duplicates.append(key)
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def path_key(path: str, key: object) -> str:
    """``$.a`` + ``b`` → ``$.a.b``; keys that are not plain words are quoted (and shortened)."""
    text = str(key)
    if _IDENT_RE.match(text) and len(text) <= 64:
        return f"{path}.{text}"
    return f"{path}[{json.dumps(shown(text, 64))}]"


def check_limits(data: Any, limits: Limits = SPEC_LIMITS) -> list[tuple[str, str]]:
    """(JSON path, message) for each bound ``data`` exceeds and each duplicate key, in document order
    (at most :data:`MAX_REPORTED`). Iterative: a document nested beyond any depth is walked safely."""
    errors: list[tuple[str, str]] = []
    nodes = 0
    stack: list[tuple[str, Any, int]] = [("$", data, 0)]
    while stack and len(errors) < MAX_REPORTED:
        path, value, depth = stack.pop()
        nodes += 1
        if nodes > limits.nodes:
            errors.append(("$", f"more than {limits.nodes} values in one document (the limit)"))
            break
        if isinstance(value, dict | list):
            if depth >= limits.depth:
                errors.append((path, f"nested deeper than {limits.depth} levels (the limit)"))
                continue
            if len(value) > limits.entries:
                errors.append((path, f"{len(value)} entries, at most {limits.entries}"))
                continue
            children = list(_children(path, value, limits, errors))
            stack.extend((child, item, depth + 1) for child, item in reversed(children))
        elif isinstance(value, str) and len(value) > limits.string_chars:
            errors.append((path, f"a string of {len(value)} characters, at most {limits.string_chars}"))
        elif isinstance(value, float) and not math.isfinite(value):
            errors.append((path, "not a finite number"))
    return errors[:MAX_REPORTED]


def _children(
    path: str, value: dict[Any, Any] | list[Any], limits: Limits, errors: list[tuple[str, str]]
) -> Iterator[tuple[str, Any]]:
    if isinstance(value, list):
        yield from ((f"{path}[{index}]", item) for index, item in enumerate(value))
        return
    for key in getattr(value, "duplicates", ()):
        errors.append((path_key(path, key), "duplicate key (a key may appear once in an object)"))
    for key, item in value.items():
        if not isinstance(key, str):
            errors.append((path_key(path, key), "keys must be strings"))
        elif len(key) > limits.key_chars:
            errors.append(
                (path_key(path, key), f"a key of {len(key)} characters, at most {limits.key_chars}")
            )
        else:
            yield path_key(path, key), item


def json_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's ``loc`` → ``$.unit.execStart`` / ``$.routes[0].host``."""
    path = "$"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _TYPE_TAGS or part.startswith(_TAG_PREFIXES) or "[" in part:
            continue  # pydantic's names of union members and validators, not fields
        else:
            path = path_key(path, part)
    return path


def validation_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """(JSON path, message) for each error, in a form a person can act on (at most MAX_REPORTED, the
    rest counted)."""
    out: list[tuple[str, str]] = []
    for error in exc.errors(include_url=False):
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "missing":
            message = "required field is missing"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        path = json_path(tuple(error["loc"]))
        if (path, message) not in out:
            out.append((path, shown(message, 500)))
    if len(out) > MAX_REPORTED:
        out = [*out[: MAX_REPORTED - 1], ("$", f"and {len(out) - MAX_REPORTED + 1} more errors")]
    return out


def decode_json(text: str | bytes, where: str) -> Any:
    """Decode JSON with an error that names the line and column. Never raises anything but
    SpecInvalid for bad input, however deep or large (``RecursionError`` included)."""
    return _decode(text, where, None)


def decode_document(text: str | bytes, where: str, limits: Limits = SPEC_LIMITS) -> Any:
    """Decode a spec's JSON within ``limits``: size first, then duplicate keys, depth, lengths, counts."""
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > limits.document_bytes:
        raise SpecInvalid(
            [("$", f"a document of {size} bytes, at most {limits.document_bytes}")], where=where
        )
    data = _decode(text, where, limits)
    errors = check_limits(data, limits)
    if errors:
        raise SpecInvalid(errors, where=where)
    return data


def _decode(text: str | bytes, where: str, limits: Limits | None) -> Any:
    try:
        if limits is None:
            return json.loads(text)
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise SpecInvalid(
            [("$", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")], where=where
        ) from exc
    except UnicodeDecodeError as exc:
        raise SpecInvalid([("$", "value is not UTF-8 text")], where=where) from exc
    except RecursionError as exc:
        depth = limits.depth if limits is not None else SPEC_LIMITS.depth
        raise SpecInvalid([("$", f"nested deeper than {depth} levels (the limit)")], where=where) from exc
    except (ValueError, MemoryError) as exc:
        raise SpecInvalid([("$", f"cannot be read: {shown(str(exc), 200)}")], where=where) from exc


def _validate(model: type[M], data: Any, where: str) -> M:
    if not isinstance(data, dict):
        raise SpecInvalid([("$", f"expected a JSON object, got {type(data).__name__}")], where=where)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecInvalid(validation_errors(exc), where=where) from exc


def check_key_name(name: str, where: str) -> None:
    """The name in a ``/desired/...`` key obeys the same rule as a name in a document."""
    try:
        check_name(name)
    except ValueError as exc:
        raise SpecInvalid([("$.name", f"{exc} (the name in the key)")], where=where) from None


def _check_name(body_name: str | None, name: str | None, where: str) -> None:
    if name is not None and body_name is not None and body_name != name:
        raise SpecInvalid(
            [("$.name", f"name {shown(body_name)!r} differs from the key's name {shown(name)!r}")],
            where=where,
        )


def _parse(model: type[M], data: str | bytes | dict[str, Any], name: str | None, where: str) -> M:
    if name is not None:
        check_key_name(name, where)
    if isinstance(data, str | bytes):
        decoded = decode_document(data, where)
    else:
        errors = check_limits(data)
        if errors:
            raise SpecInvalid(errors, where=where)
        decoded = data
    spec = _validate(model, decoded, where)
    _check_name(getattr(spec, "name", None), name, where)
    return spec


def parse_service(
    data: str | bytes | dict[str, Any], *, name: str | None = None, where: str = ""
) -> ServiceSpec:
    """A ServiceSpec from JSON text or a decoded object; ``name`` is the key's name, if known (it is
    checked like any name). Every path in (etcd, apply, patch, scale) reads specs through here."""
    return _parse(ServiceSpec, data, name, where)


def parse_proxy(data: str | bytes | dict[str, Any], *, name: str | None = None, where: str = "") -> ProxySpec:
    """A ProxySpec from JSON text or a decoded object; ``name`` is the key's name, if known."""
    from fleetop.models.proxy import ProxySpec  # built when a proxy is first read

    return _parse(ProxySpec, data, name, where)


def __getattr__(name: str) -> Any:
    """``SPEC_KINDS`` (kind → model), made when first asked for: reading services builds no proxy model."""
    if name == "SPEC_KINDS":
        from fleetop.models.proxy import ProxySpec

        return {"Service": ServiceSpec, "Proxy": ProxySpec}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


ENVELOPE_FIELDS = ("kind", "name", "metadata", "spec", "status")


def _reject(path: str, message: str, where: str) -> SpecInvalid:
    return SpecInvalid([(path, message)], where=where)


def parse_spec(document: Any, *, where: str = "") -> ServiceSpec | ProxySpec:
    """An ``apply`` document: ``{kind: Service|Proxy, name: ..., spec: {...}}`` (``metadata`` and
    ``status``, as ``get -o yaml`` prints them, are ignored). Errors inside the spec name ``$.spec...``."""
    if not isinstance(document, dict):
        raise _reject("$", f"expected a mapping, got {type(document).__name__}", where)
    for key in document:
        if key not in ENVELOPE_FIELDS:
            raise _reject(f"$.{key}", "unknown field (a document has kind, name and spec)", where)
    kind = document.get("kind")
    if kind not in SPEC_KIND_NAMES:
        raise _reject("$.kind", f"kind must be one of {', '.join(SPEC_KIND_NAMES)}, got {kind!r}", where)
    name = document.get("name")
    if name is None and isinstance(document.get("metadata"), dict):
        name = document["metadata"].get("name")
    if not isinstance(name, str):
        raise _reject("$.name", "required field is missing (the name of the service or proxy)", where)
    body = document.get("spec")
    if not isinstance(body, dict):
        raise _reject("$.spec", "required: a mapping with the spec's fields", where)
    try:
        check_name(name)
        if kind == "Service":
            return parse_service({**body, "name": body.get("name", name)}, name=name, where=where)
        return parse_proxy({**body, "name": body.get("name", name)}, name=name, where=where)
    except ValueError as exc:
        raise _reject("$.name", str(exc), where) from exc
    except SpecInvalid as exc:
        raise SpecInvalid([("$.spec" + p[1:], m) for p, m in exc.errors], where=where) from exc


def spec_document(spec: ServiceSpec | ProxySpec) -> dict[str, Any]:
    """The stored form: camelCase, defaults left out, without ``name`` (the key names it)."""
    data: dict[str, Any] = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    data.pop("name", None)
    return data


def encode_spec(spec: ServiceSpec | ProxySpec) -> bytes:
    """The bytes written to ``/desired/...``: compact JSON of :func:`spec_document`."""
    return encode_document(spec_document(spec))


def encode_document(document: dict[str, Any]) -> bytes:
    """A spec document as stored: compact JSON (:func:`fleetop.specjson.encode_document`)."""
    return specjson.encode_document(document)


def spec_hash(spec: ServiceSpec | ProxySpec) -> str:
    """What a status names the spec it judged by (``specHash``): the sha256 of :func:`encode_spec`."""
    return specjson.digest(encode_spec(spec))
