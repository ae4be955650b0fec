"""Check a manifest against its files before anything trains on it.

``validate_manifest`` looks at every field and every image a manifest names and returns a report: what it
looked at (entries per split, subjects, image shapes and spacings, age/sex/EDSS distributions, lesion masks
present) and one line per problem, each naming the split and index, the session, the key and the file::

    training[3] session sub-01-01: t2 T2/sub-01-01_T2.nii.gz: file not found (looked at /data/T2/sub-01-01_T2.nii.gz)

Headers are read first (shape, affine, spacing, orientation codes); voxel checks then read each file's data
once, in threads (gzip decompression releases the GIL): truncated files, NaN/inf voxels, empty images, binary
lesion masks, whether T1 and T2 show the same head, and what the files contain (``content_checks``: a T1/T2
contrast signature, label maps in an intensity column, implausible lesion masks, copies of another session's
scan, heads that are not skull-stripped). Cause first: when a file fails one of its own checks, the checks
that compare it with another file (grid, same head, lesion share) are not run on it, so the line names the
file that is wrong. Warnings (accepted, but worth knowing) are listed apart and do not make the report fail.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from monai_ms.data import content_checks as checks
from monai_ms.data.fields import (
    IMAGE_KEYS,
    MODALITY_KEYS,
    MODALITY_NAMES,
    REQUIRED_KEYS,
    SPLITS,
    check_age,
    check_edss,
    normalise_sex,
    task_keys,
)
from monai_ms.data.manifest_io import ManifestError, check_manifest_shape, read_manifest, resolve_path

__all__ = [
    "Problem",
    "ValidationReport",
    "validate_manifest",
    "CENTROID_TOLERANCE_MM",
    "MIN_FOV_OVERLAP",
    "FILE_KINDS",
]

logger = logging.getLogger(__name__)

# T1 and T2 of one session are the same head: their foreground centroids (mm) agree to a few mm after any
# registration; 40 mm is a different head or a broken affine, well beyond different fields of view.
CENTROID_TOLERANCE_MM = 40.0
# share of the smaller field of view (world bounding box) that must lie inside the other one
MIN_FOV_OVERLAP = 0.5
# affine entries (mm) within which a mask counts as being on the T1 grid
GRID_ATOL = 1e-3
# EDSS in steps of 0.5: mild, moderate, walking impaired, walking aid or worse
EDSS_SUMMARY_BINS = ((0.0, 2.0), (2.5, 4.0), (4.5, 6.0), (6.5, 10.0))


# kinds of problem that concern the image files of one session (batch inference fails that session alone):
# a check of one file, a check between files of the session, a copy of another session's scan
FILE_KINDS = frozenset({"file", "derived", "duplicate_contents"})


@dataclass(frozen=True)
class Problem:
    """One problem (or warning): where it is (split[index] and session, or a subject) and what is wrong.

    The optional fields say the same in structured form, so a caller need not parse ``where``.

    Attributes:
        where: ``training[3] session sub-01-01``, ``subject P01``, a split name, ...
        message: what is wrong; about a file it starts with ``<key> <path as written>:``.
        split: the entry's split, when the problem is about one entry.
        index: the entry's index in its split.
        session: the entry's session id (None when it has none).
        key: the image key (``t1``, ``t2``, ``lesion``, ``tissue``) of a problem about one file.
        path: that file's absolute path.
        kind: ``field`` (a value or key), ``file`` (a check of one file), ``derived`` (files of a session
            disagree: grid, same head, lesion share), ``duplicate_contents``, ``shared_file``, ``session``,
            ``subject``, ``split``, ``folds``, ``manifest``.

    Examples:
        >>> str(Problem("training[3] session sub-01-01", "age must be ..., got 130"))
        'training[3] session sub-01-01: age must be ..., got 130'
    """

    where: str
    message: str
    split: str | None = None
    index: int | None = None
    session: str | None = None
    key: str | None = None
    path: str | None = None
    kind: str | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class ValidationReport:
    """Result of ``validate_manifest``: problems and a summary of what was looked at.

    Attributes:
        problems: one ``Problem`` per problem found.
        warnings: accepted but worth knowing (a head not skull-stripped, a 2D T1); ``ok`` ignores them.
        source: the manifest file (or ``"<manifest>"`` for an in-memory dict).
        n_sessions: entries checked.
        n_files: distinct image files referenced by those entries.
        stats: figures for ``summary_lines``.

    Examples:
        >>> report = validate_manifest("manifest.json", task="edss")  # doctest: +SKIP
        >>> print(report.format())  # doctest: +SKIP
    """

    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    source: str = "<manifest>"
    n_sessions: int = 0
    n_files: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def add_problem(self, where: str, message: str, **fields: Any) -> None:
        """Record a problem (``fields``: the structured fields of ``Problem``)."""
        self.problems.append(Problem(where, message, **fields))

    def add_warning(self, where: str, message: str, **fields: Any) -> None:
        """Record a warning."""
        self.warnings.append(Problem(where, message, **fields))

    def problem_lines(self) -> list[str]:
        """One line per problem."""
        return [str(problem) for problem in self.problems]

    def warning_lines(self) -> list[str]:
        """One line per warning, ``warning: <where>: <message>``."""
        return [f"warning: {warning}" for warning in self.warnings]

    def final_line(self) -> str:
        """E.g. ``checked 40 sessions, 120 files: 0 problems`` (``, 2 warnings`` when there are any)."""
        count = len(self.problems)
        line = f"checked {self.n_sessions} sessions, {self.n_files} files: {count} problem{'' if count == 1 else 's'}"
        if self.warnings:
            line += f", {len(self.warnings)} warning{'' if len(self.warnings) == 1 else 's'}"
        return line

    def summary_lines(self) -> list[str]:
        """What was looked at: entries per split, subjects, images (shapes, spacing), age, sex, EDSS, masks."""
        stats = self.stats
        lines = [f"manifest {self.source}" + (f" ({stats['name']})" if stats.get("name") else "")]
        counts = ", ".join(f"{split} {n}" for split, n in stats.get("split_sizes", {}).items())
        lines.append(
            f"entries: {counts or 'none'} ({self.n_sessions} sessions checked, {stats.get('subjects', 0)} subjects)"
            + (f"; {stats['folds']} folds" if stats.get("folds") else "")
        )
        for key in IMAGE_KEYS:
            image = stats.get("images", {}).get(key)
            if not image or not image["referenced"]:
                continue
            line = f"{key}: {image['referenced']} of {self.n_sessions} sessions, {image['found']} files found"
            if image["shapes"]:
                line += f", shape {_range_text(image['shapes'], True)}, spacing {_range_text(image['zooms'], False)} mm"
            lines.append(line)
        ages = stats.get("ages", [])
        if ages:
            lines.append(
                f"age: {len(ages)} sessions, {min(ages):g}-{max(ages):g} years (median {float(np.median(ages)):.1f})"
            )
        sexes = stats.get("sexes", {})
        if sexes:
            lines.append("sex: " + ", ".join(f"{sex} {n}" for sex, n in sorted(sexes.items())))
        edss = stats.get("edss", [])
        if edss:
            bins = ", ".join(f"{lo:g}-{hi:g}: {sum(lo <= v <= hi for v in edss)}" for lo, hi in EDSS_SUMMARY_BINS)
            lines.append(
                f"edss: {len(edss)} sessions, {min(edss):g}-{max(edss):g} (median {float(np.median(edss)):g}); {bins}"
            )
        scanners = stats.get("scanners", {})
        if scanners:
            lines.append("scanner: " + ", ".join(f"{name} {n}" for name, n in sorted(scanners.items())))
        lines.append(f"checks: {stats.get('checks', 'fields only')}")
        return lines

    def format(self) -> str:
        """Summary lines, one line per problem, one per warning, then the final count line."""
        return "\n".join(self.summary_lines() + self.problem_lines() + self.warning_lines() + [self.final_line()])


def _range_text(values: Sequence[Sequence[float]], integer: bool) -> str:
    """``96x114x96`` when all agree, else per-axis ranges ``90-96 x 114 x 90-96``."""
    array = np.asarray(values, dtype=float)
    low, high = array.min(axis=0), array.max(axis=0)

    def show(value: float) -> str:
        return f"{int(value)}" if integer else f"{value:.3g}"

    if np.array_equal(low, high):
        return "x".join(show(v) for v in low)
    return " x ".join(show(lo) if lo == hi else f"{show(lo)}-{show(hi)}" for lo, hi in zip(low, high))


# ---------------------------------------------------------------------------------------------
# one file
# ---------------------------------------------------------------------------------------------


@dataclass
class _ImageInfo:
    """What one file's header (and voxels) said."""

    shape: tuple[int, ...] | None = None
    affine: np.ndarray | None = None
    zooms: tuple[float, ...] | None = None
    error: str | None = None  # unreadable / truncated / not 3D / bad affine: nothing else is checked
    orientation: str | None = None  # qform and sform codes 0
    nonfinite: int = 0
    nonzero: bool | None = None
    foreground: int = 0  # non-zero voxels
    binary: bool | None = None
    odd_values: list[float] = field(default_factory=list)
    integer_labels: bool | None = None
    centroid_mm: np.ndarray | None = None
    digest: str | None = None  # hash of the voxel values (T1/T2)
    label_values: list[float] | None = None  # the few distinct values of an intensity image that is a label map
    contrast: checks.TissueContrast | None = None
    skull: str | None = None  # warning: not skull-stripped

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[:3]) if self.shape else ()


def _inspect(path: str, roles: set[str], check_voxels: bool) -> _ImageInfo:
    import nibabel as nib

    info = _ImageInfo()
    try:
        image = nib.load(path)
        info.shape = tuple(int(n) for n in image.shape)
        info.affine = np.asarray(image.affine, dtype=float)
        info.zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    except Exception as err:  # nibabel raises many types for a broken file; all mean "cannot use it"
        info.error = f"unreadable NIfTI header ({type(err).__name__}: {err})"
        return info
    if len(info.shape) < 3 or any(n != 1 for n in info.shape[3:]):
        info.error = (
            f"must be a 3D volume (a 4th dimension of size 1 is fine), got shape {'x'.join(map(str, info.shape))}"
        )
        return info
    if not np.all(np.isfinite(info.affine)) or abs(np.linalg.det(info.affine[:3, :3])) < 1e-9:
        info.error = f"invalid affine (not finite or singular): {info.affine[:3].round(3).tolist()}"
        return info
    expected = _expected_size(image, path)
    if expected is not None and os.path.getsize(path) < expected:
        info.error = f"file truncated: {os.path.getsize(path)} bytes, its header needs {expected}"
        return info
    info.orientation = checks.orientation_problem(*_orientation_codes(image.header))
    if not check_voxels:
        return info
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as err:
        info.error = f"cannot read the voxel data, the file is truncated or corrupt ({type(err).__name__}: {err})"
        return info
    data = data.reshape(info.spatial_shape)
    intensity = bool(roles & set(MODALITY_KEYS))
    if np.issubdtype(data.dtype, np.inexact):
        finite = np.isfinite(data)
        info.nonfinite = int(data.size - np.count_nonzero(finite))
        if info.nonfinite:
            data = np.where(finite, data, 0)
    if intensity:
        mask, values = checks.split_foreground(data)  # one pass: hash, sample, centroid threshold
        info.foreground = int(values.size)
        info.digest = checks.voxel_hash(data, mask, values)
        sample = checks.foreground_sample(values)
        del mask, values
    else:
        info.foreground = int(np.count_nonzero(data))
    info.nonzero = info.foreground > 0
    if "lesion" in roles:
        is_binary = (data == 0) | (data == 1)
        info.binary = bool(is_binary.all())
        if not info.binary:
            info.odd_values = [float(v) for v in np.unique(data[~is_binary])[:5]]
    if "tissue" in roles:
        info.integer_labels = bool(np.all(data == np.round(data)) and data.min() >= 0)
    if intensity and info.nonzero:
        info.centroid_mm = _foreground_centroid_mm(data, info.affine, sample)
        if checks.distinct_values(sample) is not None:  # few values in the sample: count them all
            info.label_values = checks.distinct_values(data[data != 0])
        info.skull = checks.skull_strip_warning(info.foreground * float(np.prod(info.zooms)) / 1000.0)
        if info.label_values is None and info.skull is None:
            contrast = checks.tissue_contrast(sample)
            if contrast is not None:
                depth = checks.depth_contrast(data, info.zooms)
                info.contrast = replace(contrast, depth_log_ratio=depth)
    return info


def _orientation_codes(header: Any) -> tuple[int, int]:
    """(qform_code, sform_code); (0, 0) for a format without them (Analyze)."""
    try:
        return int(header["qform_code"]), int(header["sform_code"])
    except (KeyError, ValueError, TypeError):
        return 0, 0


def _expected_size(image: Any, path: str) -> int | None:
    """Bytes an uncompressed single-file NIfTI must have (gzip files are checked by reading their data)."""
    if not path.endswith(".nii"):
        return None
    proxy = image.dataobj
    if not all(hasattr(proxy, name) for name in ("offset", "shape", "dtype")):
        return None
    return int(proxy.offset) + int(np.prod(proxy.shape)) * np.dtype(proxy.dtype).itemsize


def _foreground_centroid_mm(data: np.ndarray, affine: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """World centre (mm) of the voxels above a tenth of the bright end (``sample``: strided non-zero values)."""
    from scipy import ndimage

    # above a tenth of the bright end: the head, not background noise (works with and without skull stripping)
    threshold = 0.1 * float(np.percentile(np.abs(sample), 99))
    centroid = np.asarray(ndimage.center_of_mass(np.abs(data) > threshold))
    return (affine @ np.append(centroid, 1.0))[:3]


def _fov_box(info: _ImageInfo) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in info.spatial_shape], indexing="ij")).reshape(3, -1)
    world = info.affine[:3, :3] @ corners + info.affine[:3, 3:4]
    return world.min(axis=1), world.max(axis=1)


def _fov_overlap(a: _ImageInfo, b: _ImageInfo) -> tuple[float, np.ndarray, np.ndarray]:
    """Share of the smaller field of view inside the other, and the two box centres (mm)."""
    (lo_a, hi_a), (lo_b, hi_b) = _fov_box(a), _fov_box(b)
    inter = np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0, None).prod()
    smaller = min((hi_a - lo_a).prod(), (hi_b - lo_b).prod())
    return float(inter / smaller) if smaller > 0 else 0.0, (lo_a + hi_a) / 2, (lo_b + hi_b) / 2


def _mm(point: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.0f}" for v in point) + ") mm"


# ---------------------------------------------------------------------------------------------
# the manifest
# ---------------------------------------------------------------------------------------------


def validate_manifest(
    manifest_or_path: Mapping[str, Any] | str | os.PathLike,
    task: str | None = None,
    splits: Sequence[str] | None = None,
    refuse_outside_root: bool = False,
    check_voxels: bool = True,
    workers: int = 4,
    base_dir: str | os.PathLike | None = None,
    source: str | None = None,
    log_warnings: bool = True,
    modalities: Sequence[str] | None = None,
) -> ValidationReport:
    """Check every field and image of a manifest; report what was looked at and each problem.

    Checked per entry of the chosen splits: required keys (``subject``, ``session``, ``t1``) and the keys
    ``task`` needs; age (number in [0, 120]); sex (F/M/female/male, any case); EDSS (0-10 in steps of 0.5);
    every image key present (``t1``, ``t2``, ``flair``, ``pd``, ``t1ce``, ``lesion``, ``tissue``): file exists, readable NIfTI, 3D (a
    singleton 4th dimension is fine), finite affine, within the manifest folder when
    ``refuse_outside_root``; with ``check_voxels``: data readable (truncated gzip), no NaN/inf, T1/T2 not
    all zero, lesion mask binary, tissue map non-negative integers. Lesion and tissue maps must be on the
    T1 grid (shape and affine); T1 and T2 must cover the same head (fields of view overlap by at least
    ``MIN_FOV_OVERLAP`` of the smaller one and, with voxels, foreground centroids within
    ``CENTROID_TOLERANCE_MM``). Content (``monai_ms.data.content_checks``, thresholds there): orientation
    known (qform or sform code > 0, also headers-only); T1/T2 voxel sizes plausible (refused) and a 2D T1
    (warning); with voxels: T1/T2 contrast signature matching the column (swapped columns named together),
    no label map in an intensity column, lesion mask at most ``MAX_LESION_SHARE`` of the T1's brain, a head
    not skull-stripped (warning). Cause first: a file failing its own checks is left out of the checks
    against other files (grid, lesion share, same head, copies). Across all splits: duplicate session ids,
    a subject in two splits or two folds (leakage), a subject whose sex differs between sessions, one image
    file used by two sessions, two T1/T2 files with identical voxels (reported on each of their sessions),
    ``folds`` lists that disagree with the entries. Empty splits: those named in ``splits``, or training
    and validation when only ``task`` is given. An entry that is not an object is one problem; the others
    are still checked.

    Args:
        manifest_or_path: manifest file, or a manifest dict (paths relative to ``base_dir``).
        task: one of ``TASK_KEYS``, or None for no task-specific keys.
        splits: splits whose entries are checked (default: all); each named split must be non-empty.
        refuse_outside_root: report image paths that resolve outside the manifest's folder.
        check_voxels: read voxel data (slower; without it only headers are read).
        workers: threads reading files.
        base_dir: folder relative paths are resolved against; default: the manifest file's folder, or
            the current folder for a dict.
        source: name of the manifest in the report; default: the path.
        log_warnings: also log each warning (``logging.WARNING``); the CLI prints the report instead.
        modalities: the images the run reads (a bundle's ``modalities``, T1 first); they replace the task's
            default image keys among the keys every entry needs (:func:`monai_ms.data.fields.task_keys`).

    Returns:
        a ``ValidationReport``; ``report.ok`` is True when nothing is wrong.

    Raises:
        ManifestError: the manifest file cannot be read or is not manifest-shaped; an unknown task or split.

    Examples:
        >>> report = validate_manifest("data_manifests/demo.json", task="lesion_seg")  # doctest: +SKIP
        >>> report.ok, report.final_line()  # doctest: +SKIP
        (True, 'checked 40 sessions, 120 files: 0 problems')
    """
    try:
        needed = task_keys(task, modalities)
    except ValueError as error:
        raise ManifestError(str(error)) from None
    if splits is not None:
        unknown = [s for s in splits if s not in SPLITS]
        if unknown:
            raise ManifestError(f"splits must be among {', '.join(SPLITS)}, got {', '.join(map(repr, unknown))}")
    shape_problems: list[str] = []
    if isinstance(manifest_or_path, (str, os.PathLike)):
        manifest = _read_for_validation(manifest_or_path, shape_problems)
        source = source or str(manifest_or_path)
        base = Path(base_dir) if base_dir is not None else Path(manifest_or_path).absolute().parent
    else:
        manifest = dict(check_manifest_shape(manifest_or_path, source or "<manifest>"))
        for split in SPLITS:
            manifest.setdefault(split, [])
        base = Path(base_dir) if base_dir is not None else Path.cwd()
    base = Path(os.path.abspath(base))
    chosen = list(splits) if splits is not None else list(SPLITS)
    report = ValidationReport(source=source or "<manifest>")
    for message in shape_problems:
        report.add_problem(report.source, message, kind="manifest")
    all_entries = [(split, index, entry) for split in SPLITS for index, entry in enumerate(manifest.get(split, []))]
    checked = [(split, index, entry) for split, index, entry in all_entries if split in chosen]
    report.n_sessions = len(checked)

    if not all_entries:
        report.add_problem(report.source, "no entries in any split", kind="split")
    # training tasks need training and validation entries; inference reads the testing split
    task_needs = ["testing"] if task and task.endswith("_inference") else ["training", "validation"] if task else []
    needs = chosen if splits is not None else task_needs
    for split in needs:
        if not manifest.get(split):
            reason = "they were asked for" if splits is not None else f"task {task} needs them"
            report.add_problem(split, f"empty split: no {split} entries, and {reason}", split=split, kind="split")

    # fields, and which files to look at; problems are listed entry by entry, cross-entry ones last
    per_entry: list[list[_Found]] = [[] for _ in checked]
    files: dict[str, set[str]] = defaultdict(set)
    image_refs: dict[tuple[int, str], str] = {}  # (position in checked, key) -> absolute path to inspect
    for position, (_, _, entry) in enumerate(checked):
        per_entry[position] += [_Found(message, kind="field") for message in _field_problems(entry, task, needed)]
        if not isinstance(entry, dict):
            continue
        for key in IMAGE_KEYS:
            if entry.get(key) is None:
                continue
            value = entry[key]
            if not isinstance(value, str) or not value.strip():
                per_entry[position].append(
                    _Found(f"{key} must be a non-empty path string, got {value!r}", key=key, kind="field")
                )
                continue
            path = resolve_path(value, base)
            if refuse_outside_root and os.path.commonpath([path, str(base)]) != str(base):
                per_entry[position].append(
                    _Found(
                        f"{key} {value}: path escapes the manifest folder {base} (resolves to {path})",
                        key=key,
                        path=path,
                        kind="file",
                    )
                )
                continue
            files[path].add(key)
            image_refs[(position, key)] = path

    # files: headers, then voxels, once per file, in threads
    existing = {path: roles for path, roles in files.items() if os.path.isfile(path)}
    report.n_files = len(files)
    if existing:
        logger.info("%s: reading %d files with %d threads", report.source, len(existing), workers)
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        infos = dict(zip(existing, pool.map(lambda item: _inspect(item[0], item[1], check_voxels), existing.items())))
    copies = _copies(checked, image_refs, infos)
    for position, (split, index, entry) in enumerate(checked):
        where = _where(split, index, entry)
        fields = {"split": split, "index": index, "session": _session(entry)}
        if isinstance(entry, dict):
            found, warnings = _image_problems(entry, position, image_refs, infos, check_voxels, copies)
            per_entry[position] += found
            for warning in warnings:
                report.add_warning(where, warning.message, **fields, **warning.fields())
        for problem in per_entry[position]:
            report.add_problem(where, problem.message, **fields, **problem.fields())
    _cross_entry_problems(manifest, all_entries, base, report)
    if log_warnings:
        for warning in report.warnings:
            logger.warning("%s", warning)

    report.stats = _stats(manifest, checked, image_refs, infos)
    report.stats["checks"] = (
        f"headers and voxels ({max(1, int(workers))} threads)" if check_voxels else "headers only (no voxel data read)"
    )
    return report


@dataclass(frozen=True)
class _Found:
    """A problem of one entry before it gets its place (split, index, session)."""

    message: str
    key: str | None = None
    path: str | None = None
    kind: str = "file"

    def fields(self) -> dict[str, Any]:
        return {"key": self.key, "path": self.path, "kind": self.kind}


def _read_for_validation(path: str | os.PathLike, problems: list[str]) -> dict:
    """``read_manifest``, except that entry-level shape problems (an entry that is not an object, malformed
    ``folds``) become problems of the report instead of hiding the checks of every other entry."""
    try:
        return read_manifest(path)
    except ManifestError as err:
        try:
            manifest = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise err from None
        if not isinstance(manifest, dict) or not all(isinstance(manifest.get(s, []), list) for s in SPLITS):
            raise err from None
        top = {key: value for key, value in manifest.items() if key not in (*SPLITS, "folds")}
        check_manifest_shape(top | {split: [] for split in SPLITS}, str(path))  # raises on top-level problems
        folds = manifest.get("folds")
        if folds is not None and not (
            isinstance(folds, list) and all(isinstance(f, list) and all(isinstance(s, str) for s in f) for f in folds)
        ):
            problems.append("'folds' must be a list of lists of session ids (ignored)")
            del manifest["folds"]
        for split in SPLITS:
            manifest.setdefault(split, [])
        return manifest


def _session(entry: Any) -> str | None:
    session = entry.get("session") if isinstance(entry, dict) else None
    return session if isinstance(session, str) and session else None


def _where(split: str, index: int, entry: Any) -> str:
    session = entry.get("session") if isinstance(entry, dict) else None
    return (
        f"{split}[{index}] session {session}"
        if isinstance(session, str) and session
        else f"{split}[{index}] (no session id)"
    )


def _missing(entry: Mapping[str, Any], key: str) -> bool:
    return entry.get(key) is None or (isinstance(entry.get(key), str) and not entry[key].strip())


def _field_problems(entry: Any, task: str | None, needed: Sequence[str]) -> list[str]:
    if not isinstance(entry, dict):
        return [f"must be an object (one scan session), got {entry!r}"]
    problems = []
    for key in needed:
        if _missing(entry, key):
            reason = f" (needed by task {task})" if key not in REQUIRED_KEYS else ""
            problems.append(f"missing key {key}{reason}")
    for key in ("subject", "session"):
        if not _missing(entry, key) and not isinstance(entry[key], str):
            problems.append(f"{key} must be a string, got {entry[key]!r}")
    checks = {"age": check_age, "edss": check_edss, "sex": normalise_sex}
    for key, check in checks.items():
        if entry.get(key) is not None:
            try:
                check(entry[key])
            except ValueError as err:
                problems.append(str(err))
    fold = entry.get("fold")
    if fold is not None and (isinstance(fold, bool) or not isinstance(fold, int) or fold < 0):
        problems.append(f"fold must be a non-negative integer, got {fold!r}")
    return problems


def _image_problems(
    entry: Any,
    position: int,
    image_refs: Mapping[tuple[int, str], str],
    infos: Mapping[str, _ImageInfo],
    check_voxels: bool,
    copies: Mapping[tuple[int, str], str],
) -> tuple[list[_Found], list[_Found]]:
    """(problems, warnings) of one entry's images; cause first (derived checks only on files that passed)."""
    problems: list[_Found] = []
    warnings: list[_Found] = []
    usable: dict[str, _ImageInfo] = {}
    for key in IMAGE_KEYS:
        path = image_refs.get((position, key))
        if path is None:
            continue
        label = f"{key} {entry[key]}"
        own: list[str] = []
        info = infos.get(path)
        if os.path.isdir(path):
            own.append(f"is a folder, not a NIfTI file (looked at {path})")
        elif info is None:
            own.append(f"file not found (looked at {path})")
        elif info.error:
            own.append(info.error)
        else:
            intensity = key in MODALITY_KEYS
            if info.orientation:
                own.append(info.orientation)
            size = checks.voxel_size_problem(info.zooms) if intensity else None
            if size:
                own.append(size)
            elif key == "t1" and checks.voxel_size_warning(info.zooms):
                warnings.append(_Found(f"{label}: {checks.voxel_size_warning(info.zooms)}", key, path))
            if info.nonfinite:
                own.append(f"{info.nonfinite} NaN/inf voxels")
            if intensity and info.nonzero is False:
                own.append("empty image (every voxel is 0)")
            if intensity and info.label_values:
                own.append(checks.label_map_problem(info.label_values))
            if intensity and info.skull:
                warnings.append(_Found(f"{label}: {info.skull}", key, path))
            if key == "lesion" and info.binary is False:
                values = ", ".join(f"{v:g}" for v in info.odd_values)
                own.append(f"lesion mask must be binary (0/1), found values {values}")
            if key == "tissue" and info.integer_labels is False:
                own.append("tissue map must hold non-negative integer labels")
        problems += [_Found(f"{label}: {message}", key, path) for message in own]
        if (position, key) in copies:
            own.append(copies[(position, key)])
            problems.append(_Found(f"{label}: {copies[(position, key)]}", key, path, "duplicate_contents"))
        if not own:
            usable[key] = info
    problems += _contrast_problems(entry, image_refs, position, usable)

    # derived checks: only between files that passed their own checks (the cause is reported, not its effect)
    t1 = usable.get("t1")
    for key in ("lesion", "tissue"):
        other = usable.get(key)
        if t1 is None or other is None:
            continue
        label, path = f"{key} {entry[key]}", image_refs[(position, key)]
        if other.spatial_shape != t1.spatial_shape:
            problems.append(
                _Found(
                    f"{label}: not on the T1 grid: shape {'x'.join(map(str, other.spatial_shape))}, "
                    f"T1 {'x'.join(map(str, t1.spatial_shape))}",
                    key,
                    path,
                    "derived",
                )
            )
        elif not np.allclose(other.affine, t1.affine, rtol=0, atol=GRID_ATOL):
            difference = float(np.abs(other.affine - t1.affine).max())
            problems.append(
                _Found(
                    f"{label}: not on the T1 grid: affine differs from the T1's by up to {difference:.3g} mm",
                    key,
                    path,
                    "derived",
                )
            )
        elif key == "lesion" and check_voxels:
            share = checks.lesion_share_problem(other.foreground, t1.foreground)
            if share:
                problems.append(_Found(f"{label}: {share}", key, path, "derived"))
    for key in MODALITY_KEYS[1:]:
        if t1 is not None and key in usable:
            problems += _same_head_problems(entry, key, image_refs[(position, key)], t1, usable[key], check_voxels)
    return problems, warnings


def _same_head_problems(
    entry: Mapping[str, Any], key: str, path: str, t1: _ImageInfo, other: _ImageInfo, check_voxels: bool
) -> list[_Found]:
    """The T1 and another modality of one session cover and show the same head (fields of view, centres)."""
    name = MODALITY_NAMES[key]
    overlap, centre_t1, centre_other = _fov_overlap(t1, other)
    if overlap < MIN_FOV_OVERLAP:
        message = (
            f"{key} {entry[key]}: T1 and {name} do not cover the same head: their fields of view overlap by "
            f"{overlap:.0%} of the smaller one (centres T1 {_mm(centre_t1)}, {name} {_mm(centre_other)})"
        )
        return [_Found(message, key, path, "derived")]
    if check_voxels and t1.centroid_mm is not None and other.centroid_mm is not None:
        distance = float(np.linalg.norm(t1.centroid_mm - other.centroid_mm))
        if distance > CENTROID_TOLERANCE_MM:
            message = (
                f"{key} {entry[key]}: T1 and {name} do not show the same head: foreground centres "
                f"{distance:.0f} mm apart (T1 {_mm(t1.centroid_mm)}, {name} {_mm(other.centroid_mm)}; "
                f"tolerance {CENTROID_TOLERANCE_MM:g} mm)"
            )
            return [_Found(message, key, path, "derived")]
    return []


# the contrast signature (content_checks.contrast_modality) each column must have; PD is not checked (its
# tissue classes are too close for the three-class signature)
_EXPECTED = {"t1": "t1", "t2": "t2", "flair": "t1", "t1ce": "t1"}
_SIGNATURE = {
    "t1": "a T1 is brighter in the deep white matter than in the cortex and CSF at the brain's surface",
    "t2": "a T2 is darker in the deep white matter than in the cortex and CSF at the brain's surface",
    "flair": "a FLAIR suppresses CSF: its deep white matter is brighter than the brain's surface, as in a T1",
    "t1ce": "a T1 is brighter in the deep white matter than in the cortex and CSF at the brain's surface",
}
_LOOKS = {"t1": "T1-weighted", "t2": "T2-weighted"}


def _contrast_problems(
    entry: Mapping[str, Any],
    image_refs: Mapping[tuple[int, str], str],
    position: int,
    usable: dict[str, _ImageInfo],
) -> list[_Found]:
    """T1/T2 columns whose contrast is clearly the other modality's; one line naming both when swapped.

    Files found wrong here leave ``usable`` (their grid and same-head checks would only repeat the cause).
    """
    looks = {key: checks.contrast_modality(usable[key].contrast) for key in _EXPECTED if key in usable}
    wrong = [key for key, modality in looks.items() if modality is not None and modality != _EXPECTED[key]]
    if not wrong:
        return []
    if wrong == ["t1", "t2"]:
        t1, t2 = usable.pop("t1"), usable.pop("t2")
        return [
            _Found(
                f"t1 {entry['t1']}: looks swapped with t2 {entry['t2']}: the t1 file has a T2 contrast "
                f"({checks.describe_contrast(t1.contrast)}) and the t2 file a T1 contrast "
                f"({checks.describe_contrast(t2.contrast)}); swap the two columns",
                "t1",
                image_refs[(position, "t1")],
            )
        ]
    found = []
    for key in wrong:
        info = usable.pop(key)
        hint = {
            "t1": "is this the t2 file?",
            "t2": "is this the t1 file? (a FLAIR has dark CSF too: this column needs a T2-weighted scan)",
        }.get(key, "is this the t2 file?")
        found.append(
            _Found(
                f"{key} {entry[key]}: looks {_LOOKS[looks[key]]}, not {MODALITY_NAMES[key]}-weighted "
                f"({checks.describe_contrast(info.contrast)}; {_SIGNATURE[key]}); {hint}",
                key,
                image_refs[(position, key)],
            )
        )
    return found


def _copies(
    checked: Sequence[tuple[str, int, Any]],
    image_refs: Mapping[tuple[int, str], str],
    infos: Mapping[str, _ImageInfo],
) -> dict[tuple[int, str], str]:
    """(position, key) -> the problem text for T1/T2 files whose voxels equal another file's (another path).

    Every file of such a group is named, each with the others: which one is the session's own scan is not
    known. Empty images, label maps and files with NaN are left to their own checks.
    """
    groups: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for (position, key), path in image_refs.items():
        info = infos.get(path)
        if key not in MODALITY_KEYS or info is None or info.error or not info.digest or not info.nonzero:
            continue
        if not info.nonfinite and not info.label_values:
            groups[info.digest].append((position, key, path))
    found: dict[tuple[int, str], str] = {}
    for members in groups.values():
        if len({path for _, _, path in members}) < 2:
            continue  # one file used twice: the shared-file check says so
        for position, key, path in members:
            others = []
            for other_position, other_key, other_path in sorted(members):
                if other_path == path:
                    continue
                split, index, entry = checked[other_position]
                place = "this session" if other_position == position else _where(split, index, entry)
                others.append(f"{other_key} {entry[other_key]} of {place}")
            found[(position, key)] = (
                f"same voxel contents as {', '.join(others)}: a copy, one of them is not this session's scan"
            )
    return found


def _cross_entry_problems(
    manifest: Mapping[str, Any], all_entries: Sequence[tuple[str, int, Any]], base: Path, report: ValidationReport
) -> None:
    """Problems between entries, over all splits: duplicates, leakage, inconsistent sex, shared files, folds."""
    sessions: dict[str, list[str]] = defaultdict(list)
    subject_splits: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    subject_folds: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    subject_sex: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    file_users: dict[str, list[tuple[str, str, str]]] = defaultdict(list)  # path -> (where, key, value)
    entry_folds: dict[str, tuple[str, Any]] = {}
    for split, index, entry in all_entries:
        if not isinstance(entry, dict):
            continue
        position = f"{split}[{index}]"
        session, subject = entry.get("session"), entry.get("subject")
        if isinstance(session, str) and session:
            sessions[session].append(position)
            entry_folds[session] = (split, entry.get("fold"))
        if isinstance(subject, str) and subject:
            subject_splits[subject][split].append(position)
            if split != "testing" and isinstance(entry.get("fold"), int):
                subject_folds[subject][entry["fold"]].append(position)
            try:
                subject_sex[subject][normalise_sex(entry.get("sex"))].append(position)
            except ValueError:
                pass
        for key in MODALITY_KEYS:
            if isinstance(entry.get(key), str) and entry[key].strip():
                file_users[resolve_path(entry[key], base)].append((_where(split, index, entry), key, entry[key]))
    for session, positions in sessions.items():
        if len(positions) > 1:
            report.add_problem(
                f"{positions[0]} session {session}",
                f"duplicate session id: also at {', '.join(positions[1:])}",
                session=session,
                kind="session",
            )
    for subject, by_split in subject_splits.items():
        if len(by_split) > 1:
            places = ", ".join(position for positions in by_split.values() for position in positions)
            report.add_problem(
                f"subject {subject}",
                f"in more than one split ({places}): leakage, a patient must be in one split only",
                kind="subject",
            )
    for subject, by_fold in subject_folds.items():
        if len(by_fold) > 1:
            places = "; ".join(f"fold {fold}: {', '.join(p)}" for fold, p in sorted(by_fold.items()))
            report.add_problem(f"subject {subject}", f"in more than one fold ({places}): leakage between folds", kind="subject")
    for subject, by_sex in subject_sex.items():
        if len(by_sex) > 1:
            places = "; ".join(f"{sex} at {', '.join(p)}" for sex, p in sorted(by_sex.items()))
            report.add_problem(f"subject {subject}", f"sex differs between sessions ({places})", kind="subject")
    for users in file_users.values():
        # a duplicated entry (same session id) is already reported as a duplicate session
        others = [
            user for user in users[1:] if user[0].partition(" session ")[2] != users[0][0].partition(" session ")[2]
        ]
        if others:
            where, key, value = users[0]
            also = ", ".join(f"{w} ({k})" for w, k, _ in others)
            report.add_problem(
                where, f"{key} {value}: the same image file is also used by {also}", key=key, kind="shared_file"
            )
    folds = manifest.get("folds")
    if folds is not None:
        listed: dict[str, int] = {}
        for fold, members in enumerate(folds):
            for session in members:
                if session in listed:
                    report.add_problem(
                        f"folds[{fold}]", f"session {session} is also in folds[{listed[session]}]", kind="folds"
                    )
                listed.setdefault(session, fold)
                split, entry_fold = entry_folds.get(session, (None, None))
                if split is None:
                    report.add_problem(f"folds[{fold}]", f"session {session} is not an entry of the manifest", kind="folds")
                elif split == "testing":
                    report.add_problem(
                        f"folds[{fold}]",
                        f"session {session} is a testing entry; folds hold non-test entries",
                        kind="folds",
                    )
                elif entry_fold != fold:
                    report.add_problem(
                        f"folds[{fold}]",
                        f"session {session} is listed here but its entry says fold {entry_fold}",
                        kind="folds",
                    )
        for split, index, entry in all_entries:
            if split != "testing" and isinstance(entry, dict) and entry.get("session") not in listed:
                report.add_problem(_where(split, index, entry), "not in any of the manifest's folds", kind="folds")


def _stats(
    manifest: Mapping[str, Any],
    checked: Sequence[tuple[str, int, Any]],
    image_refs: Mapping[tuple[int, str], str],
    infos: Mapping[str, _ImageInfo],
) -> dict[str, Any]:
    entries = [entry for _, _, entry in checked if isinstance(entry, dict)]
    images: dict[str, dict[str, Any]] = {}
    for key in IMAGE_KEYS:
        paths = [path for (_, k), path in image_refs.items() if k == key]
        good = [infos[p] for p in paths if p in infos and not infos[p].error]
        images[key] = {
            "referenced": sum(key in entry and entry[key] is not None for entry in entries),
            "found": sum(p in infos for p in paths),
            "shapes": [info.spatial_shape for info in good],
            "zooms": [info.zooms for info in good],
        }
    ages = [float(e["age"]) for e in entries if _number(e.get("age"))]
    edss = [float(e["edss"]) for e in entries if _number(e.get("edss"))]
    sexes: Counter[str] = Counter()
    for entry in entries:
        try:
            sexes[normalise_sex(entry.get("sex"))] += 1
        except ValueError:
            sexes["missing" if entry.get("sex") is None else "invalid"] += 1
    subjects = {e.get("subject") for e in entries if isinstance(e.get("subject"), str)}
    return {
        "name": manifest.get("name"),
        "split_sizes": {split: len(manifest.get(split, [])) for split in SPLITS},
        "subjects": len(subjects),
        "folds": len(manifest["folds"]) if isinstance(manifest.get("folds"), list) else 0,
        "images": images,
        "ages": ages,
        "edss": edss,
        "sexes": dict(sexes),
        "scanners": dict(Counter(str(e["scanner"]) for e in entries if e.get("scanner") is not None)),
    }


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
