"""JSON Schemas of the public contract, generated from the models and checked in under ``crds/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fleetop.models import Event, ProxySpec, ProxyStatus, ServiceSpec, ServiceStatus
from fleetop.models.status import AgentStatus, PublishedConfig

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
MODELS: dict[str, type[BaseModel]] = {
    "servicespec": ServiceSpec,
    "proxyspec": ProxySpec,
    "servicestatus": ServiceStatus,
    "proxystatus": ProxyStatus,
    "agentstatus": AgentStatus,
    "publishedconfig": PublishedConfig,
    "event": Event,
}


def schema_of(name: str, model: type[BaseModel]) -> dict[str, Any]:
    body = model.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": SCHEMA_DIALECT, "$id": f"fleetop/{name}.schema.json", **body}


def schema_documents() -> dict[str, dict[str, Any]]:
    return {name: schema_of(name, model) for name, model in MODELS.items()}


def schema_text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in schema_documents().items():
        path = directory / f"{name}.schema.json"
        path.write_text(schema_text(document), encoding="utf-8")
        written.append(path)
    return written
