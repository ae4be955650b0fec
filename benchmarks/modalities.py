"""Which modalities should lesion_seg read? T1 + T2, T1 + FLAIR and T1 + T2 + FLAIR on the same demo cohort.

Each variant trains the lesion_seg bundle with its defaults and ``--modalities``, on the demo cohort with a FLAIR
per session (``monai_ms.bundle.demo_manifest(flair=True)``: the same T1, T2, masks and split as the T1 + T2 demo
cohort), and evaluates its best checkpoint on the **validation** split (``run evaluating --eval_split
validation``: mean Dice, lesion F1 and their 95% subject-bootstrap intervals). The test split is never read.
Results go to ``benchmarks/results/modalities.json``; ``--tiny`` runs the 4 mm test cohort with one epoch (CI).

    python benchmarks/modalities.py                      # about 35 min on 2 CPU cores
    python benchmarks/modalities.py --variants t1_flair  # one variant
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import REPO, RESULTS, bundle_command, command_line, machine_info  # noqa: E402

VARIANTS = {"t1_t2": ["t1", "t2"], "t1_flair": ["t1", "flair"], "t1_t2_flair": ["t1", "t2", "flair"]}
# --tiny checks the script, not the models: no N4 fits (bias_correction false)
TINY = {"spacing": [4.0, 4.0, 4.0], "patch_size": [32, 32, 32], "patches_per_volume": 2, "epochs": 1, "num_workers": 0,
        "bias_correction": False}


def _run(run_id: str, configs: list[str], overrides: dict, log: Path) -> None:
    command = bundle_command(run_id, [REPO / "bundles" / "lesion_seg" / "configs" / f"{c}.json" for c in configs], overrides)
    with open(log, "w") as out:
        result = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"{run_id} failed (exit {result.returncode}); see {log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--out", default=str(RESULTS / "modalities"), help="folder of the runs")
    parser.add_argument("--tiny", action="store_true", help="4 mm test cohort, one epoch (checks the script, not the models)")
    parser.add_argument("--result", default=None, help="result JSON (default benchmarks/results/modalities.json; --tiny: OUT/result.json)")
    args = parser.parse_args(argv)
    from monai_ms.bundle import demo_manifest

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        manifest = demo_manifest(out / "cohort", subjects=14, spacing=None, seed=1, tiny=True, flair=True)
    else:
        manifest = demo_manifest(REPO / "demo_data", flair=True)
    rows = {}
    for name in args.variants.split(","):
        modalities = VARIANTS[name]
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        overrides = {**(TINY if args.tiny else {}), "modalities": modalities, "data_manifest": str(manifest),
                     "ckpt_dir": str(folder / "models"), "output_dir": str(folder / "eval")}
        start = time.perf_counter()
        print(f"{name}: training (log {folder / 'train.log'})", flush=True)
        _run("training", ["train"], overrides, folder / "train.log")
        minutes = (time.perf_counter() - start) / 60
        _run("evaluating", ["train", "evaluate"], {**overrides, "eval_split": "validation"}, folder / "evaluate.log")
        report = json.loads((folder / "eval" / "metrics.json").read_text())
        summary, interval = report["summary"], report["summary"].get("ci95", {})
        rows[name] = {
            "modalities": modalities,
            "split": report.get("split"),
            "n_scans": summary.get("n_scans"),
            "n_subjects": report.get("uncertainty", {}).get("n_subjects"),
            "mean_dice": summary.get("mean_dice"),
            "mean_dice_ci95": interval.get("mean_dice"),
            "lesion_f1": summary.get("lesion_f1"),
            "lesion_f1_ci95": interval.get("lesion_f1"),
            "training_minutes": round(minutes, 1),
        }
        print(f"{name}: {json.dumps(rows[name])}", flush=True)
    result = Path(args.result) if args.result else (out / "result.json" if args.tiny else RESULTS / "modalities.json")
    result.write_text(json.dumps({"command": command_line(__file__, argv), "machine": machine_info(),
                                  "manifest": str(manifest), "rows": rows}, indent=2) + "\n")
    print(f"-> {result}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
