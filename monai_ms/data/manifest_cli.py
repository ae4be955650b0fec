"""``monai-ms manifest build``: metadata table (or BIDS folder) + images -> split, checked manifest.

Builds one entry per scan session, splits by subject, validates every file (unless ``--no-check``) and
writes the manifest only when nothing is wrong.

Examples:
    monai-ms manifest build --csv cohort/metadata.csv --out cohort/manifest.json --folds 5
    monai-ms manifest build --bids cohort_bids --out cohort_bids/manifest.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from monai_ms.data.split_cli import add_split_arguments, describe_split, split_kwargs

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``monai-ms manifest build``."""
    import inspect

    from monai_ms.data.fields import TASK_KEYS
    from monai_ms.data.manifest import DEFAULT_COLUMNS, build_from_csv

    source = parser.add_argument_group("source (one of)").add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", metavar="TABLE", help="metadata table (.csv or .tsv), one row per scan session")
    source.add_argument("--bids", metavar="DIR", help="BIDS dataset folder")
    table = parser.add_argument_group("metadata table (--csv)")
    table.add_argument("--image-root", default=None, help="folder the patterns are relative to (default: the table's)")
    defaults = inspect.signature(build_from_csv).parameters
    for key, note in (
        ("t1", ""),
        ("t2", "; 'none' for none"),
        ("lesion", " (where the file exists); 'none' for none"),
        ("tissue", " (where the file exists); 'none' for none"),
        ("flair", " (FLAIR); none by default"),
        ("pd", " (proton density); none by default"),
        ("t1ce", " (contrast-enhanced T1); none by default"),
    ):
        default = defaults[f"{key}_pattern"].default
        table.add_argument(f"--{key}-pattern", default=default, help=f"{key} path pattern{note} (default {default})")
    table.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="KEY=COLUMN",
        help="table column of a manifest key, repeatable; KEY= ignores the key. Defaults: "
        + ", ".join(f"{k}={v}" for k, v in DEFAULT_COLUMNS.items()),
    )
    parser.add_argument(
        "--new-scans",
        action="store_true",
        help="scans to predict on: no split, every session under 'testing' (what the bundles' inference reads)",
    )
    parser.add_argument("--out", required=True, help="manifest file to write (image paths relative to its folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out (never an input file)")
    parser.add_argument("--name", default=None, help="cohort name (default: the source folder's name)")
    parser.add_argument("--description", default="", help="free-text description")
    add_split_arguments(parser)
    check = parser.add_argument_group("checks")
    check.add_argument("--task", choices=sorted(TASK_KEYS), default=None, help="also require the keys this task needs")
    check.add_argument("--no-check", action="store_true", help="write without validating the files")
    check.add_argument("--headers-only", action="store_true", help="read NIfTI headers only, not the voxel data")
    check.add_argument("--refuse-outside-root", action="store_true", help="report images outside the --out folder")
    check.add_argument("--workers", type=int, default=4, help="threads reading files (default 4)")


def _columns(pairs: list[str]) -> dict[str, str | None]:
    from monai_ms.data.manifest import ManifestError

    columns: dict[str, str | None] = {}
    for pair in pairs:
        key, sep, column = pair.partition("=")
        if not sep or not key.strip():
            raise ManifestError(f"--column must be KEY=COLUMN (e.g. subject=Patient_ID), got {pair!r}")
        columns[key.strip()] = column.strip() or None
    return columns


def _pattern(value: str | None) -> str | None:
    return None if value is None or value.strip().lower() in ("", "none") else value


def run(args: argparse.Namespace) -> int:
    """Build, split, validate, write; 0 on success, 1 with the reasons otherwise (nothing written)."""
    from monai_ms.data.fields import IMAGE_KEYS
    from monai_ms.data.manifest import (
        ManifestError,
        build_from_bids,
        build_from_csv,
        new_manifest,
        resolve_path,
        write_manifest,
    )
    from monai_ms.data.split import split_entries
    from monai_ms.data.validation import validate_manifest

    out = Path(args.out)
    out_dir = out.absolute().parent
    table_problems: list[dict] = []  # bad rows: reported with the file checks, in one pass
    try:
        if out.exists() and not args.overwrite:
            raise FileExistsError(f"{out}: already exists; refusing to overwrite it (pass --overwrite)")
        if args.csv:
            source = Path(args.csv)
            inputs = [source]
            entries = build_from_csv(
                source,
                image_root=args.image_root,
                t1_pattern=args.t1_pattern,
                t2_pattern=_pattern(args.t2_pattern),
                lesion_pattern=_pattern(args.lesion_pattern),
                tissue_pattern=_pattern(args.tissue_pattern),
                flair_pattern=_pattern(args.flair_pattern),
                pd_pattern=_pattern(args.pd_pattern),
                t1ce_pattern=_pattern(args.t1ce_pattern),
                columns=_columns(args.column),
                relative_to=out_dir,
                problems=table_problems,
            )
            name = args.name or source.absolute().parent.name
        else:
            source = Path(args.bids)
            inputs = [source / "participants.tsv", *source.glob("sub-*/sub-*_sessions.tsv")]
            entries = build_from_bids(source, relative_to=out_dir, problems=table_problems)
            name = args.name or source.absolute().name
        inputs += [resolve_path(e[key], out_dir) for e in entries for key in IMAGE_KEYS if key in e]
        print(f"built {len(entries)} sessions of {len({e['subject'] for e in entries})} subjects from {source}")
        for key in ("lesion", "age", "sex", "edss"):
            lacking = sum(key not in e for e in entries)
            if lacking:
                print(f"  {lacking} of {len(entries)} sessions have no {key}")
        if args.new_scans:
            split = {"training": [], "validation": [], "testing": entries, "split": {"note": "new scans, not split"}}
            print(f"new scans: all {len(entries)} sessions under 'testing'")
        else:
            split = split_entries(entries, **split_kwargs(args))
            print("\n".join(describe_split(split)))
        manifest = new_manifest(split, name=name, description=args.description)
        for problem in table_problems:
            print(problem["line"])
        if not args.no_check:
            report = validate_manifest(
                manifest,
                task=args.task,
                refuse_outside_root=args.refuse_outside_root,
                check_voxels=not args.headers_only,
                workers=args.workers,
                base_dir=out_dir,
                source=str(out),
                log_warnings=False,
            )
            _drop_effects_of_table_problems(report, table_problems)
            print(report.format())
            if not report.ok or table_problems:
                table = f"{len(table_problems)} table problem(s) and " if table_problems else ""
                print(
                    f"nothing written: fix the {table}{len(report.problems)} manifest problem(s) above"
                    + ("" if table_problems else f" (or pass --no-check to write {out} anyway)")
                )
                return 1
        elif table_problems:
            print(f"nothing written: fix the {len(table_problems)} table problem(s) above")
            return 1
        write_manifest(manifest, out, overwrite=args.overwrite, inputs=inputs)
    except (ManifestError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def _drop_effects_of_table_problems(report, table_problems: list[dict]) -> None:
    """Cause first: a value the table got wrong is not reported again as a key missing from its entry."""
    invalid = {(p["session"], key) for p in table_problems for key in p["keys"]}
    report.problems = [
        p
        for p in report.problems
        if not (
            p.kind == "field"
            and any(p.message.startswith(f"missing key {key}") for session, key in invalid if session == p.session)
        )
    ]
