"""Tiers 1 and 2 of every evaluation on one split: the trivial and the imaging-feature baselines, with intervals.

What a network has to beat before it is a result, per task (EDSS, brain age, sex), fitted on the training
split and scored on the validation split by default (the test split is for the chosen model, once):

- trivial: the training median (EDSS, age), linear age + sex (EDSS), brain volume alone (sex);
- imaging features: :mod:`monai_ms.engines.metrics.imaging_features` (brain volume, CSF / GM / WM fractions from a
  label-free tissue mixture, lesion volume and count from the masks; age and sex for EDSS).

Every metric has a 95% subject-bootstrap interval (:mod:`monai_ms.engines.metrics.bootstrap`). No network is
trained, so this runs in a minute or two on 2 cores. Writes ``benchmarks/results/imaging_baselines.json``
and prints a markdown table.

    python benchmarks/imaging_baselines.py                       # the demo cohort, validation split
    python benchmarks/imaging_baselines.py --manifest M --split validation
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import REPO, RESULTS, command_line, machine_info  # noqa: E402

TASKS = {"edss": ("edss", "mae"), "brain_age": ("age", "mae"), "sex": ("sex", "auc")}


def evaluate(manifest: str, split: str, n_resamples: int, workers: int, bias_correction: bool = False) -> dict:
    from monai_ms.data import load_datalist
    from monai_ms.engines.handlers.report import subjects_of
    from monai_ms.engines.metrics.bootstrap import bootstrap_metrics
    from monai_ms.engines.metrics.classification import binary_labels, classification_baselines
    from monai_ms.engines.metrics.imaging_features import feature_table, fit_feature_model
    from monai_ms.engines.metrics.scores import classification_metrics, regression_baselines, regression_metrics

    train = load_datalist(manifest, "training", validate=False)
    held_out = load_datalist(manifest, split, validate=False)
    start = time.perf_counter()
    measure = dict(workers=workers, bias_correction=bias_correction)
    rows_train, rows_held_out = feature_table(train, **measure), feature_table(held_out, **measure)
    feature_seconds = time.perf_counter() - start
    groups = subjects_of(held_out)
    results = {}
    for task, (target, metric) in TASKS.items():
        fitted = fit_feature_model(train, held_out, target, task, rows_train, rows_held_out)
        if task == "sex":
            y = binary_labels(held_out)
            trivial = classification_baselines(train, held_out)
            scores = {name: np.asarray(b["probabilities"]) for name, b in trivial.items()}
            scores["imaging_features"] = np.asarray(fitted["probabilities"])

            def compute(index, scores=scores, y=y):
                return {name: classification_metrics(p[index], y[index]) for name, p in scores.items()}

            point = {name: classification_metrics(p, y) for name, p in scores.items()}
        else:
            y = np.array([float(e[target]) for e in held_out])
            trivial = regression_baselines(train, held_out, target, linear_on_demographics=task == "edss")
            scores = {name: np.asarray(b["predictions"]) for name, b in trivial.items()}
            scores["imaging_features"] = np.asarray(fitted["predictions"])

            def compute(index, scores=scores, y=y):
                return {name: regression_metrics(p[index], y[index]) for name, p in scores.items()}

            point = {name: regression_metrics(p, y) for name, p in scores.items()}
        boot = bootstrap_metrics(compute, groups, n_resamples=n_resamples)
        results[task] = {
            "metric": metric,
            "features": fitted["features"],
            "n_subjects": boot["n_subjects"],
            "n_sessions": boot["n_sessions"],
            "baselines": {name: {"value": point[name][metric], "ci95": boot["intervals"][name][metric]} for name in scores},
        }
    from monai_ms.engines.metrics.imaging_features import feature_cache_dir

    cache = feature_cache_dir()  # a second run over the same files reads the features from it
    return {"feature_seconds": feature_seconds, "sessions_measured": len(train) + len(held_out), "bias_correction": bias_correction,
            "feature_cache": str(cache) if cache else None, "tasks": results}


def table(result: dict, split: str) -> str:
    lines = [f"| task | metric | baseline | {split} value [95% CI] | n subjects / sessions |", "|---|---|---|---|---|"]
    for task, r in result["tasks"].items():
        for name, b in r["baselines"].items():
            low, high = b["ci95"]
            lines.append(f"| {task} | {r['metric']} | {name} | {b['value']:.3f} [{low:.3f}, {high:.3f}] | {r['n_subjects']} / {r['n_sessions']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=None, help="manifest (default: the demo cohort, generated on first use)")
    parser.add_argument("--split", default="validation", choices=("validation", "testing"))
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bias_correction", action="store_true", help="N4 before the tissue model (as a bundle with it on)")
    parser.add_argument("--out", default=str(RESULTS / "imaging_baselines.json"))
    args = parser.parse_args(argv)
    from monai_ms.bundle import demo_manifest
    from monai_ms.io import write_json

    manifest = args.manifest or demo_manifest(REPO / "demo_data")
    result = evaluate(manifest, args.split, args.resamples, args.workers, args.bias_correction)
    result.update(manifest=str(manifest), split=args.split, machine=machine_info(), command=command_line(__file__, argv))
    write_json(result, args.out)
    print(table(result, args.split))
    print(f"features of {result['sessions_measured']} sessions in {result['feature_seconds']:.1f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
