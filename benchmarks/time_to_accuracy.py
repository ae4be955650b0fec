"""Time to accuracy: wall time from ``run training`` until the validation metric first reaches its target.

Each run is the bundle's usage line, ``python -m monai.bundle run training --config_file
bundles/<task>/configs/train.json``, on the demo cohort, started in its own copy of ``bundles/`` (so no
model trained earlier in this checkout is picked up: "a fresh clone"), with the variant's overrides. The
time to target is read from ``training_log.csv`` (``wall_clock``: when each validation ended) against the
moment the process was started; the cohort generation (once, before any run) is timed separately.

Targets on the validation split (the test split is scored only for the defaults, with ``--evaluate``):

- ``lesion_seg``: mean Dice >= 0.70 (issue 19);
- ``edss``: MAE <= 0.75 x the better trivial baseline on the validation split (training median, linear
  age + sex), i.e. 25% below it;
- ``brain_age``: MAE <= 0.8 x the training-median baseline on the validation split;
- ``sex``: AUC >= 0.80.

A run longer than ``--max_minutes`` is stopped there; it then reports whether and when it reached its target
within the cap. Variants are named in :data:`VARIANTS` (``default`` is what the bundle does today; the
others are what was tried, or the previous release's defaults, run as an override file so a setting can be
put back to ``null``). Writes ``benchmarks/results/time_to_accuracy.json`` and prints a markdown table.

    python benchmarks/time_to_accuracy.py                                   # every bundle, default variant
    python benchmarks/time_to_accuracy.py --bundles lesion_seg --variants default,v0.3 --evaluate
    python benchmarks/time_to_accuracy.py --tiny                            # seconds: the 4 mm test cohort
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import REPO, RESULTS, bundle_command, command_line, machine_info, run_capped  # noqa: E402

# bundle -> (validation column of training_log.csv, higher is better)
METRICS = {"lesion_seg": ("val_mean_dice", True), "edss": ("val_mae", False), "brain_age": ("val_mae", False), "sex": ("val_auc", True)}

# bundle -> variant -> overrides of train.json (None: back to null through an override file)
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "lesion_seg": {
        "default": {},
        # the 0.5.0 defaults: no N4 bias-field correction (0.6.0 added it)
        "v0.5": {"bias_correction": False},
        # the 0.4.0 defaults: 40 epochs (cosine over 40); 0.5.0 doubled them for the coarse-voxel cohorts
        "v0.4": {"epochs": 40, "bias_correction": False},
        # the 0.3.0 defaults: 80 epochs, patience 20, lr 0.002, fp32, PyTorch's default output bias
        "v0.3": {
            "epochs": 80, "patience": 20, "learning_rate": 0.002, "autocast": None, "network_def#prior_probability": None,
            "bias_correction": False,
        },
        # one change each from today's defaults (with N4 since 0.6.0: not comparable with results recorded before it)
        "fp32": {"autocast": None},
        "no_prior": {"network_def#prior_probability": None},
    },
    "edss": {
        "default": {},
        # 0.4.0: the lesion load as log(1 + 1000 x lesion fraction of the ROI)
        "v0.4": {"network_def#lesion_voxel_ml": None},
        # 0.3.0 from a fresh clone: no segmenter, so the lesion pathway learnt from scratch
        "v0.3": {
            "lesion_init": "", "measured_features": None, "epochs": 12, "network_def#lesion_network#prior_probability": None,
            "network_def#lesion_voxel_ml": None,
        },
    },
    "brain_age": {"default": {}},
    "sex": {"default": {}},
}

# --tiny checks the script, not the models: no N4 fits (bias_correction false)
TINY = {"spacing": [4.0, 4.0, 4.0], "roi_size": [32, 40, 32], "epochs": 2, "batch_size": 2, "num_workers": 0, "bias_correction": False}
TINY_LESION = {
    "spacing": [4.0, 4.0, 4.0], "patch_size": [32, 32, 32], "patches_per_volume": 2, "epochs": 2, "batch_size": 2, "num_workers": 0
}
TINY_BY_BUNDLE = {"lesion_seg": {**TINY_LESION, "bias_correction": False}, "edss": {**TINY, "lesion_stage": TINY_LESION}}


def targets(manifest: str, sex_auc: float = 0.80) -> dict[str, float]:
    """Each bundle's validation target on ``manifest`` (see the module docstring)."""
    from monai_ms.data import load_datalist
    from monai_ms.engines.metrics.scores import regression_baselines

    train = load_datalist(manifest, "training", validate=False)
    val = load_datalist(manifest, "validation", validate=False)
    edss = regression_baselines(train, val, target_key="edss")
    age = regression_baselines(train, val, target_key="age", linear_on_demographics=False)
    better = min(edss["training_median"]["mae"], edss["linear_age_sex"]["mae"])
    return {"lesion_seg": 0.70, "edss": 0.75 * better, "brain_age": 0.8 * age["training_median"]["mae"], "sex": sex_auc}


def _first_reaching(log: Path, column: str, higher: bool, target: float, start: float) -> dict[str, Any]:
    import pandas as pd

    if not log.is_file():
        return {"epochs": 0, "best": None, "best_epoch": None, "time_to_target_s": None, "epoch_to_target": None}
    frame = pd.read_csv(log).dropna(subset=[column])
    reached = frame[frame[column] >= target] if higher else frame[frame[column] <= target]
    best = frame.loc[frame[column].idxmax() if higher else frame[column].idxmin()] if len(frame) else None
    return {
        "epochs": int(frame["epoch"].max()) if len(frame) else 0,
        "best": None if best is None else float(best[column]),
        "best_epoch": None if best is None else int(best["epoch"]),
        "time_to_target_s": None if reached.empty else round(float(reached.iloc[0]["wall_clock"]) - start, 1),
        "epoch_to_target": None if reached.empty else int(reached.iloc[0]["epoch"]),
        "curve": [round(float(v), 4) for v in frame[column]],
    }




def _override_file(overrides: dict[str, Any], path: Path) -> list[str]:
    """Overrides as an extra config file (it can hold null) plus nothing on the command line."""
    path.write_text(json.dumps(overrides, indent=1))
    return [str(path)]


def run_variant(
    bundle: str, variant: str, overrides: dict[str, Any], manifest: str, out: Path, cap_s: float, target: float, evaluate: bool
) -> dict[str, Any]:
    run_dir = out / f"{bundle}_{variant}"
    shutil.rmtree(run_dir, ignore_errors=True)
    # a fresh copy of the bundles (configs and docs only): nothing trained before in this checkout is found
    shutil.copytree(REPO / "bundles", run_dir / "bundles", ignore=shutil.ignore_patterns("models", "eval", "runs", "cache"))
    config = run_dir / "bundles" / bundle / "configs" / "train.json"
    settings = {**overrides, "data_manifest": manifest, "output_dir": str(run_dir / "eval"), "ckpt_dir": str(run_dir / "models")}
    files = [str(config)] + _override_file(settings, run_dir / "overrides.json")
    command = bundle_command("training", files)
    column, higher = METRICS[bundle]
    start = time.time()
    status, capped = run_capped(command, run_dir / "training.log", cap_s)
    wall = time.time() - start
    result: dict[str, Any] = {
        "bundle": bundle,
        "variant": variant,
        "overrides": overrides,
        "target": {"metric": column, "value": round(target, 4), "higher_is_better": higher},
        "exit_status": status,
        "stopped_at_cap": capped,
        "wall_s": round(wall, 1),
        **_first_reaching(run_dir / "eval" / "training_log.csv", column, higher, target, start),
    }
    stage_log = run_dir / "models" / "lesion_stage" / "eval" / "training_log.csv"
    if stage_log.is_file():  # EDSS: the lesion stage it trained first
        import pandas as pd

        stage = pd.read_csv(stage_log)
        result["lesion_stage"] = {
            "wall_s": round(float(stage["wall_clock"].max()) - start, 1),
            "epochs": int(stage["epoch"].max()),
            "best_val_mean_dice": round(float(stage["val_mean_dice"].max()), 4),
        }
    if evaluate and status == 0:
        result["evaluate"] = evaluate_run(run_dir, bundle, cap_s)
    return result


def evaluate_run(run_dir: Path, bundle: str, cap_s: float) -> dict[str, Any]:
    """``run evaluating`` (the test split, once) of the model a run of :func:`run_variant` trained."""
    config = run_dir / "bundles" / bundle / "configs" / "train.json"
    files = [str(config), str(config.with_name("evaluate.json")), str(run_dir / "overrides.json")]
    command = bundle_command("evaluating", files)
    status, _ = run_capped(command, run_dir / "evaluate.log", cap_s)
    metrics = run_dir / "eval" / "metrics.json"
    return {"exit_status": status, **_test_summary(metrics)} if status == 0 and metrics.is_file() else {"exit_status": status}


def _test_summary(path: Path) -> dict[str, Any]:
    """The model's and baselines' scalar metrics with intervals, as ``metrics.json`` holds them."""
    report = json.loads(path.read_text())
    keep = ("n", "n_scans", "n_subjects", "mae", "rmse", "pearson_r", "auc", "ece", "mean_dice", "lesion_f1", "ci95")
    pick = lambda block: {k: v for k, v in block.items() if k in keep}  # noqa: E731
    return {
        "split": report.get("provenance", {}).get("split", report.get("split")),
        "model": pick(report.get("model", report.get("summary", {}))),  # lesion_seg's report calls it summary
        "baselines": {name: pick(block) for name, block in report.get("baselines", {}).items()},
        "n_subjects": report.get("uncertainty", {}).get("n_subjects"),
        "beats_baselines": report.get("beats_baselines"),
        "beats_imaging_features": report.get("beats_imaging_features"),
    }


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| bundle | variant | target (validation) | time to target (s) | epoch | best (epoch) | epochs run | wall (s) | lesion stage (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r["target"]
        sign = ">=" if t["higher_is_better"] else "<="
        capped = " (capped)" if r["stopped_at_cap"] else ""
        reached = r["time_to_target_s"] if r["time_to_target_s"] is not None else f"not reached{capped}"
        best = "-" if r["best"] is None else f"{r['best']:.3f} ({r['best_epoch']})"
        stage = r.get("lesion_stage", {}).get("wall_s", "-")
        lines.append(
            f"| {r['bundle']} | {r['variant']} | {t['metric']} {sign} {t['value']:.3f} | {reached} | {r['epoch_to_target'] or '-'} "
            f"| {best} | {r['epochs']} | {r['wall_s']} | {stage} |"
        )
    return "\n".join(lines)


def _evaluate_existing(out: Path, runs: Path, max_minutes: float) -> int:
    """Score the default runs of an earlier result file on the test split (once) and write the file back."""
    from monai_ms.io import write_json

    report = json.loads(out.read_text())
    for result in report["results"]:
        if result["variant"] == "default" and result["exit_status"] == 0 and result.get("evaluate", {}).get("exit_status") != 0:
            print(f"{result['bundle']}: evaluating on the test split ...", flush=True)
            result["evaluate"] = evaluate_run(runs / f"{result['bundle']}_default", result["bundle"], max_minutes * 60)
    write_json(report, out)
    return 0 if all(r.get("evaluate", {"exit_status": 0})["exit_status"] == 0 for r in report["results"]) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", default="lesion_seg,edss,brain_age,sex")
    parser.add_argument("--variants", default="default", help="comma-separated names from VARIANTS, or 'all'")
    parser.add_argument("--max_minutes", type=float, default=20.0, help="stop a run after this long")
    parser.add_argument("--baseline_minutes", type=float, default=None, help="cap of the non-default variants (default: --max_minutes)")
    parser.add_argument("--evaluate", action="store_true", help="score the default variant on the test split once")
    parser.add_argument("--manifest", default=None, help="default: the demo cohort (generated first if missing)")
    parser.add_argument("--tiny", action="store_true", help="the 4 mm test cohort and 2 epochs (checks the script)")
    parser.add_argument("--out", default=str(RESULTS / "time_to_accuracy.json"))
    parser.add_argument("--runs_dir", default=None, help="where each run's folder goes (default: next to --out)")
    parser.add_argument("--evaluate_existing", action="store_true", help="only evaluate the default runs already in --out")
    args = parser.parse_args(argv)
    if args.evaluate_existing:
        runs = Path(args.runs_dir) if args.runs_dir else Path(args.out).with_suffix("")
        return _evaluate_existing(Path(args.out), runs, args.max_minutes)

    from monai_ms.bundle.cohort import demo_manifest
    from monai_ms.io import write_json

    cohort_start = time.time()
    if args.manifest:
        manifest = str(Path(args.manifest).resolve())
    elif args.tiny:
        manifest = demo_manifest(RESULTS / "cache" / "tiny_demo", subjects=6, spacing=None, tiny=True)
    else:
        manifest = demo_manifest(REPO / "demo_data")
    cohort_s = time.time() - cohort_start
    goal = targets(manifest)
    out = Path(args.runs_dir) if args.runs_dir else Path(args.out).with_suffix("")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for bundle in args.bundles.split(","):
        names = list(VARIANTS[bundle]) if args.variants == "all" else [v for v in args.variants.split(",") if v in VARIANTS[bundle]]
        for variant in names:
            overrides = dict(VARIANTS[bundle][variant])
            if args.tiny:
                overrides = {**overrides, **TINY_BY_BUNDLE.get(bundle, TINY)}
            cap = args.max_minutes if variant == "default" or args.baseline_minutes is None else args.baseline_minutes
            print(f"{bundle} / {variant}: training (at most {cap} min) ...", flush=True)
            result = run_variant(bundle, variant, overrides, manifest, out, cap * 60, goal[bundle], args.evaluate and variant == "default")
            print(f"  {result['target']['metric']} best {result['best']} at epoch {result['best_epoch']}; "
                  f"time to target {result['time_to_target_s']} s; wall {result['wall_s']} s", flush=True)
            results.append(result)
    report = {
        "machine": machine_info(),
        "command": command_line(__file__, argv),
        "manifest": manifest,
        "cohort_generation_s": round(cohort_s, 1),
        "targets": goal,
        "results": results,
    }
    write_json(report, args.out)
    print(markdown(results))
    return 0 if all(r["exit_status"] == 0 or r["stopped_at_cap"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
