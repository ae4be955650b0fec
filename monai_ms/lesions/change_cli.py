"""``monai-ms lesion-change``: new, enlarging, stable, shrinking and resolved lesions between visits."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``monai-ms lesion-change``."""
    from monai_ms.data.fields import SPLITS
    from monai_ms.lesions.matching import ENLARGING_RATIO, MATCH_OVERLAP

    parser.add_argument("manifest", help="manifest JSON (entries need subject, session, scan_date or age, t1, lesion)")
    parser.add_argument("--output_dir", required=True, help="folder of the change tables, maps, QC pictures and records")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), help="manifest splits to read (default: all)")
    parser.add_argument(
        "--masks_dir",
        default=None,
        help="folder of <session>_lesion_mask.nii.gz written by a trained lesion_seg model (bundle inference.json); "
        "default: the manifest's lesion masks",
    )
    parser.add_argument("--no_registration", action="store_true", help="naive baseline: compare the masks in scanner space")
    parser.add_argument("--no_location", action="store_true", help="skip the location class (saves one atlas registration per pair)")
    parser.add_argument("--no_qc", action="store_true", help="do not write the QC pictures")
    parser.add_argument(
        "--overlap", type=float, default=MATCH_OVERLAP, help=f"link rule: shared share of the smaller lesion (default {MATCH_OVERLAP})"
    )
    parser.add_argument(
        "--enlarging_ratio",
        type=float,
        default=ENLARGING_RATIO,
        help=f"volume factor for enlarging/shrinking (default {ENLARGING_RATIO})",
    )
    parser.add_argument("--min_change_mm3", type=float, default=None, help="smallest volume change that counts (default: two voxels)")
    parser.add_argument("--mask_resampling", choices=["nearest", "linear"], default="nearest", help="follow-up mask onto the baseline grid")
    parser.add_argument("--threads", type=int, default=None, help="registration threads (default: all cores)")
    parser.add_argument("--overwrite", action="store_true", help="redo finished pairs")


def run(args: argparse.Namespace) -> int:
    """Run the change pipeline; bad input or failed pairs: one line each on stderr and exit status 1."""
    from monai_ms.data.manifest import ManifestError
    from monai_ms.engines.inference.batch import BatchInferenceError
    from monai_ms.lesions.change import LesionChangePipeline, change_provenance, manifest_entries

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        entries = manifest_entries(args.manifest, args.splits)
        pipeline = LesionChangePipeline(
            entries,
            args.output_dir,
            masks_dir=args.masks_dir,
            register=not args.no_registration,
            location=not args.no_location,
            qc=not args.no_qc,
            overlap=args.overlap,
            enlarging_ratio=args.enlarging_ratio,
            min_change_mm3=args.min_change_mm3,
            threads=args.threads,
            mask_resampling=args.mask_resampling,
            overwrite=args.overwrite,
            provenance=change_provenance(args.manifest, args.splits, args.masks_dir),
        )
        summary = pipeline.run()
    except (ManifestError, ValueError, FileNotFoundError, BatchInferenceError) as error:
        print(f"monai-ms lesion-change: {error}", file=sys.stderr)
        return 1
    pairs = summary[summary["status"] == "ok"]
    print(
        f"{len(pairs)} pairs, {int((summary['status'] == 'unpaired').sum())} unpaired subjects; "
        f"new or enlarging lesions: {int(pairs['n_new_or_enlarging'].sum()) if len(pairs) else 0} "
        f"-> {args.output_dir}/lesion_change.csv"
    )
    return 0
