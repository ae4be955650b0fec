"""Checks of what an image file contains: pure functions on voxel arrays and NIfTI headers.

``monai_ms.data.validation.validate_manifest`` calls these on the voxels it reads once per file; batch
inference gets them through the same validation. Each function returns ``None`` when the file passes, or one
short sentence saying what is wrong and the threshold it broke; each threshold is a module-level constant
(the default of the matching argument), documented in ``data_manifests/README.md`` with the reason for it.

The contrast check needs tissue classes without labels: inside the brain (the non-zero voxels of a
skull-stripped scan) the intensities are split into 3 classes by 1-D k-means (on a 256-bin histogram, so
it costs microseconds after one pass over the voxels). In a T1-weighted brain the brightest class (white
matter) is large and the darkest (CSF) small; in a T2-weighted brain the brightest class (CSF) is small and
the darkest (white matter) large. ``log(n_brightest / n_darkest)`` is therefore positive for T1 and negative
for T2; it is unchanged by a global intensity scale or offset and by a smooth bias field of the size
scanners have (it shifts class boundaries, not which class is the large one). On the 73 sessions of the demo
cohort it lies in [0.59, 1.09] for T1 and [-1.54, -1.09] for T2.

Examples:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> brain = np.concatenate([rng.normal(m, 0.03, n) for m, n in ((0.4, 1700), (0.7, 4200), (1.0, 4100))])
    >>> contrast_modality(tissue_contrast(brain))
    't1'
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MAX_LABEL_VALUES",
    "CONTRAST_MARGIN",
    "MIN_CONTRAST_VOXELS",
    "MIN_VOXEL_MM",
    "MAX_INPLANE_MM",
    "MAX_SLICE_MM",
    "T1_ANISOTROPY_WARN",
    "T1_SLICE_WARN_MM",
    "MAX_LESION_SHARE",
    "MAX_BRAIN_ML",
    "SAMPLE_SIZE",
    "TissueContrast",
    "orientation_problem",
    "voxel_size_problem",
    "voxel_size_warning",
    "split_foreground",
    "foreground_sample",
    "distinct_values",
    "label_map_problem",
    "tissue_contrast",
    "contrast_modality",
    "describe_contrast",
    "depth_contrast",
    "DEPTH_MARGIN",
    "lesion_share_problem",
    "skull_strip_warning",
    "voxel_hash",
]

MAX_LABEL_VALUES = 16
"""An intensity image with at most this many distinct non-zero values is a label map (a mask, a
segmentation), not a scan: a real T1/T2 has thousands of distinct values, even stored as 8-bit integers."""
CONTRAST_MARGIN = 0.4
"""|log(n_brightest / n_darkest)| below this is "undetermined" and not reported: only a clear signature of
the other modality is. Demo cohort: T1 >= 0.59, T2 <= -1.09; uniform noise (no tissue classes) is ~0."""
DEPTH_SHELL_MM = 4.0
DEPTH_CORE_MM = 15.0
DEPTH_MARGIN = 0.05
"""The depth signature (:func:`depth_contrast`): the brain's outer ``DEPTH_SHELL_MM`` (cortex and the CSF of
the sulci) against its core, ``DEPTH_CORE_MM`` or deeper (white matter, deep grey matter, ventricles).
``|log(core median / shell median)|`` below ``DEPTH_MARGIN`` is undetermined. Measured on the 11 sessions
(8 subjects, seed 3) of the reference cohort and of each cohort shift (contrast, bias, noise, resolution,
pose, all; 77 sessions): T1 +0.19 to +0.49, FLAIR +0.07 to +0.33, T2 -0.08 to -0.32; MNI ICBM152 2009c
templates T1 +0.25, T2 -0.16. The class-share signature (``log_ratio``) of the same T1s went as low as
-0.65 (a strong bias field; bias and coarse voxels together), i.e. it called them T2 and refused the
cohort: that is why the depth signature decides when it can be measured."""
MIN_CONTRAST_VOXELS = 2000
"""Fewer brain voxels than this: no contrast check (too few for three classes; a whole brain has > 7000
voxels even at 6 mm). Tiny test phantoms stay below it."""
MIN_VOXEL_MM = 0.2
"""A voxel edge below 0.2 mm is not a clinical brain MRI: the header's units are wrong (e.g. metres)."""
MAX_INPLANE_MM = 6.0
"""The two finer voxel edges above 6 mm: a thumbnail or a wrong export (the bundles work at 1-2 mm; a 10 mm
"scan" shows no lesion). Refused."""
MAX_SLICE_MM = 10.0
"""Slice thickness (the coarsest edge) above 10 mm is refused for every modality; 2D T2 with 3-6 mm slices
(and gaps) is normal and accepted."""
T1_SLICE_WARN_MM = 3.0
T1_ANISOTROPY_WARN = 2.0
"""A T1 with slices thicker than 3 mm and more than 2x its in-plane size gets a warning: the T1 is the
reference grid (lesion masks live on it, the T2 is resampled onto it), so a 2D T1 costs resolution."""
MAX_LESION_SHARE = 0.25
"""A lesion mask covering more than a quarter of the brain (the T1's non-zero voxels) is not a lesion load:
the heaviest MS loads are ~100-150 mL, about 10% of the intracranial volume (demo cohort: at most 2.2%)."""
MAX_BRAIN_ML = 3000.0
"""Non-zero volume above 3 L is a head, not a skull-stripped brain: an adult intracranial volume is
1.1-2.1 L (synthetic cohort: up to 2.3 L), a head with scalp and skull 3.5 L or more; a noisy background
makes the whole field of view non-zero. A warning: the bundles expect skull-stripped input."""
SAMPLE_SIZE = 50_000
"""Foreground voxels (evenly strided) used by the contrast and label-map checks; plenty for a 3-class
histogram, and the cost stays flat at 1 mm."""


@dataclass(frozen=True)
class TissueContrast:
    """Three intensity classes of the brain voxels (darkest first).

    Attributes:
        centres: class means, darkest first (same units as the image).
        shares: share of the brain voxels in each class (sums to 1).
        log_ratio: ``log(share of the brightest / share of the darkest)``; > 0 looks T1, < 0 looks T2.
        depth_log_ratio: :func:`depth_contrast` of the volume (> 0 looks T1 or FLAIR, < 0 looks T2), or
            None when the image has no core that deep; when present it decides (:func:`contrast_modality`).
    """

    centres: tuple[float, float, float]
    shares: tuple[float, float, float]
    log_ratio: float
    depth_log_ratio: float | None = None


def orientation_problem(qform_code: int, sform_code: int) -> str | None:
    """A problem when the header says nothing about orientation (both codes 0).

    Args:
        qform_code: the header's ``qform_code``.
        sform_code: the header's ``sform_code``.

    Returns:
        None when either code is > 0, else the message.

    Examples:
        >>> orientation_problem(0, 2) is None
        True
    """
    if int(qform_code) > 0 or int(sform_code) > 0:
        return None
    return (
        "orientation unknown: qform_code and sform_code are both 0, so left/right and the position in "
        "the scanner are not known (re-export the file with its orientation, e.g. with dcm2niix)"
    )


def _edges(zooms: Sequence[float]) -> tuple[float, float]:
    """(coarsest in-plane edge, slice thickness): the slice axis is the coarsest one."""
    ordered = sorted(float(z) for z in zooms[:3])
    return ordered[1], ordered[2]


def voxel_size_problem(
    zooms: Sequence[float],
    min_mm: float = MIN_VOXEL_MM,
    max_inplane_mm: float = MAX_INPLANE_MM,
    max_slice_mm: float = MAX_SLICE_MM,
) -> str | None:
    """A problem (refused) when the voxel size is not that of a usable brain scan.

    Args:
        zooms: voxel edges in mm (the first 3 are used).
        min_mm: smallest plausible edge.
        max_inplane_mm: largest plausible in-plane edge (the two finer edges).
        max_slice_mm: largest plausible slice thickness (the coarsest edge).

    Returns:
        None, or e.g. ``"voxel size 10x10x10 mm: in-plane 10 mm is more than 6 mm (a thumbnail or a wrong
        export); refused"``.

    Examples:
        >>> voxel_size_problem((0.9, 0.9, 5.0)) is None
        True
    """
    size = "x".join(f"{float(z):.3g}" for z in zooms[:3])
    inplane, thickness = _edges(zooms)
    if min(float(z) for z in zooms[:3]) < min_mm:
        return f"voxel size {size} mm: an edge below {min_mm:g} mm is not a brain MRI (wrong units in the header?); refused"
    if inplane > max_inplane_mm:
        return (
            f"voxel size {size} mm: in-plane {inplane:.3g} mm is more than {max_inplane_mm:g} mm "
            "(a thumbnail or a wrong export); refused"
        )
    if thickness > max_slice_mm:
        return f"voxel size {size} mm: slices of {thickness:.3g} mm are thicker than {max_slice_mm:g} mm; refused"
    return None


def voxel_size_warning(
    zooms: Sequence[float], slice_mm: float = T1_SLICE_WARN_MM, anisotropy: float = T1_ANISOTROPY_WARN
) -> str | None:
    """A warning for a T1 with thick slices (2D acquisition): accepted, but the reference grid is coarse.

    Args:
        zooms: voxel edges of the T1 in mm.
        slice_mm: slice thickness above which a T1 is warned about ...
        anisotropy: ... when it is also more than this many times the in-plane size.

    Returns:
        None, or the warning.

    Examples:
        >>> voxel_size_warning((1.0, 1.0, 1.0)) is None, voxel_size_warning((0.9, 0.9, 5.0)) is None
        (True, False)
    """
    inplane, thickness = _edges(zooms)
    if thickness > slice_mm and thickness > anisotropy * inplane:
        size = "x".join(f"{float(z):.3g}" for z in zooms[:3])
        return (
            f"voxel size {size} mm: a T1 with {thickness:.3g} mm slices (2D); accepted, but lesion masks and the T2 "
            "are put on this grid, so a 3D T1 (<= 1.5 mm) gives better results"
        )
    return None


def split_foreground(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero voxels of a volume: (boolean mask, their values in C order); one pass over the data.

    Args:
        data: the volume (any shape), finite values.

    Returns:
        (mask of ``data.shape``, 1-D values).

    Examples:
        >>> mask, values = split_foreground(np.array([0.0, 2.0, 0.0, 3.0]))
        >>> values.tolist()
        [2.0, 3.0]
    """
    mask = data != 0
    return mask, data[mask]


def foreground_sample(values: np.ndarray, size: int = SAMPLE_SIZE) -> np.ndarray:
    """Evenly strided values (at most about ``size``) as float32, for the histogram-based checks.

    Examples:
        >>> foreground_sample(np.arange(10.0), size=3).size <= 5
        True
    """
    values = np.asarray(values).reshape(-1)
    step = max(1, values.size // max(1, int(size)))
    return np.asarray(values[::step], dtype=np.float32)


def distinct_values(sample: np.ndarray, limit: int = MAX_LABEL_VALUES) -> list[float] | None:
    """The distinct values of ``sample`` when there are at most ``limit``, else None.

    Examples:
        >>> distinct_values(np.array([1.0, 2.0, 1.0]))
        [1.0, 2.0]
    """
    values = np.unique(sample)
    return [float(v) for v in values] if values.size <= limit else None


def label_map_problem(values: Sequence[float] | None, limit: int = MAX_LABEL_VALUES) -> str | None:
    """A problem when an intensity image holds only a handful of distinct values (a label map).

    Args:
        values: the distinct non-zero values (``distinct_values`` of all foreground voxels), or None when
            there are more than ``limit``.
        limit: most distinct values a label map has.

    Returns:
        None, or the message naming the values.

    Examples:
        >>> label_map_problem([1.0])
        'holds only 1 distinct non-zero value (1), a label map or mask, not an MR image (at most 16 means a label map)'
    """
    if values is None or not len(values):
        return None
    shown = ", ".join(f"{v:g}" for v in list(values)[:8]) + (", ..." if len(values) > 8 else "")
    plural = "s" if len(values) != 1 else ""
    return (
        f"holds only {len(values)} distinct non-zero value{plural} ({shown}), a label map or mask, not an MR image "
        f"(at most {limit} means a label map)"
    )


def tissue_contrast(
    values: np.ndarray, bins: int = 256, iterations: int = 100, min_voxels: int = MIN_CONTRAST_VOXELS
) -> TissueContrast | None:
    """Three tissue classes of the brain intensities by 1-D k-means on their histogram.

    The 0.5% tails are left out (vessels, noise spikes); the classes start at the 10th, 50th and 90th
    percentiles.

    Args:
        values: brain (non-zero) intensities, 1-D (e.g. from ``foreground_sample``).
        bins: histogram bins.
        iterations: most k-means updates (it converges in ~10).
        min_voxels: fewer values than this give None.

    Returns:
        the classes, or None when there are too few values (or distinct values) to have three.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> t2 = np.concatenate([rng.normal(m, 0.03, n) for m, n in ((0.5, 5000), (0.7, 3700), (1.0, 1300))])
        >>> round(tissue_contrast(t2).log_ratio, 1)
        -1.4
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size < max(30, int(min_voxels)):
        return None
    low, start_dark, start_mid, start_bright, high = np.percentile(values, [0.5, 10, 50, 90, 99.5])
    if not high > low:
        return None
    counts, edges = np.histogram(values, bins=bins, range=(low, high))  # the 0.5% tails fall outside
    counts = counts.astype(float)
    mids = (edges[:-1] + edges[1:]) / 2
    centres = np.array([start_dark, start_mid, start_bright], dtype=float)
    for _ in range(iterations):
        centres = np.sort(centres)
        labels = np.searchsorted((centres[:-1] + centres[1:]) / 2, mids)  # nearest centre of each bin
        weights = np.bincount(labels, weights=counts, minlength=3)
        sums = np.bincount(labels, weights=counts * mids, minlength=3)
        updated = np.where(weights > 0, sums / np.maximum(weights, 1e-12), centres)
        if np.all(np.abs(updated - centres) <= 1e-9 * (high - low)):
            break
        centres = updated
    centres = np.sort(centres)
    labels = np.searchsorted((centres[:-1] + centres[1:]) / 2, mids)
    shares = np.bincount(labels, weights=counts, minlength=3) / counts.sum()
    ratio = math.log((shares[2] + 1e-6) / (shares[0] + 1e-6))
    return TissueContrast(
        tuple(float(c) for c in centres), tuple(float(s) for s in shares), ratio  # type: ignore[arg-type]
    )


def depth_contrast(
    data: np.ndarray,
    zooms: Sequence[float],
    shell_mm: float = DEPTH_SHELL_MM,
    core_mm: float = DEPTH_CORE_MM,
    grid_mm: float = 2.0,
    min_voxels: int = 100,
) -> float | None:
    """``log(median of the deep brain / median of its outer shell)``: > 0 looks T1 (or FLAIR), < 0 looks T2.

    In a skull-stripped scan the outer few millimetres are cortex and sulcal CSF, the core is white matter,
    deep grey matter and ventricles. On a T1 (and a FLAIR) the core is brighter; on a T2 darker. Unlike the
    share of voxels in intensity classes, this ordering does not depend on how strong the contrast is, on a
    smooth bias field, or on partial volume at coarse voxels.

    Args:
        data: the volume ``(I, J, K)``, zero outside the brain.
        zooms: voxel size in mm, ``(3,)``.
        shell_mm: depth of the outer shell.
        core_mm: the core starts this deep.
        grid_mm: the depth map is computed on every n-th voxel so that steps are at least this (cost).
        min_voxels: fewer shell or core voxels than this give None.

    Returns:
        the log ratio, or None when the brain has no core ``core_mm`` deep (small field of view, thumbnails).

    Examples:
        >>> r = np.linalg.norm(np.indices((40, 40, 40)) - 19.5, axis=0)  # 2 mm voxels: a 40 mm ball
        >>> t1 = np.select([r < 15, r < 20], [1.0, 0.7], 0.0)  # white matter inside, grey matter outside
        >>> round(depth_contrast(t1, (2.0, 2.0, 2.0)), 2)
        0.36
    """
    from scipy import ndimage

    steps = [max(1, int(round(grid_mm / float(z)))) if float(z) < grid_mm else 1 for z in zooms]
    grid = np.asarray(data)[:: steps[0], :: steps[1], :: steps[2]]
    # a zero border: a brain cut by the field of view ends at the volume's edge
    brain = np.pad(ndimage.binary_fill_holes(grid != 0), 1)
    depth = ndimage.distance_transform_edt(brain, sampling=[float(z) * n for z, n in zip(zooms, steps)])[1:-1, 1:-1, 1:-1]
    inside = grid != 0
    shell = grid[inside & (depth <= shell_mm)]
    core = grid[inside & (depth >= core_mm)]
    if shell.size < min_voxels or core.size < min_voxels:
        return None
    shell_median, core_median = float(np.median(shell)), float(np.median(core))
    if shell_median <= 0 or core_median <= 0:
        return None
    return math.log(core_median / shell_median)


def contrast_modality(contrast: TissueContrast | None, margin: float = CONTRAST_MARGIN) -> str | None:
    """``"t1"`` or ``"t2"`` when the contrast clearly has that signature, else None (undetermined).

    The depth signature decides when it was measured (``|depth_log_ratio| >= DEPTH_MARGIN``); otherwise
    the class shares do (``|log_ratio| >= margin``).

    Args:
        contrast: from ``tissue_contrast`` (with ``depth_log_ratio`` from :func:`depth_contrast`).
        margin: smallest ``|log_ratio|`` that counts as clear.

    Examples:
        >>> contrast_modality(TissueContrast((1, 2, 3), (0.5, 0.37, 0.13), -1.35))
        't2'
        >>> contrast_modality(TissueContrast((1, 2, 3), (0.4, 0.4, 0.2), -0.7, depth_log_ratio=0.3))
        't1'
    """
    if contrast is None:
        return None
    value, cutoff = (
        (contrast.depth_log_ratio, DEPTH_MARGIN) if contrast.depth_log_ratio is not None else (contrast.log_ratio, margin)
    )
    if abs(value) < cutoff:
        return None
    return "t1" if value > 0 else "t2"


def describe_contrast(contrast: TissueContrast) -> str:
    """E.g. ``"deep brain 24% darker than its outer 4 mm"`` or ``"brightest tissue class 13% of the brain, darkest 51%"``."""
    if contrast.depth_log_ratio is not None:
        change = math.exp(contrast.depth_log_ratio) - 1.0
        side = "brighter" if change > 0 else "darker"
        return f"deep brain {abs(change):.0%} {side} than its outer {DEPTH_SHELL_MM:g} mm"
    return f"brightest tissue class {contrast.shares[2]:.0%} of the brain, darkest {contrast.shares[0]:.0%}"


def lesion_share_problem(lesion_voxels: int, brain_voxels: int, max_share: float = MAX_LESION_SHARE) -> str | None:
    """A problem when a lesion mask (on the T1 grid) covers more of the brain than a lesion load can.

    Args:
        lesion_voxels: voxels labelled 1 in the mask.
        brain_voxels: non-zero voxels of the T1 (the brain of a skull-stripped scan).
        max_share: largest plausible share.

    Examples:
        >>> lesion_share_problem(10, 1000) is None
        True
    """
    if lesion_voxels <= 0:
        return None
    share = lesion_voxels / brain_voxels if brain_voxels > 0 else math.inf
    if share <= max_share:
        return None
    return (
        f"lesion mask covers {lesion_voxels} voxels, {share:.0%} of the T1's brain ({brain_voxels} non-zero voxels); "
        f"more than {max_share:.0%} is not a lesion load (a mask of the whole brain or volume?)"
    )


def skull_strip_warning(foreground_ml: float, max_ml: float = MAX_BRAIN_ML) -> str | None:
    """A warning when the non-zero volume is that of a head rather than a skull-stripped brain.

    Args:
        foreground_ml: non-zero voxels times the voxel volume, in mL.
        max_ml: largest plausible skull-stripped brain.

    Examples:
        >>> skull_strip_warning(1500.0) is None
        True
    """
    if foreground_ml <= max_ml:
        return None
    return (
        f"not skull-stripped? {foreground_ml / 1000:.1f} L of non-zero voxels, a brain is under {max_ml / 1000:g} L; "
        "the bundles expect skull-stripped input (zero outside the brain); the contrast check was skipped"
    )


def voxel_hash(data: np.ndarray, mask: np.ndarray | None = None, values: np.ndarray | None = None) -> str:
    """A digest of the voxel values, shape and dtype (two files with the same digest hold the same image).

    The digest is taken over the non-zero mask (bit-packed) and the non-zero values, which together are the
    volume, so it costs a fraction of hashing every byte of a mostly-zero skull-stripped scan.

    Args:
        data: the volume.
        mask, values: ``split_foreground(data)`` when already computed (saves a pass).

    Examples:
        >>> voxel_hash(np.zeros(3)) == voxel_hash(np.zeros(3)), voxel_hash(np.zeros(3)) == voxel_hash(np.ones(3))
        (True, False)
    """
    if mask is None or values is None:
        mask, values = split_foreground(data)
    digest = hashlib.sha1(usedforsecurity=False)  # a content digest, not security
    digest.update(f"{data.dtype.str}{tuple(data.shape)}".encode())
    digest.update(np.packbits(mask.reshape(-1)))
    digest.update(np.ascontiguousarray(values).reshape(-1).view(np.uint8))
    return digest.hexdigest()
