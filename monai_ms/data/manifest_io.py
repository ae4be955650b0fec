"""Manifest files: the error, the shape check, read, write (atomic, never onto an input), paths.

A manifest is one JSON file shaped like a MONAI decathlon datalist (see :mod:`monai_ms.data.manifest`). This module
reads and writes it and resolves its image paths; it imports only the field definitions
(:mod:`monai_ms.data.fields`), so the validator can use it without an import cycle.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_ms.data.fields import (
    IMAGE_KEYS,
    SPLITS,
    show_value,
)
from monai_ms.errors import UserError
from monai_ms.io import read_text

__all__ = [
    "ManifestError",
    "FORMAT_VERSION",
    "check_manifest_shape",
    "read_manifest",
    "write_manifest",
    "new_manifest",
    "resolve_path",
    "rebase_paths",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class ManifestError(UserError, ValueError):
    """A manifest, metadata table or cohort folder that cannot be used; the message says why, line by line."""


# ---------------------------------------------------------------------------------------------
# read / write
# ---------------------------------------------------------------------------------------------


def check_manifest_shape(manifest: Any, source: str = "<manifest>") -> dict:
    """Check the overall shape of a manifest (not its values); return it unchanged.

    Args:
        manifest: the parsed JSON.
        source: name used in the messages (the file).

    Returns:
        ``manifest``.

    Raises:
        ManifestError: not an object with split lists of entry objects, a newer ``format_version``, or
            malformed ``folds``; one line per problem.

    Examples:
        >>> check_manifest_shape({"training": [{"subject": "P01"}]})["training"][0]["subject"]
        'P01'
    """
    if not isinstance(manifest, dict):
        raise ManifestError(
            f"{source}: a manifest must be a JSON object with 'training', 'validation' and 'testing' lists, "
            f"got a {type(manifest).__name__}"
        )
    if not any(split in manifest for split in SPLITS):
        raise ManifestError(
            f"{source}: no 'training', 'validation' or 'testing' list "
            f"(keys found: {', '.join(map(str, manifest)) or 'none'}); is this a monai-ms manifest?"
        )
    version = manifest.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise ManifestError(
            f"{source}: format_version must be an integer <= {FORMAT_VERSION} (this monai-ms reads version "
            f"{FORMAT_VERSION}), got {show_value(version)}"
        )
    lines = []
    for split in SPLITS:
        entries = manifest.get(split, [])
        if not isinstance(entries, list):
            lines.append(f"{source}: '{split}' must be a list of entries, got a {type(entries).__name__}")
            continue
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                lines.append(f"{source}: {split}[{index}] must be an object (one scan session), got {show_value(entry)}")
    folds = manifest.get("folds")
    if folds is not None and not (
        isinstance(folds, list) and all(isinstance(f, list) and all(isinstance(s, str) for s in f) for f in folds)
    ):
        lines.append(f"{source}: 'folds' must be a list of lists of session ids")
    if lines:
        raise ManifestError("\n".join(lines))
    return manifest


def read_manifest(path: str | os.PathLike) -> dict:
    """Read a manifest JSON file and check its overall shape.

    Missing split lists are added as empty lists, so ``manifest["testing"]`` always works.

    Args:
        path: the manifest file.

    Returns:
        the manifest as a ``dict`` (entries unchanged: paths stay as written).

    Raises:
        ManifestError: the file is missing or unreadable, is not JSON, or is not manifest-shaped;
            the message names the file.

    Examples:
        >>> manifest = read_manifest("data_manifests/example_manifest.json")  # doctest: +SKIP
        >>> len(manifest["training"])  # doctest: +SKIP
        4
    """
    path = Path(path)
    text = read_text(path, "manifest", ManifestError)
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    check_manifest_shape(manifest, str(path))
    for split in SPLITS:
        manifest.setdefault(split, [])
    return manifest


def write_manifest(
    manifest: Mapping[str, Any],
    path: str | os.PathLike,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
) -> Path:
    """Write ``manifest`` as JSON atomically (a reader never sees half a file).

    Args:
        manifest: manifest-shaped mapping (see ``read_manifest``).
        path: destination file.
        overwrite: replace an existing ``path``; refused otherwise.
        inputs: files this manifest was made from; ``path`` may never be one of them, even with
            ``overwrite``.

    Returns:
        ``path``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ManifestError: ``path`` is one of ``inputs``, or ``manifest`` is not manifest-shaped.

    Examples:
        >>> write_manifest(new_manifest(split_entries(entries)), "manifest.json")  # doctest: +SKIP
    """
    from monai_ms.io import write_json

    path = Path(path)
    for source in inputs:
        if _same_file(path, Path(source)):
            raise ManifestError(f"{path}: this is an input file ({source}); refusing to write the manifest onto it")
    check_manifest_shape(dict(manifest), str(path))
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; refusing to overwrite it (pass overwrite=True / --overwrite)")
    return write_json(dict(manifest), path, overwrite=overwrite)


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def new_manifest(
    split: Mapping[str, Any],
    name: str = "cohort",
    description: str = "",
) -> dict:
    """Assemble a manifest from the output of ``split_entries`` and the metadata keys.

    Args:
        split: mapping with ``training``/``validation``/``testing`` (and optional ``folds`` and
            ``split`` info), as returned by ``monai_ms.data.split.split_entries``.
        name: cohort name.
        description: free text.

    Returns:
        the manifest ``dict`` (``format_version``, ``created_by`` filled in).

    Examples:
        >>> new_manifest({"training": [], "validation": [], "testing": []}, name="demo")["format_version"]
        1
    """
    from monai_ms import __version__

    manifest: dict[str, Any] = {
        "name": name,
        "description": description,
        "format_version": FORMAT_VERSION,
        "created_by": f"monai-ms {__version__}",
    }
    if "split" in split:
        manifest["split"] = split["split"]
    for key in SPLITS:
        manifest[key] = list(split.get(key, []))
    if split.get("folds") is not None:
        manifest["folds"] = split["folds"]
    return manifest


# ---------------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------------


def resolve_path(value: str, base_dir: str | os.PathLike) -> str:
    """Return the absolute, normalised path of a manifest path (relative to ``base_dir``).

    Args:
        value: path as written in the manifest (``~`` is expanded).
        base_dir: the manifest's folder.

    Returns:
        absolute path (lexically normalised; symbolic links are kept).

    Examples:
        >>> resolve_path("T1/a.nii.gz", "/data/cohort")
        '/data/cohort/T1/a.nii.gz'
    """
    return os.path.normpath(os.path.join(os.path.abspath(base_dir), os.path.expanduser(value)))


def _relative(path: str, relative_to: str | os.PathLike | None) -> str:
    if relative_to is None:
        return os.path.abspath(path)
    try:
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(relative_to))).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return os.path.abspath(path)


def rebase_paths(
    entries: Sequence[Mapping[str, Any]], from_dir: str | os.PathLike, to_dir: str | os.PathLike
) -> list[dict]:
    """Rewrite relative image paths so they stay correct when a manifest moves folders.

    Args:
        entries: manifest entries whose relative paths are relative to ``from_dir``.
        from_dir: the old manifest folder.
        to_dir: the new manifest folder.

    Returns:
        new entries (copies); absolute paths are left absolute.

    Examples:
        >>> rebase_paths([{"t1": "T1/a.nii.gz"}], "/data/c", "/data")
        [{'t1': 'c/T1/a.nii.gz'}]
    """
    rebased = []
    for entry in entries:
        entry = dict(entry)
        for key in IMAGE_KEYS:
            value = entry.get(key)
            if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
                entry[key] = _relative(resolve_path(value, from_dir), to_dir)
        rebased.append(entry)
    return rebased
