"""Cohort manifests: read, write, build (from a metadata table or BIDS) and load for training.

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
import csv
import json
import logging
import os
import string
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_ms.data.fields import (
    AGE_RANGE,
    AGE_RULE,
    EDSS_RANGE,
    EDSS_RULE,
    EDSS_STEP,
    ENTRY_KEY_ORDER,
    IMAGE_KEYS,
    MISSING_TOKENS as MISSING_TOKENS,  # re-exported, not used here
    MODALITY_KEYS,
    MODALITY_NAMES,
    REQUIRED_KEYS,
    SEX_PATTERN,
    SEX_VALUES,
    SPLITS,
    TASK_KEYS,
    check_age,
    check_edss,
    is_missing,
    normalise_sex,
    show_value,
    task_keys,
)

# the entry's fields are defined in fields.py; re-exported here, where they used to live
from monai_ms.errors import UserError

__all__ = [
    "ManifestError",
    "TASK_KEYS",
    "IMAGE_KEYS",
    "SPLITS",
    "FORMAT_VERSION",
    "DEFAULT_COLUMNS",
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

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_COLUMNS: dict[str, str] = {
    "subject": "Patient_ID",
    "session": "MRI_ID",
    "age": "Age_at_Scan",
    "sex": "Sex",
    "edss": "EDSS",
    "scanner": "MR_System",
    "scan_date": "Scan_Date",
}
_REQUIRED_COLUMNS = ("subject", "session")


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
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found (looked at {path.absolute()})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: cannot read the manifest: {err}") from None
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


# ---------------------------------------------------------------------------------------------
# load for training
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------------


def _parse_values(raw: Mapping[str, Any], names: Mapping[str, str]) -> tuple[dict, list[str]]:
    """Convert table cells (strings) of one row to entry values; return (values, problems)."""
    values: dict[str, Any] = {}
    problems = []
    for key, text in raw.items():
        if is_missing(text):
            continue
        text = str(text).strip()
        name = names.get(key, key)
        try:
            if key in ("age", "edss"):
                try:
                    number = float(text)
                except ValueError:
                    rule = AGE_RULE if key == "age" else f"a number {EDSS_RULE}"
                    raise ValueError(f"{name} must be {rule}, got {text!r}") from None
                values[key] = check_age(number, name) if key == "age" else check_edss(number, name)
            elif key == "sex":
                values[key] = normalise_sex(text, name)
            else:
                values[key] = text
        except ValueError as err:
            problems.append(str(err))
    return values, problems


def _ordered(entry: Mapping[str, Any]) -> dict:
    ordered = {key: entry[key] for key in ENTRY_KEY_ORDER if key in entry}
    ordered.update({key: value for key, value in entry.items() if key not in ordered})
    return ordered


def _pattern_fields(pattern: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(pattern) if field is not None]


def build_from_csv(
    metadata_csv: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    t1_pattern: str = "T1/{session}_T1_preprocessed.nii.gz",
    t2_pattern: str | None = "T2/{session}_T2_preprocessed.nii.gz",
    lesion_pattern: str | None = "masks/{session}_lesion.nii.gz",
    tissue_pattern: str | None = "tissue/{session}_tissue.nii.gz",
    flair_pattern: str | None = None,
    pd_pattern: str | None = None,
    t1ce_pattern: str | None = None,
    columns: Mapping[str, str | None] | None = None,
    relative_to: str | os.PathLike | None = None,
    problems: list[dict] | None = None,
) -> list[dict]:
    """Build manifest entries (one per table row) from a metadata CSV/TSV and image folders.

    Every row becomes an entry, none is dropped: the paths of the modalities with a pattern (``t1``, ``t2``,
    ``flair``, ``pd``, ``t1ce``) are written whether or not the file exists (validation then reports a
    missing one); ``lesion`` and ``tissue`` are optional
    and added only where the file exists (the number of sessions without a mask is logged). Empty
    cells (or ``NA``/``n/a``) leave the key out; invalid values are errors.

    Args:
        metadata_csv: ``.csv`` (``,``/``;`` sniffed) or ``.tsv`` table, one row per scan session.
        image_root: folder the patterns are relative to; default: the table's folder.
        t1_pattern: T1 path pattern; ``{session}`` and ``{subject}`` are the row's session and subject
            ids, any ``{COLUMN}`` (e.g. ``{MRI_ID}``) the row's value of that table column.
        t2_pattern: T2 path pattern, or None for a cohort without T2.
        lesion_pattern: lesion mask pattern (optional files), or None.
        tissue_pattern: tissue label map pattern (optional files), or None.
        flair_pattern, pd_pattern, t1ce_pattern: FLAIR, proton-density and contrast-enhanced T1 patterns, or
            None (default) for a cohort without them.
        columns: manifest key -> table column, merged over ``DEFAULT_COLUMNS``. Columns named here
            must exist; of the defaults only ``subject`` and ``session`` must. Map a key to None or
            "" to ignore it.
        relative_to: write image paths relative to this folder (the output manifest's folder);
            None writes absolute paths.
        problems: collect bad rows here instead of raising (one pass: ``monai-ms manifest build`` then
            checks the files of every row, bad ones included, and reports both together). Each item is
            ``{"line": text, "session": id or None, "keys": keys whose value was invalid}``; a bad row still
            becomes an entry (its valid values and its image paths) unless its subject/session id is empty
            or a duplicate.

    Returns:
        list of entries in table order: ``subject``, ``session``, ``t1`` [, ``t2``, ``lesion``,
        ``tissue``, ``age``, ``sex`` ("F"/"M"), ``edss``, ``scanner``, ``scan_date``].

    Raises:
        ManifestError: unreadable table, a missing column (the message lists the available
            ones), a pattern field that is not a column, or bad rows (one line per problem:
            ``metadata.csv line 15 (MRI_ID sub-03-01): EDSS must be ..., got 11``).

    Examples:
        >>> entries = build_from_csv("cohort/metadata.csv", relative_to="cohort")  # doctest: +SKIP
        >>> entries[0]["t1"]  # doctest: +SKIP
        'T1/sub-01-01_T1_preprocessed.nii.gz'
    """
    import pandas as pd

    metadata_csv = Path(metadata_csv)
    image_root = Path(image_root) if image_root is not None else metadata_csv.absolute().parent
    if not metadata_csv.is_file():
        raise ManifestError(f"{metadata_csv}: metadata table not found (looked at {metadata_csv.absolute()})")
    if not image_root.is_dir():
        raise ManifestError(f"{image_root}: image root is not a folder (looked at {image_root.absolute()})")
    try:
        table = pd.read_csv(
            metadata_csv, sep=_delimiter(metadata_csv), dtype=str, keep_default_na=False, skipinitialspace=True
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise ManifestError(f"{metadata_csv}: cannot read the table: {err}") from None
    table.columns = [str(column).strip() for column in table.columns]
    available = list(table.columns)

    user_columns = dict(columns or {})
    unknown = sorted(set(user_columns) - set(DEFAULT_COLUMNS))
    if unknown:
        raise ManifestError(
            f"columns: unknown manifest key(s) {', '.join(unknown)}; known keys: {', '.join(DEFAULT_COLUMNS)}"
        )
    mapping: dict[str, str] = {}
    missing = []
    for key, default in DEFAULT_COLUMNS.items():
        column = user_columns.get(key, default)
        if not column:
            continue
        if column in available:
            mapping[key] = column
        elif key in user_columns or key in _REQUIRED_COLUMNS:
            missing.append(f"{column!r} (for {key})")
        else:
            logger.warning("%s: no column %r: entries will have no %r", metadata_csv, column, key)
    if missing:
        raise ManifestError(
            f"{metadata_csv}: column {', '.join(missing)} not found; available columns: {', '.join(available)}"
        )

    patterns = {
        "t1": t1_pattern,
        "t2": t2_pattern,
        "flair": flair_pattern,
        "pd": pd_pattern,
        "t1ce": t1ce_pattern,
        "lesion": lesion_pattern,
        "tissue": tissue_pattern,
    }
    patterns = {key: value for key, value in patterns.items() if value}
    fields_available = set(available) | {"subject", "session"}
    for key, pattern in patterns.items():
        try:
            fields = _pattern_fields(pattern)
        except ValueError as err:
            raise ManifestError(f"{key} pattern {pattern!r}: {err}") from None
        bad = [field for field in fields if field not in fields_available]
        if bad:
            raise ManifestError(
                f"{key} pattern {pattern!r} uses {', '.join('{' + f + '}' for f in bad)}, not a column of "
                f"{metadata_csv.name}; available: {', '.join('{' + f + '}' for f in sorted(fields_available))}"
            )
        if not fields:
            raise ManifestError(
                f"{key} pattern {pattern!r} has no {{field}}: every session would point to the same file"
            )

    entries, lines, seen = [], [], {}
    session_column = mapping["session"]
    for index, row in enumerate(table.to_dict(orient="records")):
        line = index + 2  # line 1 is the header
        session = str(row[session_column]).strip()
        where = f"{metadata_csv.name} line {line}" + (f" ({session_column} {session})" if session else "")
        raw = {key: row[column] for key, column in mapping.items()}
        values, row_problems = _parse_values(raw, mapping)
        invalid = [key for key, text in raw.items() if not is_missing(text) and key not in values]
        for key in _REQUIRED_COLUMNS:
            if key not in values:
                row_problems.insert(0, f"{mapping[key]} is empty")
        duplicate = bool(session and session in seen)
        if duplicate:
            row_problems.append(f"duplicate {session_column} {session} (also on line {seen[session]})")
        seen.setdefault(session, line)
        lines.extend(f"{where}: {message}" for message in row_problems)
        if row_problems and problems is not None:
            problems.extend(
                {"line": f"{where}: {message}", "session": session or None, "keys": invalid} for message in row_problems
            )
        if row_problems and (problems is None or duplicate or any(key not in values for key in _REQUIRED_COLUMNS)):
            continue
        fields = {k: str(v).strip() for k, v in row.items()} | {"subject": values["subject"], "session": session}
        entry = {"subject": values["subject"], "session": session}
        for key, pattern in patterns.items():
            path = Path(image_root) / pattern.format_map(fields)
            if key in MODALITY_KEYS or path.exists():
                entry[key] = _relative(str(path), relative_to)
        entry.update({key: value for key, value in values.items() if key not in entry})
        entries.append(_ordered(entry))
    if lines and problems is None:
        raise ManifestError("\n".join(lines + [f"{metadata_csv}: {len(lines)} problem(s) in {len(table)} rows"]))
    _log_optional(entries, str(metadata_csv))
    return entries


def _delimiter(table: Path) -> str:
    """Tab for .tsv; otherwise the one of , ; tab that the header line uses (spreadsheets export ; in some locales)."""
    if table.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    try:
        with table.open(encoding="utf-8", errors="replace") as handle:
            header = handle.readline()
        return csv.Sniffer().sniff(header, delimiters=",;\t").delimiter
    except (csv.Error, OSError):
        return ","


def _log_optional(entries: Sequence[Mapping[str, Any]], source: str) -> None:
    for key in ("lesion", "age", "sex", "edss"):
        lacking = sum(key not in entry for entry in entries)
        if lacking:
            logger.info("%s: %d of %d sessions have no %s", source, lacking, len(entries), key)


def _read_tsv(path: Path) -> list[dict[str, str]]:
    import pandas as pd

    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise ManifestError(f"{path}: cannot read the table: {err}") from None
    table.columns = [str(column).strip() for column in table.columns]
    return table.to_dict(orient="records")


# BIDS anat suffix of each modality key; a T1w with a ``ce-`` entity (contrast agent) is ``t1ce``, not ``t1``
BIDS_SUFFIXES: dict[str, str] = {"t1": "_T1w", "t2": "_T2w", "flair": "_FLAIR", "pd": "_PDw", "t1ce": "_T1w"}


def _one_file(folder: Path, suffixes: Sequence[str], problems: list[str], what: str, ce: bool | None = None) -> Path | None:
    """The single file in ``folder`` ending with one of ``suffixes`` (None if none; a problem if several).

    ``ce``: keep only files with a BIDS ``ce-`` entity (True), only files without one (False), or any (None).
    """
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.iterdir() if p.is_file() and any(p.name.endswith(s) for s in suffixes))
    if ce is not None:
        found = [p for p in found if ("_ce-" in p.name) == ce]
    if len(found) > 1:
        problems.append(f"{folder}: {len(found)} {what} files ({', '.join(p.name for p in found)}); expected one")
        return None
    return found[0] if found else None


def build_from_bids(
    bids_root: str | os.PathLike, relative_to: str | os.PathLike | None = None, problems: list[dict] | None = None
) -> list[dict]:
    """Build manifest entries from a BIDS folder, one per subject session.

    Reads ``participants.tsv`` (``participant_id``, ``sex``; ``age``/``edss``/``scanner`` if present),
    ``sub-*/sub-*_sessions.tsv`` (``session_id``, ``acq_time``, ``age``, ``edss``, ``scanner``), images
    ``sub-*/ses-*/anat/*_T1w.nii[.gz]`` (``t1``; with a ``ce-`` entity, e.g. ``_ce-gadolinium_T1w``: ``t1ce``),
    ``*_T2w`` (``t2``), ``*_FLAIR`` (``flair``) and ``*_PDw`` (``pd``), lesion masks
    ``derivatives/*/sub-*/ses-*/anat/*_label-lesion_mask.nii[.gz]`` and tissue maps ``*_dseg.nii[.gz]``
    there. A session listed in a sessions table without a folder still gets an entry (with the
    expected T1 path, so validation reports it); a subject without sessions uses ``sub-*/anat``.

    Args:
        bids_root: the BIDS dataset folder.
        relative_to: write image paths relative to this folder; None writes absolute paths.
        problems: collect bad table values and ambiguous files here instead of raising (items as in
            ``build_from_csv``); every session still gets its entry.

    Returns:
        entries sorted by session id; ``subject`` = participant id (``sub-P01``), ``session`` =
        ``sub-P01_ses-01``.

    Raises:
        ManifestError: not a BIDS folder, or bad table values / ambiguous files (one line each).

    Examples:
        >>> entries = build_from_bids("cohort_bids", relative_to=".")  # doctest: +SKIP
        >>> entries[0]["session"]  # doctest: +SKIP
        'sub-P01_ses-01'
    """
    root = Path(bids_root)
    if not root.is_dir():
        raise ManifestError(f"{root}: BIDS folder not found (looked at {root.absolute()})")
    lines: list[str] = []
    found_problems: list[dict] = []
    participants: dict[str, dict[str, str]] = {}
    participants_tsv = root / "participants.tsv"
    if participants_tsv.is_file():
        rows = _read_tsv(participants_tsv)
        if rows and "participant_id" not in rows[0]:
            raise ManifestError(
                f"{participants_tsv}: column 'participant_id' not found; available columns: {', '.join(rows[0])}"
            )
        for line, row in enumerate(rows, start=2):
            participants[_bids_id(row["participant_id"], "sub-")] = row | {"_line": str(line)}
    subject_dirs = sorted(p for p in root.glob("sub-*") if p.is_dir())
    if not subject_dirs and not participants:
        raise ManifestError(f"{root}: no sub-* folders and no participants.tsv: is this a BIDS dataset?")
    folder_ids = {p.name for p in subject_dirs}
    for subject in sorted(set(participants) - folder_ids):
        lines.append(f"{participants_tsv.name} line {participants[subject]['_line']}: {subject} has no folder")

    entries = []
    for subject_dir in subject_dirs:
        subject = subject_dir.name
        person = participants.get(subject, {})
        sessions: dict[str, dict[str, str]] = {}
        sessions_tsv = subject_dir / f"{subject}_sessions.tsv"
        if sessions_tsv.is_file():
            for line, row in enumerate(_read_tsv(sessions_tsv), start=2):
                if "session_id" not in row:
                    raise ManifestError(
                        f"{sessions_tsv}: column 'session_id' not found; available columns: {', '.join(row)}"
                    )
                sessions[_bids_id(row["session_id"], "ses-")] = row | {"_where": f"{sessions_tsv.name} line {line}"}
        session_dirs = {p.name for p in subject_dir.glob("ses-*") if p.is_dir()}
        labels = sorted(set(sessions) | session_dirs) or [None]
        for label in labels:
            anat = subject_dir / label / "anat" if label else subject_dir / "anat"
            session_id = f"{subject}_{label}" if label else subject
            row = sessions.get(label, {}) if label else {}
            where = row.get("_where") or (f"{participants_tsv.name} ({subject})" if person else session_id)
            raw = {key: person.get(key) for key in ("age", "sex", "edss", "scanner")}
            raw |= {key: row.get(key) for key in ("age", "sex", "edss", "scanner") if not is_missing(row.get(key))}
            raw["scan_date"] = row.get("acq_time")
            values, row_problems = _parse_values(raw, {})
            lines.extend(f"{where} ({session_id}): {message}" for message in row_problems)
            invalid = [key for key, text in raw.items() if not is_missing(text) and key not in values]
            found_problems.extend(
                {"line": f"{where} ({session_id}): {message}", "session": session_id, "keys": invalid}
                for message in row_problems
            )
            entry: dict[str, Any] = {"subject": subject, "session": session_id}
            for key, suffix in BIDS_SUFFIXES.items():
                what = "ce-*_T1w" if key == "t1ce" else suffix[1:]
                found = _one_file(anat, (f"{suffix}.nii.gz", f"{suffix}.nii"), lines, what, ce=key == "t1ce")
                if found is not None:
                    entry[key] = _relative(str(found), relative_to)
                elif key == "t1":  # never drop a session: point at the expected file so validation says it is missing
                    entry[key] = _relative(str(anat / f"{session_id}_T1w.nii.gz"), relative_to)
            relative_anat = anat.relative_to(root)
            for key, suffix in (("lesion", "_label-lesion_mask"), ("tissue", "_dseg")):
                for derivative in sorted(p for p in (root / "derivatives").glob("*") if p.is_dir()):
                    found = _one_file(derivative / relative_anat, (f"{suffix}.nii.gz", f"{suffix}.nii"), lines, key)
                    if found is not None and key not in entry:
                        entry[key] = _relative(str(found), relative_to)
            entry.update(values)
            entries.append(_ordered(entry))
    if lines and problems is None:
        raise ManifestError("\n".join(lines + [f"{root}: {len(lines)} problem(s)"]))
    if problems is not None:
        listed = {item["line"] for item in found_problems}
        problems.extend(found_problems)
        problems.extend({"line": line, "session": None, "keys": []} for line in lines if line not in listed)
    _log_optional(entries, str(root))
    return sorted(entries, key=lambda e: e["session"])


def _bids_id(value: str, prefix: str) -> str:
    value = str(value).strip()
    return value if value.startswith(prefix) else prefix + value


# ---------------------------------------------------------------------------------------------
# schema
# ---------------------------------------------------------------------------------------------


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
