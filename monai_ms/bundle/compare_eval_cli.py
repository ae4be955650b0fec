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

from monai_ms.bundle.cv_compare_cli import add_comparison_arguments, run_comparison

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``monai-ms compare-eval``."""
    add_comparison_arguments(
        parser,
        "an evaluation output folder (metrics.json and its table), e.g. the default's",
        "another model's evaluation of the same split, e.g. a variant's",
    )


def run(args: argparse.Namespace) -> int:
    """Compare the two evaluations (:func:`monai_ms.bundle.compare.compare_evaluations`)."""
    from monai_ms.bundle.compare import compare_evaluations

    return run_comparison(args, compare_evaluations)
