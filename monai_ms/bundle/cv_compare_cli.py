"""``monai-ms cv-compare``: two cross-validation runs of one task on the same sessions, paired.

The second run's pooled metric minus the first's, with the 95% interval of the difference from one set of
subject-bootstrap resamples shared by both (:func:`monai_ms.bundle.cross_validation.compare_runs`). This is
how a design variant is chosen on cross-validation: the two runs' own intervals overlap almost always, the
paired interval of their difference need not.

Examples:
    monai-ms cv bundles/sex --data_manifest cohort.json --folds 5 --inner_validation 0.2 --out cv/sex
    monai-ms cv bundles/sex --data_manifest cohort.json --folds 5 --inner_validation 0.2 --out cv/sex_all4 \
        --set linear_start_leading_features=null
    monai-ms cv-compare cv/sex cv/sex_all4 --out cv/sex_all4_vs_default.json
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["add_arguments", "run", "add_comparison_arguments", "run_comparison"]


def add_comparison_arguments(parser: argparse.ArgumentParser, first: str, second: str) -> None:
    """The arguments of a paired comparison command (``cv-compare``, ``compare-eval``): two folders, with their help."""
    parser.add_argument("first", metavar="FIRST", help=first)
    parser.add_argument("second", metavar="SECOND", help=second)
    parser.add_argument("--out", default=None, help="also write the comparison to this JSON file")
    parser.add_argument("--resamples", type=int, default=1000, help="subject-bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="resampling seed (default 0)")


def run_comparison(args: argparse.Namespace, compare: Callable[..., dict[str, Any]]) -> int:
    """Print one line: the two values, the difference and its interval, the verdict; ``--out``: the JSON. Returns 0."""
    from monai_ms.bundle.compare import comparison_line
    from monai_ms.io import write_json

    result = compare(args.first, args.second, n_resamples=args.resamples, seed=args.seed)
    print(comparison_line(result))
    if args.out:
        write_json(result, args.out)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``monai-ms cv-compare``."""
    add_comparison_arguments(
        parser,
        "output folder of one monai-ms cv run (e.g. the default)",
        "output folder of another run on the same sessions (e.g. a variant)",
    )


def run(args: argparse.Namespace) -> int:
    """Compare the two runs (:func:`monai_ms.bundle.cross_validation.compare_runs`)."""
    from monai_ms.bundle.cross_validation import compare_runs

    return run_comparison(args, compare_runs)
