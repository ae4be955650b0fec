"""Design check of the brain_age / sex linear path: intensity histogram vs tissue features (issue 20).

The linear path alone, before any CNN training, fitted exactly as the bundles fit it
(``monai_ms.engines.fit_feature_paths``: ridge for age, class-balanced logistic regression for sex, penalty
chosen on subject-grouped folds of the training split) on the demo cohort's training split. It is scored on
the demo validation split and on design cohorts of *other people* (a different seed), one per scanner
shift of ``SHIFTS`` plus the reference settings: the case of a bundle shared with another site. No test
split of any cohort the project reports is read; the design cohorts serve only this check.

Six variants: ``histogram`` (the 0.2-0.3 default: 24 bins of the z-scored T1), ``tissue`` (0.4.0:
brain share and three class fractions, ``TissueFeatures``), ``both``, and ``tissue+shape`` (the class
fractions plus a 16-bin histogram of the brain on the scale its own class centres define,
``TissueFeatures(bins=16)``); ``tissue+shape+s1`` / ``+s2`` take that histogram of the T1 smoothed by a
Gaussian of 1 / 2 voxels (``TissueFeatures(smoothing=...)``). Each figure has its 95% subject
bootstrap interval and n; the training median is the trivial baseline for age.

    python benchmarks/feature_paths.py                   # demo cohort + 7 design cohorts of 8 subjects (minutes on 2 cores)
    python benchmarks/feature_paths.py --subjects 4 --shifts bias   # smaller

Writes ``benchmarks/results/feature_paths.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import CACHE, REPO, RESULTS, command_line, fill_markers, machine_info  # noqa: E402
from generalisation import REFERENCE, shifted_cohort  # noqa: E402

VARIANTS = {
    "histogram": {"histogram_bins": 24},
    "tissue": {"tissue_features": True},
    "both": {"histogram_bins": 24, "tissue_features": True},
    "tissue+shape": {"tissue_features": True, "tissue_bins": 16},
    # the same histogram of the T1 smoothed by a Gaussian of 1 or 2 voxels (TissueFeatures(smoothing=...)):
    # scans of other voxel sizes reach closer effective resolutions
    "tissue+shape+s1": {"tissue_features": True, "tissue_bins": 16, "tissue_smoothing": 1.0},
    "tissue+shape+s2": {"tissue_features": True, "tissue_bins": 16, "tissue_smoothing": 2.0},
}


def _network(task: str, variant: str) -> torch.nn.Module:
    from monai_ms.networks import BrainClassifier3D, BrainRegressor3D

    kind = BrainRegressor3D if task == "brain_age" else BrainClassifier3D
    return kind(channels=(4, 8), strides=(2, 2), norm="batch", **VARIANTS[variant]).eval()


def _predict(network: torch.nn.Module, entries: list[dict[str, Any]], transform: Any) -> np.ndarray:
    """The network's output per entry (years, or a logit). Right after ``fit_feature_paths`` the MLP's last layer
    is zero, so this is the fitted linear paths alone, computed by the bundle's own forward."""
    outputs = []
    with torch.no_grad():
        for entry in entries:
            image = torch.as_tensor(transform(dict(entry))["image"]).as_subclass(torch.Tensor)[None]
            outputs.append(float(network(image)[0, 0]))
    return np.asarray(outputs)


def score(task: str, prediction: np.ndarray, entries: list[dict[str, Any]], train_median: float) -> dict[str, Any]:
    from monai_ms.engines.metrics.bootstrap import bootstrap_metrics
    from monai_ms.engines.metrics.classification import binary_labels
    from monai_ms.engines.metrics.scores import classification_metrics, regression_metrics

    groups = [str(e["subject"]) for e in entries]
    if task == "brain_age":
        true = np.array([float(e["age"]) for e in entries])

        def compute(i: np.ndarray) -> dict[str, Any]:
            return {
                "model": regression_metrics(prediction[i], true[i]),
                "training_median": regression_metrics(np.full(len(i), train_median), true[i]),
            }

        metric = "mae"
    else:
        true = binary_labels(entries)
        probability = 1.0 / (1.0 + np.exp(-prediction))

        def compute(i: np.ndarray) -> dict[str, Any]:
            return {"model": classification_metrics(probability[i], true[i])}

        metric = "auc"
    point = compute(np.arange(len(entries)))
    boot = bootstrap_metrics(compute, groups, n_resamples=1000, seed=0)
    return {
        name: {metric: float(values[metric]), "ci95": boot["intervals"][name][metric]} for name, values in point.items()
    } | {"n_sessions": len(entries), "n_subjects": len(set(groups))}


def main(argv: list[str] | None = None) -> int:
    from monai.transforms import Compose, ConcatItemsd

    from monai_ms.data import load_datalist
    from monai_ms.data.synthetic_settings import SHIFTS
    from monai_ms.data.transforms import paired_transforms
    from monai_ms.engines import fit_feature_paths, fit_normalization

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", default=None, help="demo manifest (default: the bundles' demo cohort)")
    parser.add_argument("--shifts", default=",".join([REFERENCE, *SHIFTS]), help="design cohorts to score on")
    parser.add_argument("--subjects", type=int, default=8, help="subjects per design cohort")
    parser.add_argument("--seed", type=int, default=3, help="seed of the design cohorts (not the demo's)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"linear paths to compare ({', '.join(VARIANTS)})")
    parser.add_argument("--tasks", default="brain_age,sex", help="linear paths of which bundles (brain_age, sex)")
    parser.add_argument("--out", default=str(RESULTS / "feature_paths.json"))
    parser.add_argument(
        "--docs",
        default=str(REPO / "docs" / "generalisation.md"),
        help="markdown file whose markers get the table ('' for none)",
    )
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}: choose from {list(VARIANTS)}")

    from monai_ms.bundle import demo_manifest

    manifest = args.demo or str(demo_manifest(str(REPO / "demo_data")))
    transform = Compose(
        [
            paired_transforms(
                stage="eval", image_keys=["t1"], target_key=None, spacing=[2.0] * 3, roi_size=[80, 96, 80]
            ),
            ConcatItemsd(keys=["t1"], name="image", dim=0),
        ]
    )
    train = load_datalist(manifest, "training", validate=False)
    sets = {"demo validation": load_datalist(manifest, "validation", validate=False)}
    for shift in args.shifts.split(","):
        cohort = shifted_cohort(shift, args.subjects, None, args.seed, False, CACHE / "feature_paths", workers=2)
        sets[f"seed {args.seed}, {shift}"] = [
            e
            for split in ("training", "validation", "testing")
            for e in load_datalist(cohort["manifest"], split, validate=False)
        ]
    train_median = float(np.median([float(e["age"]) for e in train]))
    rows = []
    for task, target in (("brain_age", "age"), ("sex", "sex")):
        if task not in args.tasks.split(","):
            continue
        for variant in variants:
            network = _network(task, variant)
            if task == "brain_age":
                fit_normalization(network, train, target_key="age", demographics=False)
            fitted = fit_feature_paths(network, train, _with_target(transform, target), target_key=target)
            for name, entries in sets.items():
                prediction = _predict(network, entries, transform)
                row = {
                    "task": task,
                    "variant": variant,
                    "scored_on": name,
                    "penalty": fitted["penalty"],
                    **score(task, prediction, entries, train_median),
                }
                rows.append(row)
                print(_line(row), flush=True)
    report = {
        "machine": machine_info(),
        "command": command_line("benchmarks/feature_paths.py", argv),
        "train": {"manifest": manifest, "sessions": len(train)},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    table = markdown(rows)
    print(table)
    if args.docs:
        m = report["machine"]
        fill_markers(
            Path(args.docs),
            "feature_paths",
            f"Command: `{report['command']}`; {m['device_name']}, {m['cpu_count']} cores.\n\n{table}",
        )
    return 0


def _with_target(transform: Any, target: str) -> Any:
    """The image chain plus the target as the bundles' chain encodes it (sex: 1 = male)."""
    from monai_ms.data.fields import parse_sex

    def apply(entry: dict[str, Any]) -> dict[str, Any]:
        item = transform(dict(entry))
        item[target] = float(parse_sex(entry["sex"])) if target == "sex" else float(entry[target])
        return item

    return apply


def _cell(block: dict[str, Any], metric: str) -> str:
    low, high = block["ci95"]
    return (
        f"{block[metric]:.2f} [{low:.2f}, {high:.2f}]"
        if metric == "mae"
        else f"{block[metric]:.3f} [{low:.3f}, {high:.3f}]"
    )


def _line(row: dict[str, Any]) -> str:
    metric = "mae" if row["task"] == "brain_age" else "auc"
    base = f" (training median {_cell(row['training_median'], metric)})" if "training_median" in row else ""
    n = f"n={row['n_sessions']:2d}/{row['n_subjects']:2d}"
    return (
        f"{row['task']:9s} {row['variant']:12s} {row['scored_on']:22s} {n} {metric} {_cell(row['model'], metric)}{base}"
    )


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = []
    for task, metric in (("brain_age", "mae"), ("sex", "auc")):
        names = list(dict.fromkeys(r["scored_on"] for r in rows if r["task"] == task))
        variants = list(dict.fromkeys(r["variant"] for r in rows if r["task"] == task))
        if not variants:
            continue  # a task left out with --tasks
        extra = " | training median" if task == "brain_age" else ""
        lines += [
            f"| {task} ({metric.upper()}), scored on | n sessions / subjects | " + " | ".join(variants) + extra + " |",
            "|---" * (len(variants) + 2 + bool(extra)) + "|",
        ]
        for name in names:
            cells = {r["variant"]: r for r in rows if r["task"] == task and r["scored_on"] == name}
            first = next(iter(cells.values()))
            median = f" | {_cell(first['training_median'], metric)}" if extra else ""
            lines.append(
                f"| {name} | {first['n_sessions']} / {first['n_subjects']} | "
                + " | ".join(_cell(cells[v]["model"], metric) for v in variants)
                + median
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
