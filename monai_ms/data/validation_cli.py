"""``monai-ms manifest validate``: check every file and field of a manifest before training.

Prints what it looked at, one line per problem, one per warning (accepted, e.g. a head that is not
skull-stripped) and a final count; exit status 0 when the manifest has no problem (warnings allowed), 1
otherwise.

Examples:
    monai-ms manifest validate cohort/manifest.json --task edss
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``monai-ms manifest validate``."""
    from monai_ms.data.fields import SPLITS, TASK_KEYS

    parser.add_argument("manifest", metavar="MANIFEST", help="manifest JSON file")
    parser.add_argument("--task", choices=sorted(TASK_KEYS), default=None, help="also require the keys this task needs")
    parser.add_argument(
        "--splits",
        nargs="+",
        choices=SPLITS,
        default=None,
        metavar="SPLIT",
        help="check only these splits (each must be non-empty); default: all",
    )
    parser.add_argument(
        "--refuse-outside-root", action="store_true", help="report image paths outside the manifest's folder"
    )
    parser.add_argument("--headers-only", action="store_true", help="read NIfTI headers only, not the voxel data")
    parser.add_argument("--workers", type=int, default=4, help="threads reading files (default 4)")


def run(args: argparse.Namespace) -> int:
    """Validate and print the report; 0 if no problem, else 1."""
    from monai_ms.data.manifest import ManifestError
    from monai_ms.data.validation import validate_manifest

    try:
        report = validate_manifest(
            args.manifest,
            task=args.task,
            splits=args.splits,
            refuse_outside_root=args.refuse_outside_root,
            check_voxels=not args.headers_only,
            workers=args.workers,
            log_warnings=False,  # printed with the report
        )
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report.format())
    return 0 if report.ok else 1
