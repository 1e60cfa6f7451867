"""Read ``apply -f`` / ``diff -f`` input: JSON or YAML, one or several documents, from a file or stdin.

Errors name the file, the document number and, for YAML, the line, so a mistake in the fifth document
of a long file can be found at once. Nothing is written unless every document is valid. Each document
then goes through the same bounds and checks as a spec the operator reads from etcd (duplicate keys
are refused in YAML too: "the last one wins" hides mistakes).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fleetop.errors import InputError, SpecInvalid
from fleetop.models import ProxySpec, ServiceSpec, parse_spec
from fleetop.models.parse import Limits, decode_document
from fleetop.store import Kind, kind_of

FILE_LIMITS = Limits(document_bytes=64 * 1024 * 1024, depth=17, entries=100_000, nodes=10_000_000)
"""A file holds many documents; each is then held to the spec bounds on its own."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that names a key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                mark = key_node.start_mark
                raise yaml.MarkedYAMLError(
                    problem=f"duplicate key {key!r} (a key may appear once in a mapping)", problem_mark=mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


@dataclass(frozen=True)
class Document:
    where: str
    kind: Kind
    name: str
    spec: ServiceSpec | ProxySpec


def read_source(path: str) -> tuple[str, str]:
    """(text, display name) of ``path`` or ``-`` for standard input."""
    if path == "-":
        return sys.stdin.read(), "<stdin>"
    try:
        return Path(path).read_text(encoding="utf-8"), path
    except FileNotFoundError:
        raise InputError("no such file", where=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {exc}", where=path) from exc


def split_documents(text: str, source: str) -> list[tuple[str, Any]]:
    """Decoded documents with their place: JSON (an object or a list of objects) or multi-document YAML."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        data = decode_document(text, source, FILE_LIMITS)
        items = data if isinstance(data, list) else [data]
    else:
        try:
            items = list(yaml.load_all(text, Loader=_UniqueKeyLoader))  # a SafeLoader subclass
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            place = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
            raise InputError(f"invalid YAML{place}: {exc.problem}", where=source) from exc
        except yaml.YAMLError as exc:
            raise InputError(f"invalid YAML: {exc}", where=source) from exc
    documents = [item for item in items if item is not None]
    if not documents:
        raise InputError("no documents found", where=source)
    many = len(documents) > 1
    return [(f"{source} (document {i})" if many else source, doc) for i, doc in enumerate(documents, start=1)]


def to_document(where: str, data: Any) -> Document:
    """One validated document; ``metadata`` and ``status`` (as ``get -o yaml`` prints them) are ignored."""
    spec = parse_spec(data, where=where)
    assert spec.name is not None
    return Document(where, kind_of(spec), spec.name, spec)


def load_documents(path: str) -> list[Document]:
    """Every document in ``path``, all validated first; the first invalid one raises, with all its errors."""
    text, source = read_source(path)
    documents: list[Document] = []
    seen: set[tuple[str, str]] = set()
    for where, data in split_documents(text, source):
        document = to_document(where, data)
        if (document.kind, document.name) in seen:
            raise SpecInvalid([("$.name", f"{document.kind} {document.name!r} appears twice")], where=where)
        seen.add((document.kind, document.name))
        documents.append(document)
    return documents
