"""``monai-ms bundle export``: write a trained bundle as one verified zip for a collaborator.

Examples:
    monai-ms bundle export bundles/edss --out edss_bundle.zip
    monai-ms bundle export bundles/edss --out edss_bundle.zip --version 0.2.0 --data-manifest cohort.json \\
        --set 'spacing=[1.5,1.5,1.5]' --changelog "trained on cohort A, 2024 scans"
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["add_arguments", "run", "parse_setting"]


def parse_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a JSON value (a bare word stays a string).

    Raises:
        argparse.ArgumentTypeError: no ``=`` or an empty key.

    Examples:
        >>> parse_setting("roi_size=[32,40,32]")
        ('roi_size', [32, 40, 32])
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (VALUE in JSON), got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``monai-ms bundle export``."""
    parser.add_argument("bundle_dir", metavar="BUNDLE_DIR", help="trained bundle folder, e.g. bundles/edss")
    parser.add_argument("--out", required=True, metavar="FILE.zip", help="the zip to write")
    parser.add_argument(
        "--version", dest="bundle_version", default=None, help="version to export (default: the next patch version)"
    )
    parser.add_argument("--changelog", default=None, help="changelog text of this version (default: a summary)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=parse_setting,
        default=[],
        metavar="KEY=VALUE",
        help="a setting the model was trained with that differs from train.json (the training run's override, "
        "e.g. 'spacing=[4,4,4]'); written into the exported train.json; repeat for several",
    )
    parser.add_argument(
        "--data-manifest", default=None, help="manifest the model was trained on (cohort sizes in the README)"
    )
    parser.add_argument("--ckpt-dir", default=None, help="where training wrote model.pt (default BUNDLE_DIR/models)")
    parser.add_argument(
        "--eval-dir", default=None, help="where evaluation wrote metrics.json (default BUNDLE_DIR/eval)"
    )
    parser.add_argument("--name", default=None, help="bundle folder name inside the zip (default: BUNDLE_DIR's name)")
    parser.add_argument(
        "--no-metrics", action="store_true", help="export without an evaluation (eval_metrics left empty)"
    )
    parser.add_argument("--no-monai-only", action="store_true", help="do not add configs/inference_monai.json")
    parser.add_argument(
        "--onnx", action="store_true",
        help="also write models/model.onnx, checked against the checkpoint with ONNX Runtime (pip install monai-ms[onnx])",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    """Export and print the zip, its version and SHA-256; 0, or 1 with the reason on stderr."""
    import logging

    from monai_ms.bundle.export import ExportError, export_bundle
    from monai_ms.data.manifest import ManifestError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("monai.bundle.scripts").setLevel(logging.WARNING)  # ckpt_export's input summary is noise here
    try:
        result = export_bundle(
            args.bundle_dir,
            args.out,
            version=args.bundle_version,
            changelog=args.changelog,
            overrides=dict(args.overrides),
            data_manifest=args.data_manifest,
            ckpt_dir=args.ckpt_dir,
            eval_dir=args.eval_dir,
            require_metrics=not args.no_metrics,
            overwrite=args.overwrite,
            name=args.name,
            monai_only=not args.no_monai_only,
            onnx=args.onnx,
        )
    except (ExportError, FileExistsError, ManifestError) as error:
        print(f"monai-ms bundle export: error: {error}", file=sys.stderr)
        return 1
    for line in result.checks:
        print(f"ok: {line}")
    print(f"wrote {result.path} ({len(result.files)} files): bundle {result.name} version {result.version}")
    print(f"sha256 {result.sha256}  {result.path.name}")
    print("give the recipient this SHA-256 by another channel than the zip itself")
    return 0
