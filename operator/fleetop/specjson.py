"""A spec's stored form and its digest, standard library only.

Specs are stored as compact JSON (:func:`encode_document`; ``fleetop.models.parse.encode_spec`` writes
the models' normal form of a spec this way). The operator's status names the spec it judged valid by
the sha256 of that normal form (``specHash``, :func:`digest`), so the CLI can tell, without the models,
that a stored value is already in the normal form: its JSON re-encoded here has that digest.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def encode_document(document: Any) -> bytes:
    """A spec document as stored: compact JSON (ASCII, ``\\uXXXX`` escapes, keys in document order)."""
    return json.dumps(document, separators=(",", ":")).encode()


def digest(encoded: bytes) -> str:
    """``specHash``: the sha256 (hex) of a stored form."""
    return hashlib.sha256(encoded).hexdigest()
