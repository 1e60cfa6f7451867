"""``fleetop patch``: RFC 6902 JSON Patch (through jsonpatch) and RFC 7386 JSON Merge Patch, applied to
the stored document as the user wrote it, so only what the patch names changes."""

from __future__ import annotations

import copy
from typing import Any, Literal

import jsonpatch

from fleetop.errors import InputError
from fleetop.models.parse import decode_document

PatchType = Literal["json", "merge"]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_patch(document: dict[str, Any], patch_text: str, patch_type: PatchType) -> dict[str, Any]:
    """The patched document; a malformed patch or one that does not apply → InputError naming why."""
    patch = decode_document(patch_text, "--patch")  # bounded, duplicate keys refused, as a spec is
    if patch_type == "merge":
        if not isinstance(patch, dict):
            raise InputError("a merge patch must be a JSON object", where="--patch")
        result = merge_patch(document, patch)
    else:
        if not isinstance(patch, list):
            raise InputError("a JSON patch must be a list of operations", where="--patch")
        try:
            result = jsonpatch.apply_patch(document, patch, in_place=False)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise InputError(f"patch does not apply: {exc}", where="--patch") from exc
        except (TypeError, KeyError, AttributeError) as exc:
            raise InputError(f"malformed patch operation: {exc}", where="--patch") from exc
    if not isinstance(result, dict):
        raise InputError("the patched document is not an object", where="--patch")
    return result
