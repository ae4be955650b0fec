"""Build manifest entries from a metadata table (CSV/TSV and image path patterns) or a BIDS folder.

Every row or session becomes an entry, none is dropped; bad values are reported one line per row (or collected
for ``monai-ms manifest build``'s one-pass report). The result goes through :func:`monai_ms.data.split.split_entries`
and :func:`monai_ms.data.manifest_io.write_manifest`.
"""

from __future__ import annotations

import csv
import logging
import os
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_ms.data.fields import (
    AGE_RULE,
    EDSS_RULE,
    ENTRY_KEY_ORDER,
    MODALITY_KEYS,
    check_age,
    check_edss,
    is_missing,
    normalise_sex,
)
from monai_ms.data.manifest_io import ManifestError, _relative

__all__ = ["DEFAULT_COLUMNS", "BIDS_SUFFIXES", "build_from_csv", "build_from_bids"]

logger = logging.getLogger(__name__)

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
