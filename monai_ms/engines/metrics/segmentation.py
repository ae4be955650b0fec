"""Lesion segmentation metrics: pure functions on masks (no ignite), used by evaluation and the lesion tables.

Lesion-wise rules (MSSEG-style, Commowick et al. 2018), used by evaluation and by the lesion tables:

- a *lesion* is a 3D connected component of a binary mask, with ``connectivity`` 3 (26-neighbourhood:
  voxels touching by a face, an edge or a corner belong to one lesion; two touching lesions therefore
  count as one);
- components smaller than ``min_volume_mm3`` (default 3 mm3) are ignored: they are removed from both the
  reference and the predicted mask before lesions are counted (voxel metrics keep every voxel);
- a reference lesion is *detected* when at least ``overlap`` (default 10%) of its voxels are predicted;
- a predicted lesion is a *false positive* when less than ``overlap`` of its voxels are reference lesion;
- lesion TPR = detected / reference lesions; lesion FDR (false discovery rate) = false positives /
  predicted lesions = 1 - PPV (the share of predicted lesions that are false; it is *not* a false
  positive rate, which would need a count of true negatives that lesion detection does not have; until
  0.2.x this key was called ``lesion_fpr``); lesion F1 = 2 TPR PPV / (TPR + PPV).

Voxel metrics: Dice, HD95 in mm (``monai.metrics.compute_hausdorff_distance`` with the voxel spacing)
and the absolute volume difference in mL. Dice is undefined (NaN) for a scan without reference lesions,
as in ``monai.metrics.DiceMetric(ignore_empty=True)``; such scans still count in the lesion-wise false
positives.

HD95 is undefined when either mask is empty. Every scan says why (``hd95_status``: ``defined``,
``missed`` = reference lesions but an empty prediction, ``false_alarm`` = a prediction on a scan without
reference lesions, ``both_empty``), and the summary counts each case. Two means are reported:
``mean_hd95_mm`` over the scans where HD95 is defined only (a fully missed scan does not enter it), and
``mean_hd95_mm_penalised`` over every scan with a lesion in either mask, a missed or false-alarm scan
counted as the diagonal of its field of view (``fov_diagonal_mm``, the largest distance the grid holds);
``both_empty`` scans (nothing to find, nothing found) enter neither.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

__all__ = [
    "binary_mask",
    "label_lesions",
    "lesion_detection",
    "segmentation_metrics",
    "summarize_segmentation",
    "lesion_table",
]


logger = logging.getLogger(__name__)

MIN_LESION_MM3 = 3.0
DETECTION_OVERLAP = 0.1
CONNECTIVITY = 3
HD95_STATUSES = ("defined", "missed", "false_alarm", "both_empty")


def _spacing(spacing: Sequence[float] | float) -> np.ndarray:
    values = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing must be three positive voxel sizes in mm, got {spacing!r}")
    return values


def binary_mask(mask: Any, name: str) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim == 4 and mask.shape[0] == 1:  # channel-first (1, D, H, W)
        mask = mask[0]
    if mask.ndim != 3:
        raise ValueError(f"{name} must be a 3D mask (or channel-first with one channel), got shape {mask.shape}")
    return mask > 0.5 if mask.dtype.kind == "f" else mask > 0


def _union_box(*masks: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    # lesions fill a tiny part of a head volume: labelling and distances inside the box of all masks
    # (plus a margin of background) give the same answers in a fraction of the time
    union = np.logical_or.reduce(masks) if len(masks) > 1 else masks[0]
    if not union.any():
        return tuple(slice(0, 0) for _ in union.shape)
    box = []
    for axis in range(union.ndim):
        present = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + margin + 1, union.shape[axis])))
    return tuple(box)


def label_lesions(
    mask: Any,
    spacing: Sequence[float] | float,
    min_volume_mm3: float = MIN_LESION_MM3,
    connectivity: int = CONNECTIVITY,
) -> tuple[np.ndarray, int]:
    """Label the lesions of a binary mask: 3D connected components of at least ``min_volume_mm3``.

    Args:
        mask: binary mask, shape ``(D, H, W)`` or ``(1, D, H, W)`` (non-zero = lesion; a float mask is
            thresholded at 0.5).
        spacing: voxel size in mm, one value or three.
        min_volume_mm3: smaller components are dropped (set to 0 in the returned labels).
        connectivity: neighbourhood as orthogonal hops, as in ``skimage``/MONAI: 1 = faces (6-connected),
            2 = +edges (18), 3 = +corners (26).

    Returns:
        ``(labels, count)``: int32 labels of shape ``(D, H, W)``, lesions numbered ``1..count`` in scan
        order, 0 elsewhere.

    Raises:
        ValueError: a mask that is not 3D, a bad spacing, or ``connectivity`` not in 1..3.

    Examples:
        >>> mask = np.zeros((8, 8, 8), bool); mask[1:3, 1:3, 1:3] = True; mask[6, 6, 6] = True
        >>> label_lesions(mask, spacing=1.0, min_volume_mm3=3.0)[1]  # the 1 mm3 voxel is ignored
        1
    """
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1, 2 or 3 (orthogonal hops), got {connectivity!r}")
    binary = binary_mask(mask, "mask")
    voxel_mm3 = float(np.prod(_spacing(spacing)))
    labels = np.zeros(binary.shape, dtype=np.int32)
    box = _union_box(binary)
    inner, count = ndimage.label(binary[box], structure=ndimage.generate_binary_structure(3, connectivity))
    if count == 0:
        return labels, 0
    volumes = np.bincount(inner.ravel(), minlength=count + 1) * voxel_mm3
    keep = volumes >= min_volume_mm3
    keep[0] = False
    lookup = np.zeros(count + 1, dtype=np.int32)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    labels[box] = lookup[inner]
    return labels, int(keep.sum())


def _lesion_f1(sensitivity: float, ppv: float, true_count: int, pred_count: int) -> float:
    if true_count == 0 and pred_count == 0:
        return math.nan  # nothing to find and nothing found: undefined, left out of means
    if true_count == 0 or pred_count == 0:
        return 0.0
    return 0.0 if sensitivity + ppv == 0 else 2.0 * sensitivity * ppv / (sensitivity + ppv)


def _overlap_hits(labels: np.ndarray, count: int, other: np.ndarray, overlap: float) -> np.ndarray:
    # per component: is at least `overlap` of it covered by the other mask (and at least one voxel)?
    size = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    covered = np.bincount(labels[other], minlength=count + 1)[1:]
    return (covered > 0) & (covered >= overlap * size)


def lesion_detection(
    pred: Any,
    truth: Any,
    spacing: Sequence[float] | float,
    min_volume_mm3: float = MIN_LESION_MM3,
    overlap: float = DETECTION_OVERLAP,
    connectivity: int = CONNECTIVITY,
) -> dict[str, float]:
    """Lesion-wise detection counts and rates of one scan (rules in the module docstring).

    Args:
        pred: predicted binary mask, shape ``(D, H, W)`` or ``(1, D, H, W)``.
        truth: reference binary mask of the same shape.
        spacing: voxel size in mm.
        min_volume_mm3: lesions smaller than this are ignored in both masks.
        overlap: share of a lesion's voxels that must be covered, in (0, 1].
        connectivity: 1, 2 or 3 (3 = 26-neighbourhood).

    Returns:
        ``true_lesions``, ``detected_lesions``, ``pred_lesions``, ``false_positive_lesions`` (counts) and
        ``lesion_tpr``, ``lesion_fdr`` (1 - PPV), ``lesion_f1`` (NaN where undefined: TPR without reference
        lesions, FDR without predicted lesions, F1 when the scan has neither).

    Raises:
        ValueError: masks of different shapes, or ``overlap`` outside (0, 1].

    Examples:
        >>> truth = np.zeros((20, 20, 20), bool); truth[2:5, 2:5, 2:5] = True; truth[10:13, 10:13, 10:13] = True
        >>> pred = np.zeros_like(truth); pred[2:5, 2:5, 2:5] = True; pred[16:19, 16:19, 16:19] = True
        >>> r = lesion_detection(pred, truth, spacing=1.0)
        >>> r["detected_lesions"], r["false_positive_lesions"], r["lesion_f1"]
        (1, 1, 0.5)
    """
    if not 0.0 < overlap <= 1.0:
        raise ValueError(f"overlap must be in (0, 1], got {overlap!r}")
    pred_b, truth_b = binary_mask(pred, "prediction"), binary_mask(truth, "reference mask")
    if pred_b.shape != truth_b.shape:
        raise ValueError(f"prediction and reference mask differ in shape: {pred_b.shape} vs {truth_b.shape}")
    box = _union_box(pred_b, truth_b)
    pred_b, truth_b = pred_b[box], truth_b[box]
    truth_labels, true_count = label_lesions(truth_b, spacing, min_volume_mm3, connectivity)
    pred_labels, pred_count = label_lesions(pred_b, spacing, min_volume_mm3, connectivity)
    detected = int(_overlap_hits(truth_labels, true_count, pred_labels > 0, overlap).sum())
    correct = int(_overlap_hits(pred_labels, pred_count, truth_labels > 0, overlap).sum())
    sensitivity = detected / true_count if true_count else math.nan
    ppv = correct / pred_count if pred_count else math.nan
    return {
        "true_lesions": true_count,
        "detected_lesions": detected,
        "pred_lesions": pred_count,
        "false_positive_lesions": pred_count - correct,
        "lesion_tpr": sensitivity,
        "lesion_fdr": 1.0 - ppv if pred_count else math.nan,
        "lesion_f1": _lesion_f1(sensitivity, ppv, true_count, pred_count),
    }


def segmentation_metrics(
    pred: Any,
    truth: Any,
    spacing: Sequence[float] | float,
    min_volume_mm3: float = MIN_LESION_MM3,
    overlap: float = DETECTION_OVERLAP,
    connectivity: int = CONNECTIVITY,
) -> dict[str, float]:
    """Voxel and lesion-wise metrics of one scan.

    Args:
        pred: predicted binary mask, shape ``(D, H, W)`` or ``(1, D, H, W)``.
        truth: reference binary mask of the same shape and grid.
        spacing: voxel size in mm (of that grid).
        min_volume_mm3, overlap, connectivity: lesion-wise rules, see :func:`lesion_detection`.

    Returns:
        ``dice`` (NaN without reference lesions), ``hd95_mm`` (NaN when either mask is empty),
        ``hd95_status`` (one of :data:`HD95_STATUSES`: why HD95 is or is not defined), ``fov_diagonal_mm``
        (diagonal of the grid), ``hd95_mm_penalised`` (``hd95_mm``, or the diagonal for a ``missed`` or
        ``false_alarm`` scan, NaN when both masks are empty), ``volume_true_ml``, ``volume_pred_ml``,
        ``abs_volume_difference_ml`` and the keys of :func:`lesion_detection`.

    Raises:
        ValueError: masks of different shapes.

    Examples:
        >>> truth = np.zeros((10, 10, 10), bool); truth[2:6, 2:6, 2:6] = True
        >>> segmentation_metrics(truth, truth, spacing=2.0)["dice"]
        1.0
    """
    from monai.metrics import compute_hausdorff_distance

    pred_b, truth_b = binary_mask(pred, "prediction"), binary_mask(truth, "reference mask")
    if pred_b.shape != truth_b.shape:
        raise ValueError(f"prediction and reference mask differ in shape: {pred_b.shape} vs {truth_b.shape}")
    spacing_mm = _spacing(spacing)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    n_pred, n_true = int(pred_b.sum()), int(truth_b.sum())
    both = int(np.logical_and(pred_b, truth_b).sum())
    hd95 = math.nan
    diagonal = float(np.linalg.norm(np.asarray(pred_b.shape, dtype=np.float64) * spacing_mm))
    status = "defined" if n_pred and n_true else "missed" if n_true else "false_alarm" if n_pred else "both_empty"
    if n_pred and n_true:
        box = _union_box(pred_b, truth_b)  # surfaces and distances are unchanged by cropping away background
        hd95 = float(
            compute_hausdorff_distance(
                torch.from_numpy(np.ascontiguousarray(pred_b[box]))[None, None],
                torch.from_numpy(np.ascontiguousarray(truth_b[box]))[None, None],
                include_background=True,
                percentile=95,
                spacing=spacing_mm.tolist(),
            ).item()
        )
    return {
        "dice": 2.0 * both / (n_pred + n_true) if n_true else math.nan,
        "hd95_mm": hd95,
        "hd95_status": status,
        "fov_diagonal_mm": diagonal,
        "hd95_mm_penalised": hd95 if status == "defined" else diagonal if status != "both_empty" else math.nan,
        "volume_true_ml": n_true * voxel_ml,
        "volume_pred_ml": n_pred * voxel_ml,
        "abs_volume_difference_ml": abs(n_pred - n_true) * voxel_ml,
        **lesion_detection(pred_b, truth_b, spacing_mm, min_volume_mm3, overlap, connectivity),
    }


def _nan_stat(values: Sequence[float], function: Callable[[np.ndarray], float]) -> float:
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    return float(function(array)) if array.size else math.nan


def summarize_segmentation(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Dataset-level summary of per-scan :func:`segmentation_metrics` rows.

    Voxel metrics are means (and the median Dice) over the scans where they are defined. HD95 also comes
    with the number of scans where it is undefined, by reason (``n_scans_hd95_<status>``), and
    ``mean_hd95_mm_penalised`` (missed and false-alarm scans counted as their field-of-view diagonal; see
    the module docstring). Lesion-wise rates are pooled over all scans (every lesion counts once,
    ``lesion_*``) and also averaged per scan (``mean_lesion_*``, scans where the rate is defined).

    Args:
        rows: one mapping per scan with the keys of :func:`segmentation_metrics`.

    Returns:
        a flat dict of floats and counts.

    Raises:
        ValueError: no rows.
    """
    if not rows:
        raise ValueError("no scans to summarise")
    # plain arrays per column (not a DataFrame): the bootstrap summarises a thousand resamples per report
    frame = {key: np.asarray([row[key] for row in rows]) for key in rows[0] if key not in ("session", "subject")}
    counts = {key: int(frame[key].sum()) for key in ("true_lesions", "detected_lesions", "pred_lesions", "false_positive_lesions")}
    tpr = counts["detected_lesions"] / counts["true_lesions"] if counts["true_lesions"] else math.nan
    ppv = 1.0 - counts["false_positive_lesions"] / counts["pred_lesions"] if counts["pred_lesions"] else math.nan
    status = frame["hd95_status"] if "hd95_status" in frame else np.full(len(rows), "defined")
    return {
        "n_scans": len(rows),
        "n_scans_with_lesions": int((frame["volume_true_ml"] > 0).sum()),
        "mean_dice": _nan_stat(frame["dice"], np.mean),
        "median_dice": _nan_stat(frame["dice"], np.median),
        "mean_hd95_mm": _nan_stat(frame["hd95_mm"], np.mean),
        **{f"n_scans_hd95_{name}": int((status == name).sum()) for name in HD95_STATUSES},
        "mean_hd95_mm_penalised": _nan_stat(frame["hd95_mm_penalised"], np.mean) if "hd95_mm_penalised" in frame else math.nan,
        "hd95_undefined": "mean_hd95_mm: scans where HD95 is defined only; mean_hd95_mm_penalised: missed and "
        "false-alarm scans counted as their field-of-view diagonal; both-empty scans in neither",
        "mean_abs_volume_difference_ml": _nan_stat(frame["abs_volume_difference_ml"], np.mean),
        **counts,
        "lesion_tpr": tpr,
        "lesion_fdr": 1.0 - ppv if counts["pred_lesions"] else math.nan,
        "lesion_f1": _lesion_f1(tpr, ppv, counts["true_lesions"], counts["pred_lesions"]),
        "mean_lesion_tpr": _nan_stat(frame["lesion_tpr"], np.mean),
        "mean_lesion_fdr": _nan_stat(frame["lesion_fdr"], np.mean),
        "mean_lesion_f1": _nan_stat(frame["lesion_f1"], np.mean),
    }


def lesion_table(
    mask: Any,
    affine: np.ndarray,
    session: str = "",
    min_volume_mm3: float = MIN_LESION_MM3,
    connectivity: int = CONNECTIVITY,
    location: Any = None,
) -> pd.DataFrame:
    """One row per lesion of a mask: volume and centroid in world coordinates (and location class).

    Args:
        mask: binary mask ``(D, H, W)`` on the grid of ``affine``.
        affine: 4x4 voxel-to-world matrix of that grid (the NIfTI affine).
        session: written in the ``session`` column.
        min_volume_mm3, connectivity: lesion rules, see :func:`label_lesions`.
        location: a :class:`monai_ms.lesions.location.AtlasMaps` on the mask's grid (e.g. from
            ``monai_ms.lesions.location.atlas_on_scan(t1)``): adds the columns ``location,
            ventricle_distance_mm, cortex_distance_mm, infratentorial_fraction`` (rules in
            :mod:`monai_ms.lesions.location`). None: no location columns.

    Returns:
        columns ``session, lesion_id, voxels, volume_ml, centroid_x_mm, centroid_y_mm, centroid_z_mm``
        (then the location columns); lesions numbered from the largest; centroids in the NIfTI world
        frame (RAS+, mm).

    Examples:
        >>> mask = np.zeros((10, 10, 10), bool); mask[0:2, 0:2, 0:2] = True
        >>> lesion_table(mask, np.diag([2.0, 2.0, 2.0, 1.0]))[["volume_ml", "centroid_x_mm"]].values.tolist()
        [[0.064, 1.0]]
    """
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    labels, count = label_lesions(mask, spacing, min_volume_mm3, connectivity)
    columns = ["session", "lesion_id", "voxels", "volume_ml", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]
    if location is not None:
        from monai_ms.lesions.location import LOCATION_COLUMNS

        columns += LOCATION_COLUMNS
    if count == 0:
        return pd.DataFrame(columns=columns)
    coordinates = np.nonzero(labels)
    ids = labels[coordinates]
    voxels = np.bincount(ids, minlength=count + 1)[1:]
    centres = np.stack([np.bincount(ids, weights=c, minlength=count + 1)[1:] for c in coordinates], axis=1) / voxels[:, None]
    world = centres @ affine[:3, :3].T + affine[:3, 3]
    frame = pd.DataFrame(
        {
            "session": session,
            "voxels": voxels,
            "volume_ml": voxels * float(np.prod(spacing)) / 1000.0,
            "centroid_x_mm": world[:, 0],
            "centroid_y_mm": world[:, 1],
            "centroid_z_mm": world[:, 2],
        }
    )
    if location is not None:
        frame = _with_location(frame, labels, count, location)
    frame = frame.sort_values("volume_ml", ascending=False, kind="stable").reset_index(drop=True)
    frame.insert(1, "lesion_id", np.arange(1, count + 1))
    return frame[columns]


def _with_location(frame: pd.DataFrame, labels: np.ndarray, count: int, maps: Any) -> pd.DataFrame:
    """``frame`` (rows in label order) with the location columns of :mod:`monai_ms.lesions.location`."""
    from monai_ms.lesions.location import LOCATION_COLUMNS, lesion_locations

    located = lesion_locations(labels, count, maps)
    return pd.concat([frame.reset_index(drop=True), located[LOCATION_COLUMNS].reset_index(drop=True)], axis=1)
