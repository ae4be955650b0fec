"""``monai-ms`` command line: a thin layer over the package's APIs.

Each sub-command lives in the module that owns the work and exposes two functions:
``add_arguments(parser)`` and ``run(args) -> int`` (the exit status). Modules are imported only
when their command runs, so ``monai-ms --help`` stays fast (no torch import).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from monai_ms.errors import UserError

__all__ = ["main", "COMMANDS"]

# command path -> (module, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("synth",): ("monai_ms.data.synthetic_cli", "write a synthetic MS cohort built on the MNI ICBM152 2009c template"),
    ("manifest", "build"): ("monai_ms.data.manifest_cli", "build a manifest from a metadata CSV or a BIDS folder"),
    ("manifest", "validate"): ("monai_ms.data.validation_cli", "check every file and field of a manifest"),
    ("manifest", "split"): ("monai_ms.data.split_cli", "subject-level stratified train/validation/test split and folds"),
    ("summary",): ("monai_ms.networks.summary", "print a torchinfo summary of a bundle's network"),
    ("bundle", "export"): ("monai_ms.bundle.export_cli", "write a trained bundle as one verified zip for collaborators"),
    ("bundle", "verify"): ("monai_ms.bundle.verify_cli", "check a bundle folder or zip: metadata, checksums, network, TorchScript"),
    ("explain",): (
        "monai_ms.bundle.explain_cli",
        "saliency maps of a trained bundle (Grad-CAM, occlusion) in each scan's T1 space",
    ),
    ("report",): ("monai_ms.report.report_cli", "one self-contained HTML page of an evaluation or inference run folder"),
    ("lesion-change",): (
        "monai_ms.lesions.change_cli",
        "new, enlarging and resolved lesions between visits (registered pairs), with their location class",
    ),
    ("cv",): (
        "monai_ms.bundle.cv_cli",
        "K-fold cross-validation of a bundle on the manifest's subject-grouped folds (never the test split)",
    ),
    ("cv-compare",): (
        "monai_ms.bundle.cv_compare_cli",
        "two cross-validation runs of one task on the same sessions: the paired difference and its interval",
    ),
    ("compare-eval",): (
        "monai_ms.bundle.compare_eval_cli",
        "two evaluations of one split by two models of one task: the paired difference and its interval",
    ),
}

GROUP_HELP = {
    "manifest": "build, validate and split cohort manifests",
    "bundle": "export a trained bundle and verify a shared one",
}


def _build_parser() -> argparse.ArgumentParser:
    from monai_ms import __version__

    parser = argparse.ArgumentParser(prog="monai-ms", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"monai-ms {__version__}")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for path, (_, help_text) in COMMANDS.items():
        subparsers = top
        for group in path[:-1]:
            if group not in groups:
                group_parser = top.add_parser(group, help=GROUP_HELP.get(group, ""))
                groups[group] = group_parser.add_subparsers(dest=f"{group}_command", required=True, metavar="VERB")
            subparsers = groups[group]
        subparsers.add_parser(path[-1], help=help_text, description=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    path = next((p for p in COMMANDS if tuple(argv[: len(p)]) == p), None)
    if path is not None:
        # only the chosen command's module is imported, to add its own arguments
        module = importlib.import_module(COMMANDS[path][0])
        module.add_arguments(_find_subparser(parser, path))
    args = parser.parse_args(argv)
    try:
        return int(module.run(args) or 0)
    except UserError as error:  # the one error policy (monai_ms.errors): a line on stderr, exit status 1
        print(f"monai-ms {' '.join(path or ())}: {error}", file=sys.stderr)
        return 1


def _find_subparser(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


if __name__ == "__main__":
    sys.exit(main())
