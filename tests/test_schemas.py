"""crds/*.schema.json are generated from the models; this fails when they drift."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetop.schemas import schema_documents, schema_text

CRDS = Path(__file__).resolve().parent.parent / "crds"


@pytest.mark.parametrize("name", sorted(schema_documents()))
def test_checked_in_schema_matches_models(name: str) -> None:
    path = CRDS / f"{name}.schema.json"
    assert path.is_file(), f"{path} is missing: run `fleetop schema --write`"
    assert path.read_text() == schema_text(schema_documents()[name]), (
        f"{path} drifted from the models: run `fleetop schema --write`"
    )


def test_schemas_declare_their_dialect_and_reject_unknown_fields() -> None:
    spec = json.loads((CRDS / "servicespec.schema.json").read_text())
    assert spec["$schema"].startswith("https://json-schema.org/")
    assert spec["additionalProperties"] is False
    assert "execStart" in spec["$defs"]["UnitSpec"]["properties"]
    assert spec["required"] == ["unit"]
