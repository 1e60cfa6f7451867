"""Turn JSON text or decoded documents into specs, with errors that name the JSON path.

A spec written raw with ``etcdctl put`` and one written by ``fleetop apply`` go through the same
functions, so they are read exactly alike.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from fleetop.errors import SpecInvalid
from fleetop.models.base import check_name
from fleetop.models.proxy import ProxySpec
from fleetop.models.service import ServiceSpec

SPEC_KINDS: dict[str, type[ServiceSpec] | type[ProxySpec]] = {"Service": ServiceSpec, "Proxy": ProxySpec}
M = TypeVar("M", bound=BaseModel)


def json_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's ``loc`` → ``$.unit.execStart`` / ``$.routes[0].host``."""
    path = "$"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-", "union[", "list[", "int", "str", "literal[")) or "[" in part:
            continue
        else:
            path += f".{part}"
    return path


def validation_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """(JSON path, message) for each error, in a form a person can act on."""
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
            out.append((path, message))
    return out


def decode_json(text: str | bytes, where: str) -> Any:
    """Decode JSON with an error that names the line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecInvalid(
            [("$", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")], where=where
        ) from exc
    except UnicodeDecodeError as exc:
        raise SpecInvalid([("$", "value is not UTF-8 text")], where=where) from exc


def _validate(model: type[M], data: Any, where: str) -> M:
    if not isinstance(data, dict):
        raise SpecInvalid([("$", f"expected a JSON object, got {type(data).__name__}")], where=where)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecInvalid(validation_errors(exc), where=where) from exc


def _check_name(body_name: str | None, name: str | None, where: str) -> None:
    if name is not None and body_name is not None and body_name != name:
        raise SpecInvalid(
            [("$.name", f"name {body_name!r} differs from the key's name {name!r}")], where=where
        )


def parse_service(
    data: str | bytes | dict[str, Any], *, name: str | None = None, where: str = ""
) -> ServiceSpec:
    """A ServiceSpec from JSON text or a decoded object; ``name`` is the key's name, if known."""
    decoded = decode_json(data, where) if isinstance(data, str | bytes) else data
    spec = _validate(ServiceSpec, decoded, where)
    _check_name(spec.name, name, where)
    return spec


def parse_proxy(data: str | bytes | dict[str, Any], *, name: str | None = None, where: str = "") -> ProxySpec:
    """A ProxySpec from JSON text or a decoded object; ``name`` is the key's name, if known."""
    decoded = decode_json(data, where) if isinstance(data, str | bytes) else data
    spec = _validate(ProxySpec, decoded, where)
    _check_name(spec.name, name, where)
    return spec


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
    if kind not in SPEC_KINDS:
        raise _reject("$.kind", f"kind must be one of {', '.join(SPEC_KINDS)}, got {kind!r}", where)
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
    return json.dumps(spec_document(spec), separators=(",", ":")).encode()
