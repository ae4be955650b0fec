"""Lesion segmentation: lesion-wise metrics, evaluation report, mask/table/QC writers, flip TTA.

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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events
from monai.inferers import Inferer
from scipy import ndimage

from monai_ms.data.fields import DEFAULT_MODALITIES, IMAGE_KEYS
from monai_ms.engines.bootstrap import DEFAULT_RESAMPLES
from monai_ms.engines.evaluation_report import finish_report, write_sidecar
from monai_ms.io import save_figure, save_nifti, write_csv, write_json

__all__ = [
    "HD95_STATUSES",
    "MIN_LESION_MM3",
    "DETECTION_OVERLAP",
    "CONNECTIVITY",
    "label_lesions",
    "lesion_detection",
    "segmentation_metrics",
    "summarize_segmentation",
    "lesion_table",
    "save_qc_figure",
    "FlipTTAInferer",
    "lesion_postprocessing",
    "SegmentationReportHandler",
    "LesionMaskWriter",
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


def _binary(mask: Any, name: str) -> np.ndarray:
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
    binary = _binary(mask, "mask")
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
    pred_b, truth_b = _binary(pred, "prediction"), _binary(truth, "reference mask")
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

    pred_b, truth_b = _binary(pred, "prediction"), _binary(truth, "reference mask")
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


def save_qc_figure(
    images: Mapping[str, Any],
    mask: Any,
    path: str | Path,
    title: str = "",
    n_slices: int = 4,
) -> Path:
    """A QC picture: axial slices of each image with the mask outlined in red.

    The slices are those with the most mask voxels (spread over the lesion-bearing range), or evenly
    spaced through the brain when the mask is empty. Arrays are shown in the orientation given: pass RAS
    arrays (as the bundle's transforms make them) for axial slices with anterior up and the subject's
    left on the left.

    Args:
        images: name -> 3D array ``(X, Y, Z)`` (e.g. ``{"T1": t1, "T2": t2}``), all on the mask's grid.
        mask: binary mask ``(X, Y, Z)``.
        path: PNG to write (atomically).
        title: figure title (the session).
        n_slices: slices per image.

    Returns:
        the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mask_b = _binary(mask, "mask")
    arrays = {name: np.asarray(_to_numpy(image)).reshape(mask_b.shape) for name, image in images.items()}
    per_slice = mask_b.sum(axis=(0, 1))
    if per_slice.any():
        lesion_slices = np.flatnonzero(per_slice)
        # the busiest slice of each of n_slices equal chunks of the lesion-bearing range
        chunks = np.array_split(lesion_slices, min(n_slices, lesion_slices.size))
        slices = [int(chunk[np.argmax(per_slice[chunk])]) for chunk in chunks]
    else:
        first = next(iter(arrays.values()))
        occupied = np.flatnonzero(np.abs(first).sum(axis=(0, 1)) > 0)
        lo, hi = (int(occupied[0]), int(occupied[-1])) if occupied.size else (0, mask_b.shape[2] - 1)
        slices = np.linspace(lo + (hi - lo) * 0.25, lo + (hi - lo) * 0.75, n_slices).round().astype(int).tolist()
    fig, axes = plt.subplots(len(arrays), len(slices), figsize=(2.6 * len(slices), 2.8 * len(arrays)), squeeze=False)
    for row, (name, array) in enumerate(arrays.items()):
        brain = array[array != 0]
        low, high = np.percentile(brain, (1, 99)) if brain.size else (0.0, 1.0)
        for col, k in enumerate(slices):
            ax = axes[row, col]
            ax.imshow(array[:, :, k].T, cmap="gray", origin="lower", vmin=low, vmax=high, interpolation="nearest")
            if mask_b[:, :, k].any():
                ax.contour(mask_b[:, :, k].T.astype(np.float32), levels=[0.5], colors="red", linewidths=0.8)
            ax.set_axis_off()
            ax.set_title(f"{name} z={k}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    written = save_figure(fig, path)
    plt.close(fig)
    return written


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    return np.asarray(value)


class FlipTTAInferer(Inferer):
    """Flip test-time augmentation around another inferer: the mean of the logits over flipped copies.

    The wrapped inferer (e.g. ``SlidingWindowInferer``) runs on the input and on each flipped copy; each
    output is flipped back and the logits are averaged (one sigmoid is applied afterwards, in
    post-processing). With no flips it is the wrapped inferer.

    Args:
        inferer: the inferer to wrap.
        flip_axes: one entry per extra pass, each a sequence of spatial axes to flip (0 = the first spatial
            axis, left-right in RAS); ``[[0], [1], [2]]`` runs four passes.

    Examples:
        >>> from monai.inferers import SimpleInferer
        >>> tta = FlipTTAInferer(SimpleInferer(), flip_axes=[[0]])
        >>> tta(torch.arange(8.0).reshape(1, 1, 2, 2, 2), lambda x: x).shape  # identity network
        torch.Size([1, 1, 2, 2, 2])
    """

    def __init__(self, inferer: Inferer, flip_axes: Sequence[Sequence[int]] = ((0,),)) -> None:
        super().__init__()
        self.inferer = inferer
        self.flip_axes = [tuple(int(a) for a in axes) for axes in flip_axes]
        for axes in self.flip_axes:
            if not axes or any(a < 0 for a in axes):
                raise ValueError(f"each flip_axes entry must list spatial axes >= 0, got {list(flip_axes)!r}")

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        output = self.inferer(inputs, network, *args, **kwargs)
        for axes in self.flip_axes:
            dims = [a + 2 for a in axes]  # (B, C, spatial...)
            flipped = self.inferer(torch.flip(inputs, dims), network, *args, **kwargs)
            output = output + torch.flip(flipped, dims)
        return output / (1 + len(self.flip_axes))


def lesion_postprocessing(
    preprocessing: Any,
    threshold: float = 0.5,
    pred_key: str = "pred",
    orig_key: str = "t1",
    prob_key: str | None = None,
    grid_key: str | None = None,
) -> Any:
    """Post-processing of a lesion segmenter's logits back to each scan's original T1 grid.

    sigmoid -> (optional copy on the network grid, thresholded, for QC) -> ``Invertd`` of the spatial
    preprocessing (probabilities interpolated linearly, so the mask is thresholded after the mapping, at
    the T1's own resolution) -> (optional copy of the probabilities) -> threshold.

    Args:
        preprocessing: the (invertible) transform chain that produced the network input.
        threshold: probability above which a voxel is lesion.
        pred_key: output key of the logits; becomes the binary mask on the original T1 grid.
        orig_key: batch key whose applied transforms are inverted (the T1).
        prob_key: also keep the probabilities on the original grid under this key.
        grid_key: also keep the binary mask on the network grid under this key.

    Returns:
        a ``monai.transforms.Compose`` for an evaluator's ``postprocessing`` (``decollate=True``).

    Examples:
        In a config: ``"postprocessing": "$monai_ms.engines.lesion_postprocessing(@infer#preprocessing,
        @threshold, prob_key='prob', grid_key='pred_grid')"``.
    """
    from monai.transforms import Activationsd, AsDiscreted, Compose, CopyItemsd, Invertd

    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be a probability in (0, 1), got {threshold!r}")
    chain: list[Any] = [Activationsd(keys=pred_key, sigmoid=True)]
    if grid_key is not None:
        chain += [CopyItemsd(keys=pred_key, names=grid_key), AsDiscreted(keys=grid_key, threshold=threshold)]
    chain.append(Invertd(keys=pred_key, transform=preprocessing, orig_keys=orig_key, nearest_interp=False))
    if prob_key is not None:
        chain.append(CopyItemsd(keys=pred_key, names=prob_key))
    chain.append(AsDiscreted(keys=pred_key, threshold=threshold))
    return Compose(chain)


def _items(engine: Engine) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    batch, output = engine.state.batch, engine.state.output
    if not isinstance(batch, list) or not isinstance(output, list):
        raise TypeError("this handler needs a decollated evaluator (decollate=True) with per-scan post-processing")
    return list(zip(batch, output))


def _source_file(value: Any, key: str, session: str) -> str:
    meta = getattr(value, "meta", None)
    name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    if not name:
        raise ValueError(f"session {session}: cannot tell which file {key!r} was read from (no filename in its metadata)")
    return str(name)


class SegmentationReportHandler:
    """Per-scan and mean segmentation metrics in each scan's native T1 space, written after a run.

    Attach to a decollated ``SupervisedEvaluator`` whose post-processing maps the binary prediction back
    onto the original T1 grid (``Activationsd`` -> ``Invertd`` -> ``AsDiscreted``). For each scan the
    reference mask is read from its file (the one the batch's ``label_key`` was loaded from), so the
    metrics compare the prediction with the user's own mask, voxel for voxel, at the T1's voxel size.
    After the run it writes ``metrics.json`` (summary, rules), ``per_scan.csv`` (+
    ``per_scan.provenance.json``) and ``volumes.png`` (predicted vs reference lesion volume).

    ``metrics.json`` also holds the trivial ``empty_mask`` baseline (an empty prediction on every scan:
    mean Dice 0 on scans with lesions), a 95% subject-bootstrap interval (``ci95``) of every float
    summary metric of the model and the baseline, ``beats_baselines`` (mean Dice against the baseline's)
    and the run's ``provenance`` (see :func:`monai_ms.engines.evaluation_report.finish_report`).

    Args:
        output_dir: folder of the files.
        pred_key: output key of the binary prediction on the original T1 grid, shape ``(1, *t1_shape)``.
        label_key: batch key of the lesion mask (its source file is read).
        reference_key: batch key of the T1 (its source file gives the voxel size).
        id_key: batch key of the session id.
        min_volume_mm3, overlap, connectivity: lesion-wise rules (module docstring).
        extra: recorded in ``metrics.json`` (e.g. the threshold and spacing used).
        entries: manifest entries of the evaluated split (their ``subject`` groups the bootstrap), or
            ``None``: the batch's ``subject`` key, else each session is its own subject.
        provenance: the run's provenance (``monai_ms.bundle.evaluation_provenance``), or ``None``.
        n_resamples: bootstrap resamples of the intervals (0: none).
        seed: bootstrap seed.

    Raises:
        ValueError: a prediction whose shape differs from the reference mask file's.

    Examples:
        In ``evaluate.json`` (``evaluate#handlers``)::

            {"_target_": "monai_ms.engines.SegmentationReportHandler", "output_dir": "@output_dir"}
    """

    def __init__(
        self,
        output_dir: str | Path,
        pred_key: str = "pred",
        label_key: str = "lesion",
        reference_key: str = "t1",
        id_key: str = "session",
        min_volume_mm3: float = MIN_LESION_MM3,
        overlap: float = DETECTION_OVERLAP,
        connectivity: int = CONNECTIVITY,
        extra: Mapping[str, Any] | None = None,
        entries: Sequence[Mapping[str, Any]] | None = None,
        provenance: Mapping[str, Any] | None = None,
        n_resamples: int = DEFAULT_RESAMPLES,
        seed: int = 0,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.pred_key, self.label_key, self.reference_key, self.id_key = pred_key, label_key, reference_key, id_key
        self.rules = {"min_volume_mm3": float(min_volume_mm3), "overlap": float(overlap), "connectivity": int(connectivity)}
        self.extra = dict(extra or {})
        self.subjects = {str(e["session"]): str(e.get("subject") or e["session"]) for e in entries or ()}
        self.provenance = provenance
        self.n_resamples, self.seed = int(n_resamples), int(seed)
        self.rows: list[dict[str, Any]] = []
        self.baseline_rows: list[dict[str, Any]] = []

    def _clear(self, engine: Engine | None = None) -> None:
        self.rows.clear()
        self.baseline_rows.clear()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._clear)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        import nibabel as nib

        for batch, output in _items(engine):
            session = str(batch[self.id_key])
            mask_file = _source_file(batch[self.label_key], self.label_key, session)
            t1_file = _source_file(batch[self.reference_key], self.reference_key, session)
            truth = np.asanyarray(nib.load(mask_file).dataobj)
            pred = _binary(_to_numpy(output[self.pred_key]), "prediction")
            if pred.shape != truth.shape[:3]:
                raise ValueError(
                    f"session {session}: prediction mapped back to the T1 grid has shape {pred.shape}, "
                    f"but the lesion mask {mask_file} has shape {truth.shape}; the mask must be on the T1 grid"
                )
            spacing = nib.load(t1_file).header.get_zooms()[:3]
            subject = self.subjects.get(session) or str(batch.get("subject") or session)
            truth = truth.reshape(pred.shape)
            row = {"session": session, "subject": subject, **segmentation_metrics(pred, truth, spacing, **self.rules)}
            self.rows.append(row)
            empty = np.zeros_like(pred)
            self.baseline_rows.append({"session": session, **segmentation_metrics(empty, truth, spacing, **self.rules)})

    def write(self, engine: Engine | None = None) -> dict[str, Any]:
        frame = pd.DataFrame(self.rows)
        summary = summarize_segmentation(self.rows)
        baselines = {"empty_mask": summarize_segmentation(self.baseline_rows)}
        report: dict[str, Any] = {"space": "native T1 grid of each scan", **self.extra, "rules": self.rules,
                                  "summary": summary, "baselines": baselines}
        rows, empty = self.rows, self.baseline_rows

        def compute(index: np.ndarray) -> dict[str, dict[str, Any]]:
            return {
                "model": summarize_segmentation([rows[i] for i in index]),
                "empty_mask": summarize_segmentation([empty[i] for i in index]),
            }

        subjects = [row["subject"] for row in rows]
        finish_report(report, compute, subjects, "mean_dice", False, self.provenance, self.n_resamples, self.seed, model_key="summary")
        write_json(report, self.output_dir / "metrics.json")
        write_csv(frame, self.output_dir / "per_scan.csv")
        write_sidecar(self.output_dir / "per_scan.csv", self.provenance, frame.columns, len(frame))
        self._plot(frame, summary)
        interval = summary.get("ci95", {}).get("mean_dice")
        ci = f" (95% CI {interval[0]:.3f}-{interval[1]:.3f})" if interval else ""
        logger.info(
            f"evaluated {summary['n_scans']} scans: mean Dice {summary['mean_dice']:.3f}{ci}, lesion TPR "
            f"{summary['lesion_tpr']:.3f}, FDR {summary['lesion_fdr']:.3f}, F1 {summary['lesion_f1']:.3f}; "
            f"HD95 undefined on {summary['n_scans'] - summary['n_scans_hd95_defined']} scans; written to {self.output_dir}"
        )
        return report

    def _plot(self, frame: pd.DataFrame, summary: Mapping[str, Any]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        high = float(max(frame["volume_true_ml"].max(), frame["volume_pred_ml"].max(), 1e-3))
        ax.plot([0, high], [0, high], color="grey", linestyle="--", linewidth=1, label="identity")
        ax.scatter(frame["volume_true_ml"], frame["volume_pred_ml"], s=18, alpha=0.8, label="scans")
        ax.set(
            xlabel="reference lesion volume (mL)",
            ylabel="predicted lesion volume (mL)",
            title=f"mean Dice {summary['mean_dice']:.2f}, lesion F1 {summary['lesion_f1']:.2f}, n {summary['n_scans']}",
        )
        ax.legend(loc="upper left")
        save_figure(fig, self.output_dir / "volumes.png")
        plt.close(fig)


def input_files(item: Mapping[str, Any], keys: Sequence[str], session: str) -> set[Path]:
    """Resolved paths of a scan's input files (manifest paths or the source files of loaded images)."""
    files = set()
    for key in keys:
        value = item.get(key)
        if isinstance(value, (str, Path)):  # a manifest path that was not loaded
            files.add(Path(value).resolve())
        elif getattr(value, "meta", None) is not None:
            files.add(Path(_source_file(value, key, session)).resolve())
    return files


def output_path(output_dir: Path, name: str, inputs: set[Path], session: str) -> Path:
    """``output_dir / name``, refused when it is one of the scan's input files (never write over inputs)."""
    path = Path(output_dir) / name
    if path.resolve() in inputs:
        raise ValueError(f"session {session}: refusing to write {path}: it is one of the scan's input files")
    return path


class LesionMaskWriter:
    """Write each scan's lesion mask (and probability map) on its original T1 grid, lesion tables and QC PNGs.

    Attach to a decollated ``SupervisedEvaluator`` whose post-processing maps the prediction back onto the
    original T1 grid (``Invertd``). Per scan, under ``output_dir``:

    - ``<session>_lesion_mask.nii.gz``: uint8 0/1, with the input T1's shape, affine and orientation;
    - ``<session>_lesion_prob.nii.gz``: float32 probabilities (when ``prob_key`` is given);
    - ``qc/<session>_qc.png``: T1/T2 axial slices with the mask outlined (network grid, RAS).

    After the run: ``lesions.csv`` (one row per scan: lesion count, total volume in mL, files) and
    ``lesion_table.csv`` (one row per lesion: volume in mL and centroid in world mm, see
    :func:`lesion_table`). No file is ever written over an input image. Bound to a
    :class:`monai_ms.engines.BatchInference` (its ``writers``), each scan instead leaves a completion record
    and both tables are assembled from the records of the whole split by ``batch.finish()``.

    Args:
        output_dir: folder of all outputs.
        mask_key: output key of the binary mask on the original T1 grid, ``(1, *t1_shape)``.
        prob_key: output key of the probability map on that grid, or ``None`` (no probability file).
        reference_key: batch key of the T1 (its source file gives the grid and header).
        id_key: batch key of the session id (file names).
        qc_keys: batch keys of the images shown in the QC picture (network grid), or empty for none.
        qc_mask_key: output key of the mask or probability on the network grid (for the QC picture).
        min_volume_mm3, connectivity: lesion rules for counting (the mask file keeps every voxel).
        model_version: recorded in ``lesions.csv``.
        input_keys: batch keys of the scan's input files (loaded images or manifest paths), which are
            never written over.
        location: give every lesion of ``lesion_table.csv`` its McDonald location class and its distances
            to the ventricles and the cortex, from the CerebrA atlas registered affinely to the scan's T1
            (:func:`monai_ms.lesions.location.atlas_on_scan`; about 10-20 s per scan on 2 CPU cores).
        provenance: the run's provenance (``monai_ms.bundle.evaluation_provenance`` of the inferred split, the
            manifest and the checkpoint), written beside both tables as ``<table>.provenance.json``
            (:func:`monai_ms.engines.evaluation_report.write_sidecar`); ``None`` writes no sidecar.

    Raises:
        ValueError: an output path that is one of the scan's input files, or a mask whose shape differs
            from the input T1's.

    Examples:
        In ``inference.json``, after ``CheckpointLoader`` in ``infer#handlers``::

            {"_target_": "monai_ms.engines.LesionMaskWriter", "output_dir": "@inference_dir",
             "model_version": "$@_meta_#version"}
    """

    def __init__(
        self,
        output_dir: str | Path,
        mask_key: str = "pred",
        prob_key: str | None = "prob",
        reference_key: str = "t1",
        id_key: str = "session",
        qc_keys: Sequence[str] = DEFAULT_MODALITIES,
        qc_mask_key: str | None = "pred_grid",
        min_volume_mm3: float = MIN_LESION_MM3,
        connectivity: int = CONNECTIVITY,
        model_version: str = "",
        input_keys: Sequence[str] = IMAGE_KEYS,
        location: bool = False,
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.location = bool(location)
        self.provenance = provenance
        self.mask_key, self.prob_key, self.reference_key, self.id_key = mask_key, prob_key, reference_key, id_key
        self.qc_keys, self.qc_mask_key = list(qc_keys), qc_mask_key
        self.min_volume_mm3, self.connectivity = float(min_volume_mm3), int(connectivity)
        self.model_version = model_version
        self.input_keys = list(input_keys)
        self.scans: list[dict[str, Any]] = []
        self.lesions: list[pd.DataFrame] = []
        self.batch: Any = None

    def bind(self, batch: Any) -> None:
        """Write per-session completion records through a ``monai_ms.engines.BatchInference`` instead of
        keeping the rows in memory; the tables are then assembled from the records by ``batch.finish()``,
        and a scan this writer refuses (a ``ValueError``) becomes a failed session instead of stopping the run."""
        self.batch = batch
        batch.register_table_writer(self.write_tables)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        if self.batch is None:
            engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.scans, self.lesions = [], []

    def collect(self, engine: Engine) -> None:
        if engine.state.batch is None:  # every scan of this iteration failed before the network
            return
        for batch, output in _items(engine):
            if self.batch is None:
                self.write_scan(batch, output)
                continue
            session = str(batch[self.id_key])
            try:
                row, table = self._write_files(batch, output)
            except ValueError as error:  # this scan's own problem (e.g. an output path that is an input)
                self.batch.fail(session, str(error))
                continue
            files = [row[key] for key in ("mask_file", "prob_file", "qc_file") if key in row]
            self.batch.complete(session, row, files=files, tables={"lesions": table.to_dict("records")})

    def write_scan(self, batch: Mapping[str, Any], output: Mapping[str, Any]) -> dict[str, Any]:
        """Write one scan's files and record its rows; ``batch``/``output`` are one decollated item each."""
        row, table = self._write_files(batch, output)
        self.scans.append(row)
        self.lesions.append(table)
        return row

    def _write_files(self, batch: Mapping[str, Any], output: Mapping[str, Any]) -> tuple[dict[str, Any], pd.DataFrame]:
        """Write one scan's mask, probability and QC files; return its ``lesions.csv`` row and lesion table."""
        import nibabel as nib

        session = str(batch[self.id_key])
        t1_file = _source_file(batch[self.reference_key], self.reference_key, session)
        inputs = input_files(batch, self.input_keys, session) | {Path(t1_file).resolve()}
        t1 = nib.load(t1_file)
        mask = _binary(_to_numpy(output[self.mask_key]), "mask")
        if mask.shape != t1.shape[:3]:
            raise ValueError(f"session {session}: mask of shape {mask.shape} does not match the input T1 {t1_file} of shape {t1.shape}")
        mask_path = output_path(self.output_dir, f"{session}_lesion_mask.nii.gz", inputs, session)
        save_nifti(_like(t1, mask.astype(np.uint8), np.uint8), mask_path)
        row: dict[str, Any] = {"session": session}
        maps = None
        if self.location and mask.any():
            from monai_ms.lesions.location import atlas_on_scan

            maps, _ = atlas_on_scan(t1)
        table = lesion_table(mask, t1.affine, session, self.min_volume_mm3, self.connectivity, location=maps)
        row["lesion_count"] = len(table)
        row["total_volume_ml"] = float(mask.sum()) * float(np.prod(t1.header.get_zooms()[:3])) / 1000.0
        row["mask_file"] = str(mask_path)
        if self.prob_key is not None:
            prob = _to_numpy(output[self.prob_key]).reshape(mask.shape).astype(np.float32)
            prob_path = output_path(self.output_dir, f"{session}_lesion_prob.nii.gz", inputs, session)
            save_nifti(_like(t1, np.clip(prob, 0.0, 1.0), np.float32), prob_path)
            row["prob_file"] = str(prob_path)
        if self.qc_keys and self.qc_mask_key is not None:
            qc_path = output_path(self.output_dir, f"qc/{session}_qc.png", inputs, session)
            images = {key.upper(): _to_numpy(batch[key])[0] for key in self.qc_keys if key in batch}
            qc_mask = _to_numpy(output[self.qc_mask_key])[0] > 0.5
            save_qc_figure(images, qc_mask, qc_path, title=f"{session}: {len(table)} lesions, {row['total_volume_ml']:.2f} mL")
            row["qc_file"] = str(qc_path)
        row["t1_file"] = t1_file
        row["model_version"] = self.model_version
        logger.info(f"{session}: {len(table)} lesions, {row['total_volume_ml']:.2f} mL -> {mask_path}")
        return row, table

    def write(self, engine: Engine | None = None) -> pd.DataFrame:
        """Write ``lesions.csv`` and ``lesion_table.csv`` of the scans written in this run."""
        tables = [t for t in self.lesions if len(t)]
        return self._write_tables(pd.DataFrame(self.scans), pd.concat(tables, ignore_index=True) if tables else None)

    def write_tables(self) -> Path:
        """Bound to a ``BatchInference``: write both tables from the records of every session of the split
        (failed sessions: a ``lesions.csv`` row with their ``error``); returns the path of ``lesions.csv``."""
        lesions = self.batch.part("lesions")
        self._write_tables(self.batch.table(), pd.DataFrame(lesions) if lesions else None)
        return self.output_dir / "lesions.csv"

    def _write_tables(self, scans: pd.DataFrame, lesions: pd.DataFrame | None) -> pd.DataFrame:
        columns = ["session", "lesion_id", "voxels", "volume_ml", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]
        if self.location:
            from monai_ms.lesions.location import LOCATION_COLUMNS

            columns += list(LOCATION_COLUMNS)
        table = lesions[columns] if lesions is not None else pd.DataFrame(columns=columns)
        write_csv(scans, self.output_dir / "lesions.csv")
        write_csv(table, self.output_dir / "lesion_table.csv")
        if self.provenance is not None:
            write_sidecar(self.output_dir / "lesions.csv", self.provenance, scans.columns, len(scans))
            write_sidecar(self.output_dir / "lesion_table.csv", self.provenance, table.columns, len(table))
        logger.info(f"wrote masks and lesion tables of {len(scans)} scans to {self.output_dir}")
        return scans


def _like(reference: Any, data: np.ndarray, dtype: type) -> Any:
    """A NIfTI image of ``data`` with the reference's affine, orientation codes and units."""
    import nibabel as nib

    header = reference.header.copy()
    header.set_data_dtype(dtype)
    image = nib.Nifti1Image(data.astype(dtype), reference.affine, header)
    image.header.set_slope_inter(1.0, 0.0)  # the T1's intensity scaling must not rescale a mask
    image.set_qform(reference.get_qform(), code=int(reference.header["qform_code"]))
    image.set_sform(reference.get_sform(), code=int(reference.header["sform_code"]))
    return image
