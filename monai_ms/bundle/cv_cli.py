"""``monai-ms cv``: K-fold cross-validation of a bundle on the subject-grouped folds of a manifest.

Each fold is trained with ``python -m monai.bundle run training`` and its held-out part evaluated with
``run evaluating --eval_split validation``; per-fold, pooled and mean +- SD metrics go to ``OUT/cv.json``
and ``OUT/cv.md``. The manifest's test split is never read. A rerun skips finished folds.
``--inner_validation F`` chooses each fold's epoch on F of its training subjects instead of on the held-out fold.

Examples:
    monai-ms cv bundles/brain_age --data_manifest demo_data/v2/manifest.json --folds 5
    monai-ms cv bundles/brain_age --data_manifest demo_data/v2/manifest.json --folds 5 --inner_validation 0.2 \
        --out bundles/brain_age/runs/cv_5fold_inner
    monai-ms cv bundles/sex --data_manifest cohort.json --folds 5 --out bundles/sex/runs/cv_no_histogram --set histogram_bins=0
    monai-ms cv bundles/lesion_seg --data_manifest demo_data/v2/manifest.json --folds 5 --out cv/lesion_seg
    monai-ms cv bundles/edss --data_manifest demo_data/v2/manifest.json --folds 5 \
        --set lesion_init=cv/lesion_seg/fold_{fold}/models/model.pt
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``monai-ms cv``."""
    from monai_ms.bundle.export_cli import parse_setting

    parser.add_argument("bundle", metavar="BUNDLE", help="bundle folder, e.g. bundles/brain_age")
    parser.add_argument("--data_manifest", "--data-manifest", required=True, help="cohort manifest (its folds are used)")
    parser.add_argument("--folds", type=int, required=True, help="number of folds K (the manifest's, or made from training+validation)")
    parser.add_argument(
        "--out", default=None, help="output folder (default BUNDLE/runs/cv_<K>fold; one folder per design variant)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the subject-level fold split when the manifest has no folds (default 0)"
    )
    parser.add_argument(
        "--inner_validation",
        "--inner-validation",
        type=float,
        default=0.0,
        metavar="F",
        help="choose the epoch (early stopping, best checkpoint) on F of the training folds' subjects instead of "
        "on the held-out fold (default 0: the held-out fold is the validation split)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=parse_setting,
        default=[],
        metavar="KEY=VALUE",
        help="a bundle config override for every fold (VALUE in JSON, e.g. 'epochs=20'; {fold} in a string "
        "becomes the fold number); repeat for several",
    )


def run(args: argparse.Namespace) -> int:
    """Run the folds; print where the results are. Returns 0, or 1 with one line on stderr."""
    from pathlib import Path

    from monai_ms.bundle.cross_validation import CrossValidationError, markdown_table, run_cross_validation
    from monai_ms.data.manifest import ManifestError

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    out = args.out or str(Path(args.bundle) / "runs" / f"cv_{args.folds}fold")
    overrides = dict(args.overrides)
    command = "monai-ms " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["cv"] else None
    try:
        summary = run_cross_validation(
            args.bundle,
            args.data_manifest,
            args.folds,
            out,
            overrides=overrides,
            seed=args.seed,
            command=command,
            inner_validation=args.inner_validation,
        )
    except (CrossValidationError, ManifestError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(markdown_table(summary), end="")
    return 0
