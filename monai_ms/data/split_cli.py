"""``monai-ms manifest split``: pool a manifest's entries and split them again by subject.

Examples:
    monai-ms manifest split cohort/manifest.json --out cohort/manifest_5fold.json --folds 5 --seed 1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "run", "add_split_arguments", "split_kwargs", "describe_split"]


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--val --test --folds --seed --stratify`` (shared with ``manifest build``)."""
    group = parser.add_argument_group("split (by subject)")
    group.add_argument("--val", type=float, default=0.15, help="share of subjects for validation (default 0.15)")
    group.add_argument("--test", type=float, default=0.15, help="share of subjects for testing (default 0.15; 0: none)")
    group.add_argument("--folds", type=int, default=None, help="K cross-validation folds of the non-test subjects")
    group.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    group.add_argument(
        "--stratify", default="sex,edss", help="comma-separated keys among sex,edss, or 'none' (default sex,edss)"
    )


def split_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``split_entries`` from the parsed split arguments."""
    stratify = (
        ()
        if args.stratify.strip().lower() in ("", "none")
        else tuple(key.strip() for key in args.stratify.split(",") if key.strip())
    )
    return {
        "val_fraction": args.val,
        "test_fraction": args.test,
        "folds": args.folds,
        "seed": args.seed,
        "stratify": stratify,
    }


def describe_split(split: Mapping[str, Any]) -> list[str]:
    """Lines describing a split result (sizes per split, stratification used, any fallback)."""
    from monai_ms.data.fields import SPLITS

    info = split["split"]
    used = "+".join(info["stratified_by"]) or "none"
    lines = [
        f"split: seed {info['seed']}, stratified by {used}"
        + (f", {info['folds']} folds (validation = fold 0)" if info["folds"] else "")
    ]
    for name in SPLITS:
        strata = info["strata"][name]
        sexes = ", ".join(f"{k} {v}" for k, v in strata["sex"].items())
        sessions, subjects = info["sessions"][name], info["subjects"][name]
        lines.append(
            f"  {name}: {sessions} session{'s' * (sessions != 1)}, {subjects} subject{'s' * (subjects != 1)}"
            + (f" ({sexes})" if sexes else "")
        )
    if info.get("note"):
        lines.append(f"  note: {info['note']}")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``monai-ms manifest split``."""
    parser.add_argument("manifest", metavar="MANIFEST", help="manifest to re-split (all its entries are pooled)")
    parser.add_argument("--out", required=True, help="new manifest file (never the input)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--name", default=None, help="cohort name (default: the input's)")
    add_split_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Re-split; print the split; write ``--out``. Returns 0, or 1 with a message on stderr."""
    from monai_ms.data.fields import SPLITS
    from monai_ms.data.manifest import ManifestError, new_manifest, read_manifest, rebase_paths, write_manifest
    from monai_ms.data.split import split_entries

    source, out = Path(args.manifest), Path(args.out)
    try:
        manifest = read_manifest(source)
        pooled = [entry for name in SPLITS for entry in manifest[name]]
        # relative paths are relative to the manifest's folder: keep them right if --out is elsewhere
        pooled = rebase_paths(pooled, source.absolute().parent, out.absolute().parent)
        split = split_entries(pooled, **split_kwargs(args))
        new = new_manifest(
            split, name=args.name or manifest.get("name", source.stem), description=manifest.get("description", "")
        )
        write_manifest(new, out, overwrite=args.overwrite, inputs=[source])
    except (ManifestError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("\n".join(describe_split(split)))
    print(f"wrote {out} ({len(pooled)} sessions); check it with: monai-ms manifest validate {out}")
    return 0
