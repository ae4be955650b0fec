"""Cohort manifests: load one split for training (:func:`load_datalist`), and the one import path of the rest.

By role: reading, writing and paths in :mod:`monai_ms.data.manifest_io` (which the validator imports, with the
field definitions of :mod:`monai_ms.data.fields` only), the CSV and BIDS builders in
:mod:`monai_ms.data.manifest_build`, the JSON schema in :mod:`monai_ms.data.manifest_schema`. Their names are
re-exported here, so ``from monai_ms.data.manifest import read_manifest`` keeps working.

A manifest is one JSON file shaped like a MONAI decathlon datalist: top-level ``training``,
``validation`` and ``testing`` lists (optional ``folds``) of entries, one per scan session::

    {"subject": "P01", "session": "sub-01-01", "t1": "T1/sub-01-01_T1_preprocessed.nii.gz",
     "t2": "T2/sub-01-01_T2_preprocessed.nii.gz", "lesion": "masks/sub-01-01_lesion.nii.gz",
     "age": 32.0, "sex": "F", "edss": 2.0, "scanner": "1.5T"}

Image paths are relative to the manifest's folder (or absolute). The format is documented in
``data_manifests/README.md``; its JSON schema (``manifest_schema()``) is kept in
``data_manifests/manifest.schema.json``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# the entry's fields are defined in fields.py, files in manifest_io.py, builders in manifest_build.py and the schema
# in manifest_schema.py; their names are re-exported here, where they used to live
from monai_ms.data.fields import (
    AGE_RANGE,
    EDSS_RANGE,
    EDSS_STEP,
    IMAGE_KEYS,
    MISSING_TOKENS,
    REQUIRED_KEYS,
    SEX_VALUES,
    SPLITS,
    TASK_KEYS,
    check_age,
    check_edss,
    normalise_sex,
    task_keys,
)
from monai_ms.data.manifest_build import BIDS_SUFFIXES, DEFAULT_COLUMNS, build_from_bids, build_from_csv
from monai_ms.data.manifest_io import (
    FORMAT_VERSION,
    ManifestError,
    check_manifest_shape,
    new_manifest,
    read_manifest,
    rebase_paths,
    resolve_path,
    write_manifest,
)
from monai_ms.data.manifest_schema import manifest_schema

__all__ = [
    "ManifestError",
    "TASK_KEYS",
    "IMAGE_KEYS",
    "SPLITS",
    "MISSING_TOKENS",
    "AGE_RANGE",
    "EDSS_RANGE",
    "EDSS_STEP",
    "SEX_VALUES",
    "FORMAT_VERSION",
    "DEFAULT_COLUMNS",
    "BIDS_SUFFIXES",
    "REQUIRED_KEYS",
    "read_manifest",
    "check_manifest_shape",
    "write_manifest",
    "new_manifest",
    "load_datalist",
    "build_from_csv",
    "build_from_bids",
    "resolve_path",
    "rebase_paths",
    "normalise_sex",
    "check_age",
    "check_edss",
    "manifest_schema",
]


def load_datalist(
    manifest_path: str | os.PathLike,
    split: str,
    task: str | None = None,
    fold: int | None = None,
    validate: bool = True,
    check_voxels: bool = True,
    workers: int = 4,
    modalities: Sequence[str] | None = None,
) -> list[dict]:
    """Return the entries of one split with absolute image paths, after checking them.

    This is what a bundle config calls (``"imports": ["$from monai_ms.data.manifest import
    load_datalist"]``, then ``"$load_datalist(@data_manifest, 'training', task='edss')"``): a bad
    cohort fails here, before training, with one line per problem. Unlike ``monai.data.load_decathlon_datalist``
    every image key (``t1``, ``t2``, ``lesion``, ``tissue``) is resolved, never left silently relative.

    Args:
        manifest_path: the manifest JSON file.
        split: ``"training"``, ``"validation"`` or ``"testing"``.
        task: one of ``TASK_KEYS`` (checks the keys the task needs), or None.
        fold: with a manifest built with folds, ``training`` = entries of the other folds and
            ``validation`` = entries of fold ``fold`` (``testing`` is unchanged).
        validate: run the field and file checks of ``validate_manifest`` on these entries.
        check_voxels: also read the voxel data (truncated files, NaN, empty images, T1/T2 alignment).
        workers: threads reading files.
        modalities: the images the run reads (T1 first); they replace the task's image keys among the
            keys every entry needs.

    Returns:
        list of entry dicts (copies): image paths absolute, ``sex`` as ``"F"``/``"M"``, ``age`` and
        ``edss`` as floats.

    Raises:
        ManifestError: unknown split/task/fold, or (``validate``) the problems found, one per line,
            followed by a summary line.

    Examples:
        >>> train_files = load_datalist("data_manifests/demo.json", "training", task="edss")  # doctest: +SKIP
        >>> train_files[0]["t1"]  # doctest: +SKIP
        '/abs/demo_data/T1/sub-01-01_T1_preprocessed.nii.gz'
    """
    if split not in SPLITS:
        raise ManifestError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    try:
        task_keys(task, modalities)
    except ValueError as error:
        raise ManifestError(str(error)) from None
    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path)
    base_dir = manifest_path.absolute().parent
    source_splits = [split]
    if fold is not None and split != "testing":
        entries = _fold_entries(manifest, split, fold, manifest_path)
        source_splits = ["training", "validation"]
    else:
        entries = manifest[split]
    if validate:
        from monai_ms.data.validation import validate_manifest

        report = validate_manifest(
            manifest,
            task=task,
            splits=source_splits,
            base_dir=base_dir,
            check_voxels=check_voxels,
            workers=workers,
            source=str(manifest_path),
            modalities=modalities,
        )
        if not report.ok:
            raise ManifestError("\n".join(report.problem_lines() + [report.final_line()]))
    return [_normalised(entry, base_dir) for entry in entries]


def _fold_entries(manifest: dict, split: str, fold: int, source: Path) -> list[dict]:
    pool = manifest["training"] + manifest["validation"]
    folds = sorted({e["fold"] for e in pool if isinstance(e.get("fold"), int)})
    if not folds:
        raise ManifestError(f"{source}: has no folds (no entry has a 'fold'); build it with --folds K")
    if isinstance(fold, bool) or not isinstance(fold, int) or fold not in folds:
        raise ManifestError(f"{source}: fold must be one of {', '.join(map(str, folds))}, got {fold!r}")
    if split == "validation":
        return [e for e in pool if e.get("fold") == fold]
    return [e for e in pool if e.get("fold") != fold]


def _normalised(entry: Mapping[str, Any], base_dir: Path) -> dict:
    entry = copy.deepcopy(dict(entry))
    for key in IMAGE_KEYS:
        if isinstance(entry.get(key), str) and entry[key]:
            entry[key] = resolve_path(entry[key], base_dir)
    if isinstance(entry.get("sex"), str) and entry["sex"].strip().lower() in SEX_VALUES:
        entry["sex"] = SEX_VALUES[entry["sex"].strip().lower()]
    for key in ("age", "edss"):
        if isinstance(entry.get(key), int) and not isinstance(entry[key], bool):
            entry[key] = float(entry[key])
    return entry
