"""Score lesion change and lesion location against a synthetic cohort's truth (``lesion_truth.csv``).

Change detection (``score_change``), per pair, in the baseline's world (mm):

- *truth positives*: follow-up lesions that the follow-up mask shows (``mask_voxels >= 1``) whose truth
  status is ``new``, or ``enlarged`` with a growth of at least the pipeline's ``enlarging_ratio`` (1.5).
  Two definitions of that growth are scored: ``nominal``, the generator's volume factor of the drawn
  ellipsoid (``volume_ratio``), and ``visible``, the factor of the lesion's voxels in the two masks
  (``mask_voxels`` at follow-up / baseline, and at least two voxels more; a lesion absent from the
  baseline mask is visible as new). The lesions are cut to the white matter when drawn, so a lesion
  growing into the cortex or the ventricle wall grows less in its mask than its nominal factor;
- *neutral*: the other ``enlarged`` lesions (real growth below the rule): finding them is neither a hit
  nor a false discovery;
- *predicted positives*: change-table rows with ``new_or_enlarging``;
- a predicted row *finds* a truth lesion when the truth centre (``baseline_x/y/z_mm``: where the lesion
  sits in the baseline scan) is within ``r + 3 mm`` of the row's centroid, ``r`` the radius of a ball of
  the row's follow-up volume; rows and truth lesions are paired greedily, nearest first, one to one;
- a predicted row that finds no truth positive and no neutral lesion is a *false discovery*.

Pooled over pairs: TPR = found / truth positives, false discoveries per patient, F1 = 2 TP / (2 TP + FN +
FD); 95% intervals: percentile bootstrap over subjects (2000 resamples, seed 0).

Location (``score_location``): each truth lesion that its session's mask shows is looked up in the
predicted lesion table of that session (the component with a voxel within one voxel of the truth centre);
agreement = share of those lesions whose predicted class equals the truth class.

Command line (the figures of ``docs/lesion_change.md``)::

    python -m monai_ms.lesions.evaluation change --truth COHORT/lesion_truth.csv --change_dir OUT
    python -m monai_ms.lesions.evaluation location --cohort COHORT --out OUT/location.csv
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["score_change", "score_location", "locate_cohort", "bootstrap_interval", "main"]

MATCH_MARGIN_MM = 3.0


def bootstrap_interval(
    groups: Sequence[Any], statistic: Any, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile 95% interval of ``statistic(sample)`` over resamples of ``groups`` with replacement.

    Args:
        groups: per-subject items (anything ``statistic`` accepts as a list).
        statistic: function of a list of groups -> float (NaN results are dropped).
        resamples: number of resamples.
        seed: random seed.

    Returns:
        ``(low, high)``; NaNs when there are no groups.

    Examples:
        >>> low, high = bootstrap_interval([1.0, 2.0, 3.0], lambda s: float(np.mean(s)))
        >>> 1.0 <= low <= high <= 3.0
        True
    """
    groups = list(groups)
    if not groups:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        sample = [groups[i] for i in rng.integers(0, len(groups), len(groups))]
        value = statistic(sample)
        if np.isfinite(value):
            values.append(value)
    if not values:
        return math.nan, math.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _pair_counts(
    predicted: pd.DataFrame, truth: pd.DataFrame, baseline: pd.DataFrame, enlarging_ratio: float, definition: str
) -> dict[str, int]:
    if definition == "nominal":
        grown = truth["volume_ratio"] >= enlarging_ratio
    elif definition == "visible":
        before = truth["lesion_id"].map(baseline.set_index("lesion_id")["mask_voxels"]).fillna(0)
        after = truth["mask_voxels"]
        grown = (before == 0) | ((after >= enlarging_ratio * before) & (after - before >= 2))
    else:
        raise ValueError(f"definition must be 'nominal' or 'visible', got {definition!r}")
    positive = (truth["status"] == "new") | ((truth["status"] == "enlarged") & grown)
    visible = truth["mask_voxels"] >= 1
    targets = truth[visible & (positive | (truth["status"] == "enlarged"))].copy()
    targets["positive"] = positive[targets.index]
    rows = predicted[predicted["new_or_enlarging"].astype(bool)]
    centres = rows[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy(dtype=float)
    reach = (3.0 * rows["followup_volume_ml"].to_numpy(dtype=float) * 1000.0 / (4.0 * math.pi)) ** (1 / 3) + MATCH_MARGIN_MM
    points = targets[["baseline_x_mm", "baseline_y_mm", "baseline_z_mm"]].to_numpy(dtype=float)
    candidates = []
    for i in range(len(rows)):
        for j in range(len(targets)):
            distance = float(np.linalg.norm(centres[i] - points[j]))
            if distance <= reach[i]:
                candidates.append((distance, i, j))
    used_rows: set[int] = set()
    used_targets: set[int] = set()
    tp = neutral = 0
    for _, i, j in sorted(candidates):
        if i in used_rows or j in used_targets:
            continue
        used_rows.add(i)
        used_targets.add(j)
        if targets["positive"].iloc[j]:
            tp += 1
        else:
            neutral += 1
    n_positive = int(targets["positive"].sum())
    return {"tp": tp, "fn": n_positive - tp, "fd": len(rows) - tp - neutral, "neutral_found": neutral, "positives": n_positive}


def _detection(counts: Sequence[dict[str, int]]) -> dict[str, float]:
    tp = sum(c["tp"] for c in counts)
    fn = sum(c["fn"] for c in counts)
    fd = sum(c["fd"] for c in counts)
    return {
        "tpr": tp / (tp + fn) if tp + fn else math.nan,
        "fd_per_patient": fd / len({c.get("subject", i) for i, c in enumerate(counts)}) if counts else math.nan,
        "f1": 2 * tp / (2 * tp + fn + fd) if 2 * tp + fn + fd else math.nan,
    }


def score_change(
    truth: pd.DataFrame,
    change_table: pd.DataFrame,
    summary: pd.DataFrame,
    enlarging_ratio: float = 1.5,
    definition: str = "visible",
) -> dict[str, Any]:
    """Lesion-wise detection of new and enlarging lesions (module docstring: the rules).

    Args:
        truth: ``lesion_truth.csv`` of the cohort.
        change_table: ``lesion_change_table.csv`` of a pipeline run.
        summary: its ``lesion_change.csv`` (pairs with status ``ok`` are scored).
        enlarging_ratio: the volume factor that makes a grown truth lesion a positive.
        definition: ``"visible"`` (mask voxels) or ``"nominal"`` (drawn volume) growth.

    Returns:
        ``{"n_pairs", "n_truth_positives", "tp", "fn", "fd", "tpr", "tpr_ci", "fd_per_patient",
        "fd_per_patient_ci", "f1", "f1_ci", "per_pair"}``.
    """
    pairs = summary[summary["status"] == "ok"]
    per_pair = []
    for row in pairs.itertuples():
        followup_truth = truth[truth["MRI_ID"] == row.followup]
        baseline_truth = truth[truth["MRI_ID"] == row.baseline]
        predicted = change_table[change_table["pair"] == row.pair]
        counts = _pair_counts(predicted, followup_truth, baseline_truth, enlarging_ratio, definition)
        per_pair.append({"pair": row.pair, "subject": row.subject, **counts})
    result: dict[str, Any] = {
        "definition": definition,
        "n_pairs": len(per_pair),
        "n_truth_positives": sum(c["positives"] for c in per_pair),
    }
    for key in ("tp", "fn", "fd", "neutral_found"):
        result[key] = sum(c[key] for c in per_pair)
    point = _detection(per_pair)
    by_subject: dict[Any, list[dict[str, Any]]] = {}
    for counts in per_pair:  # resample patients, each with all of its pairs
        by_subject.setdefault(counts["subject"], []).append(counts)
    for name, value in point.items():
        result[name] = value
        result[f"{name}_ci"] = bootstrap_interval(
            list(by_subject.values()), lambda sample, n=name: _detection([c for group in sample for c in group])[n]
        )
    result["per_pair"] = per_pair
    return result


def locate_cohort(cohort: str | Path, sessions: Sequence[str] | None = None, threads: int | None = 2) -> pd.DataFrame:
    """Lesion tables with location columns of a synthetic cohort's given masks (one atlas registration each).

    Args:
        cohort: a cohort folder of ``monai-ms synth`` (seed layout).
        sessions: MRI_IDs to locate (default: all).
        threads: SimpleITK threads.

    Returns:
        the concatenated tables with ``seconds`` (per session).
    """
    import nibabel as nib
    import SimpleITK as sitk

    from monai_ms.lesions.location import locate_lesions

    if threads is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    cohort = Path(cohort)
    ids = sessions or pd.read_csv(cohort / "ground_truth.csv")["MRI_ID"].tolist()
    tables = []
    for session in ids:
        start = time.perf_counter()
        t1 = nib.load(str(cohort / "T1" / f"{session}_T1_preprocessed.nii.gz"))
        mask = nib.load(str(cohort / "masks" / f"{session}_lesion.nii.gz"))
        table = locate_lesions(mask, t1, session=session)
        table["seconds"] = round(time.perf_counter() - start, 2)
        tables.append(table)
        print(f"{session}: {len(table)} lesions, {table['seconds'].iloc[0] if len(table) else 0:.1f} s", file=sys.stderr)
    return pd.concat([t for t in tables if len(t)], ignore_index=True)


def score_location(truth: pd.DataFrame, located: pd.DataFrame, cohort: str | Path) -> dict[str, Any]:
    """Agreement of predicted location classes with the generator's (module docstring: the rule).

    Args:
        truth: ``lesion_truth.csv``.
        located: :func:`locate_cohort` output (``lesion_id`` numbered from the largest, as ``lesion_table``).
        cohort: the cohort folder (the masks, to find the component under each truth centre).

    Returns:
        ``{"n_lesions", "n_sessions", "agreement", "agreement_ci", "confusion"}`` (confusion: truth class ->
        predicted class -> count).
    """
    import nibabel as nib

    from monai_ms.engines.metrics.segmentation import label_lesions

    cohort = Path(cohort)
    pairs = []
    for session, rows in truth[truth["mask_voxels"] >= 1].groupby("MRI_ID", sort=False):
        predicted = located[located["session"] == session]
        if not len(predicted):
            continue
        image = nib.load(str(cohort / "masks" / f"{session}_lesion.nii.gz"))
        spacing = np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0))
        labels, count = label_lesions(np.asanyarray(image.dataobj), spacing)
        # lesion_table numbers lesions from the largest: map label value -> lesion_id
        voxels = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        order = np.argsort(-voxels, kind="stable")
        label_to_id = {int(label) + 1: rank + 1 for rank, label in enumerate(order)}
        classes = dict(zip(predicted["lesion_id"], predicted["location"]))
        for row in rows.itertuples():
            voxel = np.rint(np.linalg.solve(image.affine, [row.centre_x_mm, row.centre_y_mm, row.centre_z_mm, 1.0])[:3]).astype(int)
            window = labels[tuple(slice(max(v - 1, 0), v + 2) for v in voxel)]
            found = window[window > 0]
            if not found.size:
                continue
            label = int(np.bincount(found).argmax())
            pairs.append({"subject": row.Patient_ID, "session": session, "truth": row.location, "predicted": classes[label_to_id[label]]})
    frame = pd.DataFrame(pairs)
    groups = [g for _, g in frame.groupby("subject")]

    def agreement(sample: Sequence[pd.DataFrame]) -> float:
        joined = pd.concat(sample)
        return float((joined["truth"] == joined["predicted"]).mean())

    confusion = pd.crosstab(frame["truth"], frame["predicted"])
    return {
        "n_lesions": len(frame),
        "n_sessions": int(frame["session"].nunique()),
        "n_subjects": len(groups),
        "agreement": float((frame["truth"] == frame["predicted"]).mean()),
        "agreement_ci": bootstrap_interval(groups, agreement),
        "confusion": {t: {p: int(v) for p, v in row.items()} for t, row in confusion.iterrows()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m monai_ms.lesions.evaluation {change,location} ...``: prints a JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    change = sub.add_parser("change", help="detection of new and enlarging lesions")
    change.add_argument("--truth", required=True)
    change.add_argument("--change_dir", required=True, nargs="+", help="one or more lesion-change output folders")
    change.add_argument("--enlarging_ratio", type=float, default=1.5)
    change.add_argument("--per_pair", action="store_true", help="also print each pair's counts")
    location = sub.add_parser("location", help="location-class agreement")
    location.add_argument("--cohort", required=True)
    location.add_argument("--out", required=True, help="CSV of the located lesion tables (reused when it exists)")
    location.add_argument("--sessions", nargs="*", default=None)
    args = parser.parse_args(argv)
    if args.what == "change":
        truth = pd.read_csv(args.truth)
        report = {}
        for folder in args.change_dir:
            folder = Path(folder)
            summary = pd.read_csv(folder / "lesion_change.csv")
            table = pd.read_csv(folder / "lesion_change_table.csv")
            ok = summary[summary["status"] == "ok"]
            scored: dict[str, Any] = {}
            for definition in ("visible", "nominal"):
                scored[definition] = score_change(truth, table, summary, args.enlarging_ratio, definition)
                if not args.per_pair:
                    scored[definition].pop("per_pair")
            scored["seconds_per_pair_median"] = float(ok["seconds"].median())
            scored["registration_seconds_median"] = float(ok["registration_seconds"].median())
            scored["location_seconds_median"] = float(ok["location_seconds"].median())
            scored["n_unpaired"] = int((summary["status"] == "unpaired").sum())
            report[str(folder)] = scored
        print(json.dumps(report, indent=1, default=float))
        return 0
    from monai_ms.io import write_csv

    out = Path(args.out)
    located = pd.read_csv(out) if out.is_file() else locate_cohort(args.cohort, args.sessions)
    if not out.is_file():
        write_csv(located, out)
    report = score_location(pd.read_csv(Path(args.cohort) / "lesion_truth.csv"), located, args.cohort)
    report["seconds_per_session_median"] = float(located.drop_duplicates("session")["seconds"].median())
    print(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
