"""``monai-ms synth``: write a synthetic MS cohort built on the MNI ICBM152 2009c template."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="cohort folder to create (must not exist or be empty)")
    parser.add_argument("--subjects", type=int, required=True, help="number of patients (about 30%% get a second session)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same cohort (default 0)")
    parser.add_argument("--spacing", type=float, default=None, help="T1 voxel size in mm (default 2, 4 with --tiny)")
    parser.add_argument("--layout", choices=("seed", "bids"), default="seed", help="folder layout (default seed)")
    parser.add_argument("--tiny", action="store_true", help="fast test cohort: coarse voxels, fewer and larger lesions")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: up to 2)")
    parser.add_argument("--preview", action="store_true", help="also write preview.png (T1 / T2 / mask slices)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier synthetic cohort in --out")


def run(args: argparse.Namespace) -> int:
    from monai_ms.data.synthetic import generate_cohort
    from monai_ms.data.templates import TemplateNotFoundError

    try:
        summary = generate_cohort(
            args.out,
            subjects=args.subjects,
            seed=args.seed,
            spacing=args.spacing,
            layout=args.layout,
            tiny=args.tiny,
            workers=args.workers,
            preview=args.preview,
            overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError, NotADirectoryError, TemplateNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("\n".join(summary.lines()))
    if args.preview:
        print(f"preview: {summary.out_dir / 'preview.png'}")
    return 0
