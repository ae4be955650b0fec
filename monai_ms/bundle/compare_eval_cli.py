"""``monai-ms compare-eval``: two evaluations of one split by two models of one task, paired.

The second evaluation's metric minus the first's, with the 95% interval of the difference from one set of
subject-bootstrap resamples shared by both (:func:`monai_ms.bundle.compare.compare_evaluations`). Both folders
must be ``run evaluating`` outputs of the same split of the same manifest (their ``metrics.json`` provenance
says so). Use it to choose a design on a validation split; a test split is scored once, after the choice.

Examples:
    python -m monai.bundle run evaluating \\
        --config_file "['bundles/lesion_seg/configs/train.json','bundles/lesion_seg/configs/evaluate.json']" \\
        --data_manifest cohort.json --ckpt_dir runs/default/models --eval_split validation --output_dir eval/default
    (the same for runs/variant into eval/variant)
    monai-ms compare-eval eval/default eval/variant --out eval/variant_vs_default.json
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``monai-ms compare-eval``."""
    parser.add_argument("first", metavar="FIRST", help="an evaluation output folder (metrics.json and its table), e.g. the default's")
    parser.add_argument("second", metavar="SECOND", help="another model's evaluation of the same split, e.g. a variant's")
    parser.add_argument("--out", default=None, help="also write the comparison to this JSON file")
    parser.add_argument("--resamples", type=int, default=1000, help="subject-bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="resampling seed (default 0)")


def run(args: argparse.Namespace) -> int:
    """Print one line: the two values, the difference and its interval, the verdict. Returns 0."""
    from monai_ms.bundle.compare import compare_evaluations, comparison_line
    from monai_ms.io import write_json

    result = compare_evaluations(args.first, args.second, n_resamples=args.resamples, seed=args.seed)
    print(comparison_line(result))
    if args.out:
        write_json(result, args.out)
    return 0
