"""The JSON schema (draft 2020-12) of a manifest; ``data_manifests/manifest.schema.json`` is its output."""

from __future__ import annotations

from monai_ms.data.fields import (
    AGE_RANGE,
    EDSS_RANGE,
    EDSS_STEP,
    MODALITY_KEYS,
    MODALITY_NAMES,
    REQUIRED_KEYS,
    SEX_PATTERN,
    SPLITS,
)
from monai_ms.data.manifest_io import FORMAT_VERSION

__all__ = ["manifest_schema"]

def manifest_schema() -> dict:
    """Return the JSON schema (draft 2020-12) of a manifest; ``data_manifests/manifest.schema.json`` is this.

    The schema says what a manifest looks like; ``validate_manifest`` checks more (files, voxels,
    leakage between splits, keys a task needs).

    Returns:
        the schema as a ``dict``.

    Examples:
        >>> import jsonschema  # doctest: +SKIP
        >>> jsonschema.validate(read_manifest("manifest.json"), manifest_schema())  # doctest: +SKIP
    """
    path_schema = {"type": "string", "minLength": 1}
    entry = {
        "type": "object",
        "description": "one scan session",
        "required": list(REQUIRED_KEYS),
        "properties": {
            "subject": {"type": "string", "minLength": 1, "description": "patient id; splits never share a subject"},
            "session": {"type": "string", "minLength": 1, "description": "scan session id, unique in the manifest"},
            "t1": path_schema | {"description": "T1-weighted NIfTI, relative to the manifest's folder or absolute"},
            **{
                key: path_schema | {"description": f"{MODALITY_NAMES[key]}-weighted NIfTI (any grid; it is resampled onto the T1)"}
                for key in MODALITY_KEYS[1:]
            },
            "lesion": path_schema | {"description": "binary (0/1) lesion mask on the T1 grid"},
            "tissue": path_schema | {"description": "integer tissue label map on the T1 grid"},
            "age": {
                "type": "number",
                "minimum": AGE_RANGE[0],
                "maximum": AGE_RANGE[1],
                "description": "age at scan, years",
            },
            "sex": {
                "type": "string",
                "pattern": SEX_PATTERN,
                "description": "F/M (female/male accepted in any case; build writes F/M)",
            },
            "edss": {
                "type": "number",
                "minimum": EDSS_RANGE[0],
                "maximum": EDSS_RANGE[1],
                "multipleOf": EDSS_STEP,
                "description": "Expanded Disability Status Scale",
            },
            "scanner": {"type": "string", "description": "e.g. field strength 1.5T / 3T"},
            "scan_date": {"type": "string", "description": "ISO date of the scan"},
            "fold": {"type": "integer", "minimum": 0, "description": "cross-validation fold (non-test entries)"},
        },
        "additionalProperties": True,
    }
    entries = {"type": "array", "items": {"$ref": "#/$defs/entry"}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "monai-ms cohort manifest",
        "description": (
            "A MONAI decathlon-datalist shaped list of MS MRI scan sessions split by subject. "
            "Written by `monai-ms manifest build`; checked by `monai-ms manifest validate`."
        ),
        "type": "object",
        "anyOf": [{"required": [split]} for split in SPLITS],
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "format_version": {"type": "integer", "const": FORMAT_VERSION},
            "created_by": {"type": "string"},
            "split": {
                "type": "object",
                "description": "how the entries were split: seed, fractions, stratification used, folds",
            },
            "training": entries,
            "validation": entries,
            "testing": entries,
            "folds": {
                "type": "array",
                "items": {"type": "array", "items": {"type": "string"}},
                "description": "session ids of each cross-validation fold; validation = fold 0",
            },
        },
        "$defs": {"entry": entry},
    }
