"""``monai-ms report``: one self-contained HTML page of an evaluation or inference run folder.

Examples:
    monai-ms report bundles/lesion_seg/eval/inference
    monai-ms report bundles/sex/eval --out sex_test_report.html
"""

from __future__ import annotations

import argparse
import shlex
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``monai-ms report``."""
    parser.add_argument(
        "run_dir", metavar="RUN_DIR", help="folder an evaluation or inference run wrote (metrics.json, CSV tables, PNGs, qc/)"
    )
    parser.add_argument("--out", default=None, metavar="FILE.html", help="the page to write (default RUN_DIR/report.html)")
    parser.add_argument("--title", default=None, help="page title (default: RUN_DIR)")
    parser.add_argument("--no-overwrite", action="store_true", help="refuse to replace an existing page")


def run(args: argparse.Namespace) -> int:
    """Write the page and print its path; 1 with one line on stderr when the folder cannot be read."""
    from monai_ms.report.html import ReportError, write_report

    command = "monai-ms " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["report"] else None
    try:
        path = write_report(args.run_dir, args.out, title=args.title, command=command, overwrite=not args.no_overwrite)
    except (ReportError, FileExistsError) as error:
        print(f"monai-ms report: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, self-contained)")
    return 0
