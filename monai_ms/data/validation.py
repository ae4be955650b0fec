"""Check a manifest against its files before anything trains on it.

``validate_manifest`` looks at every field and every image a manifest names and returns a report: what it
looked at (entries per split, subjects, image shapes and spacings, age/sex/EDSS distributions, lesion masks
present) and one line per problem, each naming the split and index, the session, the key and the file::

    training[3] session sub-01-01: t2 T2/sub-01-01_T2.nii.gz: file not found (looked at /data/T2/sub-01-01_T2.nii.gz)

Headers are read first (shape, affine, spacing); voxel checks then read each file's data once, in threads
(gzip decompression releases the GIL): truncated files, NaN/inf voxels, empty images, binary lesion masks and
whether T1 and T2 show the same head.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_ms.data.manifest import (
    IMAGE_KEYS,
    REQUIRED_KEYS,
    SPLITS,
    TASK_KEYS,
    ManifestError,
    check_age,
    check_edss,
    check_manifest_shape,
    normalise_sex,
    read_manifest,
    resolve_path,
)

__all__ = ["Problem", "ValidationReport", "validate_manifest", "CENTROID_TOLERANCE_MM", "MIN_FOV_OVERLAP"]

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


@dataclass(frozen=True)
class Problem:
    """One problem: where it is (split[index] and session, or a subject) and what is wrong.

    Examples:
        >>> str(Problem("training[3] session sub-01-01", "age must be ..., got 130"))
        'training[3] session sub-01-01: age must be ..., got 130'
    """

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class ValidationReport:
    """Result of ``validate_manifest``: problems and a summary of what was looked at.

    Attributes:
        problems: one ``Problem`` per problem found.
        source: the manifest file (or ``"<manifest>"`` for an in-memory dict).
        n_sessions: entries checked.
        n_files: distinct image files referenced by those entries.
        stats: figures for ``summary_lines``.

    Examples:
        >>> report = validate_manifest("manifest.json", task="edss")  # doctest: +SKIP
        >>> print(report.format())  # doctest: +SKIP
    """

    problems: list[Problem] = field(default_factory=list)
    source: str = "<manifest>"
    n_sessions: int = 0
    n_files: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def add_problem(self, where: str, message: str) -> None:
        """Record a problem."""
        self.problems.append(Problem(where, message))

    def problem_lines(self) -> list[str]:
        """One line per problem."""
        return [str(problem) for problem in self.problems]

    def final_line(self) -> str:
        """E.g. ``checked 40 sessions, 120 files: 0 problems``."""
        count = len(self.problems)
        return f"checked {self.n_sessions} sessions, {self.n_files} files: {count} problem{'' if count == 1 else 's'}"

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
        """Summary lines, then one line per problem, then the final count line."""
        return "\n".join(self.summary_lines() + self.problem_lines() + [self.final_line()])


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
    nonfinite: int = 0
    nonzero: bool | None = None
    binary: bool | None = None
    odd_values: list[float] = field(default_factory=list)
    integer_labels: bool | None = None
    centroid_mm: np.ndarray | None = None

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
    if not check_voxels:
        return info
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as err:
        info.error = f"cannot read the voxel data, the file is truncated or corrupt ({type(err).__name__}: {err})"
        return info
    data = data.reshape(info.spatial_shape)
    if np.issubdtype(data.dtype, np.inexact):
        finite = np.isfinite(data)
        info.nonfinite = int(data.size - np.count_nonzero(finite))
        if info.nonfinite:
            data = np.where(finite, data, 0)
    info.nonzero = bool(np.any(data))
    if "lesion" in roles:
        is_binary = (data == 0) | (data == 1)
        info.binary = bool(is_binary.all())
        if not info.binary:
            info.odd_values = [float(v) for v in np.unique(data[~is_binary])[:5]]
    if "tissue" in roles:
        info.integer_labels = bool(np.all(data == np.round(data)) and data.min() >= 0)
    if roles & {"t1", "t2"} and info.nonzero:
        info.centroid_mm = _foreground_centroid_mm(data, info.affine)
    return info


def _expected_size(image: Any, path: str) -> int | None:
    """Bytes an uncompressed single-file NIfTI must have (gzip files are checked by reading their data)."""
    if not path.endswith(".nii"):
        return None
    proxy = image.dataobj
    if not all(hasattr(proxy, name) for name in ("offset", "shape", "dtype")):
        return None
    return int(proxy.offset) + int(np.prod(proxy.shape)) * np.dtype(proxy.dtype).itemsize


def _foreground_centroid_mm(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    magnitude = np.abs(data.astype(np.float32, copy=False))
    # above a tenth of the bright end: the head, not background noise (works with and without skull stripping)
    threshold = 0.1 * float(np.percentile(magnitude[magnitude > 0], 99))
    centroid = np.asarray(ndimage.center_of_mass(magnitude > threshold))
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
) -> ValidationReport:
    """Check every field and image of a manifest; report what was looked at and each problem.

    Checked per entry of the chosen splits: required keys (``subject``, ``session``, ``t1``) and the keys
    ``task`` needs; age (number in [0, 120]); sex (F/M/female/male, any case); EDSS (0-10 in steps of 0.5);
    every image key present (``t1``, ``t2``, ``lesion``, ``tissue``): file exists, readable NIfTI, 3D (a
    singleton 4th dimension is fine), finite affine, within the manifest folder when
    ``refuse_outside_root``; with ``check_voxels``: data readable (truncated gzip), no NaN/inf, T1/T2 not
    all zero, lesion mask binary, tissue map non-negative integers. Lesion and tissue maps must be on the
    T1 grid (shape and affine); T1 and T2 must cover the same head (fields of view overlap by at least
    ``MIN_FOV_OVERLAP`` of the smaller one and, with voxels, foreground centroids within
    ``CENTROID_TOLERANCE_MM``). Across all splits: duplicate session ids, a subject in two splits or two
    folds (leakage), a subject whose sex differs between sessions, one image file used by two sessions,
    ``folds`` lists that disagree with the entries. Empty splits: those named in ``splits``, or training
    and validation when only ``task`` is given.

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

    Returns:
        a ``ValidationReport``; ``report.ok`` is True when nothing is wrong.

    Raises:
        ManifestError: the manifest file cannot be read or is not manifest-shaped; an unknown task or split.

    Examples:
        >>> report = validate_manifest("data_manifests/demo.json", task="lesion_seg")  # doctest: +SKIP
        >>> report.ok, report.final_line()  # doctest: +SKIP
        (True, 'checked 40 sessions, 120 files: 0 problems')
    """
    if task is not None and task not in TASK_KEYS:
        raise ManifestError(f"task must be one of {', '.join(TASK_KEYS)}, got {task!r}")
    if splits is not None:
        unknown = [s for s in splits if s not in SPLITS]
        if unknown:
            raise ManifestError(f"splits must be among {', '.join(SPLITS)}, got {', '.join(map(repr, unknown))}")
    if isinstance(manifest_or_path, (str, os.PathLike)):
        manifest = read_manifest(manifest_or_path)
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
    all_entries = [(split, index, entry) for split in SPLITS for index, entry in enumerate(manifest.get(split, []))]
    checked = [(split, index, entry) for split, index, entry in all_entries if split in chosen]
    report.n_sessions = len(checked)

    if not all_entries:
        report.add_problem(report.source, "no entries in any split")
    # training tasks need training and validation entries; inference reads the testing split
    task_needs = ["testing"] if task and task.endswith("_inference") else ["training", "validation"] if task else []
    needs = chosen if splits is not None else task_needs
    for split in needs:
        if not manifest.get(split):
            reason = "they were asked for" if splits is not None else f"task {task} needs them"
            report.add_problem(split, f"empty split: no {split} entries, and {reason}")

    # fields, and which files to look at; problems are listed entry by entry, cross-entry ones last
    per_entry: list[list[str]] = [[] for _ in checked]
    files: dict[str, set[str]] = defaultdict(set)
    image_refs: dict[tuple[int, str], str] = {}  # (position in checked, key) -> absolute path to inspect
    for position, (_, _, entry) in enumerate(checked):
        per_entry[position] += _field_problems(entry, task)
        if not isinstance(entry, dict):
            continue
        for key in IMAGE_KEYS:
            if entry.get(key) is None:
                continue
            value = entry[key]
            if not isinstance(value, str) or not value.strip():
                per_entry[position].append(f"{key} must be a non-empty path string, got {value!r}")
                continue
            path = resolve_path(value, base)
            if refuse_outside_root and os.path.commonpath([path, str(base)]) != str(base):
                per_entry[position].append(
                    f"{key} {value}: path escapes the manifest folder {base} (resolves to {path})"
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
    for position, (split, index, entry) in enumerate(checked):
        if isinstance(entry, dict):
            per_entry[position] += _image_problems(entry, position, image_refs, infos, check_voxels)
        for message in per_entry[position]:
            report.add_problem(_where(split, index, entry), message)
    _cross_entry_problems(manifest, all_entries, base, report)

    report.stats = _stats(manifest, checked, image_refs, infos)
    report.stats["checks"] = (
        f"headers and voxels ({max(1, int(workers))} threads)" if check_voxels else "headers only (no voxel data read)"
    )
    return report


def _where(split: str, index: int, entry: Any) -> str:
    session = entry.get("session") if isinstance(entry, dict) else None
    return (
        f"{split}[{index}] session {session}"
        if isinstance(session, str) and session
        else f"{split}[{index}] (no session id)"
    )


def _missing(entry: Mapping[str, Any], key: str) -> bool:
    return entry.get(key) is None or (isinstance(entry.get(key), str) and not entry[key].strip())


def _field_problems(entry: Any, task: str | None) -> list[str]:
    if not isinstance(entry, dict):
        return [f"must be an object (one scan session), got {entry!r}"]
    problems = []
    needed = list(REQUIRED_KEYS) + [key for key in TASK_KEYS.get(task, ()) if key not in REQUIRED_KEYS]
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
) -> list[str]:
    problems = []
    usable: dict[str, _ImageInfo] = {}
    for key in IMAGE_KEYS:
        path = image_refs.get((position, key))
        if path is None:
            continue
        label = f"{key} {entry[key]}"
        if os.path.isdir(path):
            problems.append(f"{label}: is a folder, not a NIfTI file (looked at {path})")
            continue
        info = infos.get(path)
        if info is None:
            problems.append(f"{label}: file not found (looked at {path})")
            continue
        if info.error:
            problems.append(f"{label}: {info.error}")
            continue
        usable[key] = info
        if info.nonfinite:
            problems.append(f"{label}: {info.nonfinite} NaN/inf voxels")
        if key in ("t1", "t2") and info.nonzero is False:
            problems.append(f"{label}: empty image (every voxel is 0)")
        if key == "lesion" and info.binary is False:
            values = ", ".join(f"{v:g}" for v in info.odd_values)
            problems.append(f"{label}: lesion mask must be binary (0/1), found values {values}")
        if key == "tissue" and info.integer_labels is False:
            problems.append(f"{label}: tissue map must hold non-negative integer labels")
    t1 = usable.get("t1")
    for key in ("lesion", "tissue"):
        other = usable.get(key)
        if t1 is None or other is None:
            continue
        label = f"{key} {entry[key]}"
        if other.spatial_shape != t1.spatial_shape:
            problems.append(
                f"{label}: not on the T1 grid: shape {'x'.join(map(str, other.spatial_shape))}, "
                f"T1 {'x'.join(map(str, t1.spatial_shape))}"
            )
        elif not np.allclose(other.affine, t1.affine, rtol=0, atol=GRID_ATOL):
            difference = float(np.abs(other.affine - t1.affine).max())
            problems.append(f"{label}: not on the T1 grid: affine differs from the T1's by up to {difference:.3g} mm")
    t2 = usable.get("t2")
    if t1 is not None and t2 is not None:
        overlap, centre_t1, centre_t2 = _fov_overlap(t1, t2)
        if overlap < MIN_FOV_OVERLAP:
            problems.append(
                f"t2 {entry['t2']}: T1 and T2 do not cover the same head: their fields of view overlap by "
                f"{overlap:.0%} of the smaller one (centres T1 {_mm(centre_t1)}, T2 {_mm(centre_t2)})"
            )
        elif check_voxels and t1.centroid_mm is not None and t2.centroid_mm is not None:
            distance = float(np.linalg.norm(t1.centroid_mm - t2.centroid_mm))
            if distance > CENTROID_TOLERANCE_MM:
                problems.append(
                    f"t2 {entry['t2']}: T1 and T2 do not show the same head: foreground centres "
                    f"{distance:.0f} mm apart (T1 {_mm(t1.centroid_mm)}, T2 {_mm(t2.centroid_mm)}; "
                    f"tolerance {CENTROID_TOLERANCE_MM:g} mm)"
                )
    return problems


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
        for key in ("t1", "t2"):
            if isinstance(entry.get(key), str) and entry[key].strip():
                file_users[resolve_path(entry[key], base)].append((_where(split, index, entry), key, entry[key]))
    for session, positions in sessions.items():
        if len(positions) > 1:
            report.add_problem(
                f"{positions[0]} session {session}", f"duplicate session id: also at {', '.join(positions[1:])}"
            )
    for subject, by_split in subject_splits.items():
        if len(by_split) > 1:
            places = ", ".join(position for positions in by_split.values() for position in positions)
            report.add_problem(
                f"subject {subject}", f"in more than one split ({places}): leakage, a patient must be in one split only"
            )
    for subject, by_fold in subject_folds.items():
        if len(by_fold) > 1:
            places = "; ".join(f"fold {fold}: {', '.join(p)}" for fold, p in sorted(by_fold.items()))
            report.add_problem(f"subject {subject}", f"in more than one fold ({places}): leakage between folds")
    for subject, by_sex in subject_sex.items():
        if len(by_sex) > 1:
            places = "; ".join(f"{sex} at {', '.join(p)}" for sex, p in sorted(by_sex.items()))
            report.add_problem(f"subject {subject}", f"sex differs between sessions ({places})")
    for users in file_users.values():
        # a duplicated entry (same session id) is already reported as a duplicate session
        others = [
            user for user in users[1:] if user[0].partition(" session ")[2] != users[0][0].partition(" session ")[2]
        ]
        if others:
            where, key, value = users[0]
            also = ", ".join(f"{w} ({k})" for w, k, _ in others)
            report.add_problem(where, f"{key} {value}: the same image file is also used by {also}")
    folds = manifest.get("folds")
    if folds is not None:
        listed: dict[str, int] = {}
        for fold, members in enumerate(folds):
            for session in members:
                if session in listed:
                    report.add_problem(f"folds[{fold}]", f"session {session} is also in folds[{listed[session]}]")
                listed.setdefault(session, fold)
                split, entry_fold = entry_folds.get(session, (None, None))
                if split is None:
                    report.add_problem(f"folds[{fold}]", f"session {session} is not an entry of the manifest")
                elif split == "testing":
                    report.add_problem(
                        f"folds[{fold}]", f"session {session} is a testing entry; folds hold non-test entries"
                    )
                elif entry_fold != fold:
                    report.add_problem(
                        f"folds[{fold}]", f"session {session} is listed here but its entry says fold {entry_fold}"
                    )
        for split, index, entry in all_entries:
            if split != "testing" and isinstance(entry, dict) and entry.get("session") not in listed:
                report.add_problem(_where(split, index, entry), "not in any of the manifest's folds")


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
