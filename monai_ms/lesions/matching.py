"""Lesion matching between two visits on one grid, and the change class of every lesion.

Pure functions on label arrays (3D connected components, as :func:`monai_ms.engines.metrics.segmentation.label_lesions`
makes them) of the baseline and of the follow-up *already resampled onto the baseline grid*.

Matching rule: baseline lesion ``b`` and follow-up lesion ``f`` are *linked* when they share at least one
voxel and at least ``overlap`` (default 10%, :data:`MATCH_OVERLAP`) of the voxels of the smaller of the
two. The links form groups (connected components of the bipartite link graph); each group is one row of the
change table, with one class:

========== ===================================================================================
``new``        a follow-up lesion linked to no baseline lesion
``resolved``   a baseline lesion linked to no follow-up lesion
``merged``     two or more baseline lesions linked to one follow-up lesion (or many to many)
``split``      one baseline lesion linked to two or more follow-up lesions
``enlarging``  one to one, ``V_f >= ENLARGING_RATIO * V_b`` (1.5: +50%) and ``V_f - V_b >= min_change_mm3``
``shrinking``  one to one, ``V_f <= V_b / ENLARGING_RATIO`` and ``V_b - V_f >= min_change_mm3``
``stable``     the other one-to-one groups
========== ===================================================================================

``min_change_mm3`` defaults to the volume of two voxels of the grid (a one-voxel change is within the
partial-volume noise of a mask). Merged and split groups also get the volume rule on their group totals in
``volume_change`` (``enlarging``/``stable``/``shrinking``), and ``new_or_enlarging`` is True for ``new``
lesions and for every group whose ``volume_change`` is ``enlarging``: the count trials report.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "CHANGE_CLASSES",
    "CHANGE_CODES",
    "MATCH_OVERLAP",
    "ENLARGING_RATIO",
    "CHANGE_COLUMNS",
    "link_lesions",
    "volume_change",
    "match_lesions",
    "change_map",
]

CHANGE_CLASSES = ("new", "enlarging", "stable", "shrinking", "resolved", "merged", "split")
CHANGE_CODES = {name: code for code, name in enumerate(CHANGE_CLASSES, start=1)}
"""Voxel values of the change label map (0 = no lesion)."""
MATCH_OVERLAP = 0.1
ENLARGING_RATIO = 1.5
CHANGE_COLUMNS = [
    "change_id",
    "change",
    "volume_change",
    "new_or_enlarging",
    "n_baseline",
    "n_followup",
    "baseline_labels",
    "followup_labels",
    "baseline_volume_ml",
    "followup_volume_ml",
    "volume_ratio",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
]


def _check_labels(baseline: np.ndarray, followup: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    baseline, followup = np.asarray(baseline), np.asarray(followup)
    if baseline.shape != followup.shape or baseline.ndim != 3:
        raise ValueError(
            f"baseline and follow-up labels must be 3D arrays on one grid, got shapes {baseline.shape} and {followup.shape}"
        )
    for name, labels in (("baseline", baseline), ("follow-up", followup)):
        if labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
            raise ValueError(f"{name} labels must be non-negative integers, got dtype {labels.dtype}")
    return baseline, followup


def link_lesions(
    baseline: np.ndarray, followup: np.ndarray, overlap: float = MATCH_OVERLAP
) -> list[tuple[list[int], list[int]]]:
    """Groups of linked lesions (module docstring: the rule).

    Args:
        baseline: int labels ``(D, H, W)``, lesions ``1..n`` (0 background).
        followup: int labels on the same grid.
        overlap: shared share of the smaller lesion's voxels needed for a link, in (0, 1].

    Returns:
        one ``(baseline_labels, followup_labels)`` pair of sorted lists per group (either may be empty),
        ordered by the smallest follow-up label, then by baseline label for resolved lesions.

    Raises:
        ValueError: grids differ, labels are not non-negative integers, or ``overlap`` is not in (0, 1].

    Examples:
        >>> b = np.zeros((6, 6, 6), int); f = np.zeros((6, 6, 6), int)
        >>> b[1:3, 1:3, 1:3] = 1; f[1:3, 1:3, 1:4] = 1; f[4, 4, 4] = 2
        >>> link_lesions(b, f)
        [([1], [1]), ([], [2])]
    """
    if not 0.0 < float(overlap) <= 1.0:
        raise ValueError(f"overlap must be in (0, 1], got {overlap!r}")
    baseline, followup = _check_labels(baseline, followup)
    nb, nf = int(baseline.max(initial=0)), int(followup.max(initial=0))
    size_b = np.bincount(baseline.ravel(), minlength=nb + 1)
    size_f = np.bincount(followup.ravel(), minlength=nf + 1)
    both = (baseline > 0) & (followup > 0)
    pairs, shared = np.unique(np.stack([baseline[both], followup[both]]), axis=1, return_counts=True)
    # union-find over baseline nodes 0..nb-1 and follow-up nodes nb..nb+nf-1
    parent = list(range(nb + nf))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for (b, f), count in zip(pairs.T, shared):
        if count >= overlap * min(size_b[b], size_f[f]):
            parent[root(int(b) - 1)] = root(nb + int(f) - 1)
    groups: dict[int, tuple[list[int], list[int]]] = {}
    for f in range(1, nf + 1):
        if size_f[f]:
            groups.setdefault(root(nb + f - 1), ([], []))[1].append(f)
    for b in range(1, nb + 1):
        if size_b[b]:
            groups.setdefault(root(b - 1), ([], []))[0].append(b)
    ordered = sorted(groups.values(), key=lambda g: (0, g[1][0]) if g[1] else (1, g[0][0]))
    return [(sorted(b), sorted(f)) for b, f in ordered]


def volume_change(
    baseline_mm3: float, followup_mm3: float, ratio: float = ENLARGING_RATIO, min_change_mm3: float = 0.0
) -> str:
    """``"enlarging"``, ``"shrinking"`` or ``"stable"`` by the volume rule (module docstring).

    Examples:
        >>> volume_change(100.0, 160.0), volume_change(100.0, 140.0), volume_change(90.0, 50.0)
        ('enlarging', 'stable', 'shrinking')
    """
    if followup_mm3 >= ratio * baseline_mm3 and followup_mm3 - baseline_mm3 >= min_change_mm3:
        return "enlarging"
    if followup_mm3 * ratio <= baseline_mm3 and baseline_mm3 - followup_mm3 >= min_change_mm3:
        return "shrinking"
    return "stable"


def _group_class(n_baseline: int, n_followup: int, change: str) -> str:
    if n_baseline == 0:
        return "new"
    if n_followup == 0:
        return "resolved"
    if n_baseline > 1:
        return "merged"
    if n_followup > 1:
        return "split"
    return change


def match_lesions(
    baseline: np.ndarray,
    followup: np.ndarray,
    affine: np.ndarray,
    overlap: float = MATCH_OVERLAP,
    enlarging_ratio: float = ENLARGING_RATIO,
    min_change_mm3: float | None = None,
) -> pd.DataFrame:
    """The change table of two visits: one row per group of linked lesions.

    Args:
        baseline: int lesion labels of the baseline ``(D, H, W)``.
        followup: int lesion labels of the follow-up on the baseline grid.
        affine: voxel -> world matrix of that grid (centroids and volumes in mm).
        overlap: link rule, see :func:`link_lesions`.
        enlarging_ratio: volume factor of the enlarging/shrinking rule (> 1).
        min_change_mm3: smallest volume change that counts (default: two voxels of the grid).

    Returns:
        columns :data:`CHANGE_COLUMNS`; ``change_id`` from 1 in the order of :func:`link_lesions`;
        ``baseline_labels``/``followup_labels`` the linked label values joined by ``;``; ``volume_ratio``
        follow-up / baseline volume (NaN for new lesions); the centroid (world mm) of the follow-up voxels,
        or of the baseline voxels for a resolved lesion.

    Raises:
        ValueError: see :func:`link_lesions`; ``enlarging_ratio <= 1``.

    Examples:
        >>> b = np.zeros((8, 8, 8), int); f = np.zeros((8, 8, 8), int)
        >>> b[1:3, 1:3, 1:3] = 1; f[1:3, 1:3, 1:5] = 1  # 8 -> 16 voxels
        >>> match_lesions(b, f, np.eye(4))["change"].tolist()
        ['enlarging']
    """
    if not float(enlarging_ratio) > 1.0:
        raise ValueError(f"enlarging_ratio must be greater than 1, got {enlarging_ratio!r}")
    baseline, followup = _check_labels(baseline, followup)
    affine = np.asarray(affine, dtype=np.float64)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    step = 2.0 * voxel_mm3 if min_change_mm3 is None else float(min_change_mm3)
    groups = link_lesions(baseline, followup, overlap)
    nb, nf = int(baseline.max(initial=0)), int(followup.max(initial=0))
    size_b = np.bincount(baseline.ravel(), minlength=nb + 1) * voxel_mm3
    size_f = np.bincount(followup.ravel(), minlength=nf + 1) * voxel_mm3
    centres_b, centres_f = _centroids(baseline, nb), _centroids(followup, nf)
    rows = []
    for change_id, (b_labels, f_labels) in enumerate(groups, start=1):
        vb = float(size_b[b_labels].sum())
        vf = float(size_f[f_labels].sum())
        volume = volume_change(vb, vf, enlarging_ratio, step) if b_labels and f_labels else ""
        change = _group_class(len(b_labels), len(f_labels), volume)
        labels, centres, sizes = (f_labels, centres_f, size_f) if f_labels else (b_labels, centres_b, size_b)
        voxel_centre = (centres[labels] * sizes[labels, None]).sum(axis=0) / sizes[labels].sum()
        world = affine[:3, :3] @ voxel_centre + affine[:3, 3]
        rows.append(
            {
                "change_id": change_id,
                "change": change,
                "volume_change": volume,
                "new_or_enlarging": change == "new" or volume == "enlarging",
                "n_baseline": len(b_labels),
                "n_followup": len(f_labels),
                "baseline_labels": ";".join(map(str, b_labels)),
                "followup_labels": ";".join(map(str, f_labels)),
                "baseline_volume_ml": vb / 1000.0,
                "followup_volume_ml": vf / 1000.0,
                "volume_ratio": vf / vb if vb > 0 else float("nan"),
                "centroid_x_mm": float(world[0]),
                "centroid_y_mm": float(world[1]),
                "centroid_z_mm": float(world[2]),
            }
        )
    return pd.DataFrame(rows, columns=CHANGE_COLUMNS)


def _centroids(labels: np.ndarray, count: int) -> np.ndarray:
    """``(count + 1, 3)`` voxel centroids of labels ``0..count`` (row 0 unused)."""
    where = np.nonzero(labels)
    ids = labels[where]
    voxels = np.maximum(np.bincount(ids, minlength=count + 1), 1)
    return np.stack([np.bincount(ids, weights=c, minlength=count + 1) for c in where], axis=1) / voxels[:, None]


def change_map(baseline: np.ndarray, followup: np.ndarray, table: pd.DataFrame, ids: bool = False) -> np.ndarray:
    """Voxel map of the change table on the baseline grid.

    Follow-up voxels carry their group's class code (:data:`CHANGE_CODES`; ``new`` = 1, ``enlarging`` = 2,
    ...), and the voxels of resolved baseline lesions the code of ``resolved``.

    Args:
        baseline, followup: the label arrays given to :func:`match_lesions`.
        table: its result.
        ids: write ``change_id`` instead of the class code.

    Returns:
        uint8 (class codes) or int32 (ids) array of the grid's shape.

    Examples:
        >>> b = np.zeros((4, 4, 4), int); f = np.zeros((4, 4, 4), int); f[1, 1, 1] = 1
        >>> int(change_map(b, f, match_lesions(b, f, np.eye(4))).max())
        1
    """
    baseline, followup = _check_labels(baseline, followup)
    out = np.zeros(baseline.shape, dtype=np.int32 if ids else np.uint8)
    lookup_f = np.zeros(int(followup.max(initial=0)) + 1, dtype=out.dtype)
    lookup_b = np.zeros(int(baseline.max(initial=0)) + 1, dtype=out.dtype)
    for row in table.itertuples(index=False):
        value = row.change_id if ids else CHANGE_CODES[row.change]
        if row.followup_labels:
            lookup_f[_labels(row.followup_labels)] = value
        elif row.baseline_labels:
            lookup_b[_labels(row.baseline_labels)] = value
    resolved = lookup_b[baseline]
    out[:] = np.where(followup > 0, lookup_f[followup], resolved)
    return out


def _labels(text: Any) -> list[int]:
    return [int(v) for v in str(text).split(";") if v]
