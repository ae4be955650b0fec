"""``monai-ms explain``: saliency maps of a trained bundle, by running its ``explain.json`` config.

The command is a thin layer over ``python -m monai.bundle run explaining --config_file
"['BUNDLE/configs/train.json','BUNDLE/configs/explain.json']"``: one code path, the same outputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "run", "bundle_configs"]

# command-line option -> config key of explain.json (or train.json)
_OVERRIDES = {
    "manifest": "data_manifest",
    "method": "explain_method",
    "split": "explain_split",
    "output_dir": "explain_dir",
    "checkpoint": "explain_checkpoint",
    "level": "explain_level",
    "mask_size": "occlusion_mask_size",
    "overlap": "occlusion_overlap",
    "device": "device",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``explain`` arguments to ``parser``."""
    from monai_ms.data.fields import SPLITS
    from monai_ms.engines.inference.saliency import METHODS

    parser.add_argument("bundle", help="bundle folder (e.g. bundles/edss) or the name of one under ./bundles")
    parser.add_argument("--manifest", help="cohort manifest (default: the bundle's demo cohort)")
    parser.add_argument("--method", choices=METHODS, help="saliency method (default gradcam; occlusion was ~15x slower on the EDSS demo)")
    parser.add_argument("--split", choices=SPLITS, help="manifest split to explain (default testing)")
    parser.add_argument("--output-dir", dest="output_dir", help="output folder (default BUNDLE/eval/explain)")
    parser.add_argument("--checkpoint", help="model weights (default BUNDLE/models/model.pt)")
    parser.add_argument(
        "--level",
        type=int,
        help="encoder level of the CAM methods, 0 the finest, -1 the last (default: the bundle's, 0 for edss, -1 otherwise)",
    )
    parser.add_argument("--mask-size", dest="mask_size", type=int, help="occlusion: occluder size in voxels (default 24)")
    parser.add_argument("--overlap", type=float, help="occlusion: overlap of occluder positions in [0, 1) (default 0.5)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda:0 when available)")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other config override, VALUE as JSON (e.g. --set 'roi_size=[64,80,64]'); repeatable",
    )


def bundle_configs(bundle: str | Path) -> list[str]:
    """The config files of ``explaining``: ``[train.json, explain.json]`` of the bundle folder.

    Args:
        bundle: a bundle folder, or a name under ``./bundles``.

    Raises:
        FileNotFoundError: no such bundle, or it has no ``configs/explain.json``.
    """
    folder = Path(bundle)
    if not folder.is_dir() and (Path("bundles") / folder).is_dir():
        folder = Path("bundles") / folder
    configs = [folder / "configs" / "train.json", folder / "configs" / "explain.json"]
    missing = [str(c) for c in configs if not c.is_file()]
    if missing:
        raise FileNotFoundError(f"{bundle}: not a bundle with saliency maps (missing {', '.join(missing)})")
    return [str(c.resolve()) for c in configs]


def run(args: argparse.Namespace) -> int:
    """Run the bundle's ``explaining`` workflow; returns 0, or 1 with the problem on stderr."""
    from monai.bundle import run as run_bundle

    from monai_ms.bundle.verify import ChecksumError
    from monai_ms.data.manifest import ManifestError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides: dict[str, Any] = {}
    for option, key in _OVERRIDES.items():
        value = getattr(args, option, None)
        if value is not None:
            overrides[key] = str(Path(value).resolve()) if option in ("manifest", "output_dir", "checkpoint") else value
    user_errors = (FileNotFoundError, ManifestError, ChecksumError, ValueError)
    try:
        overrides.update(_parse_settings(args.settings))
        configs = bundle_configs(args.bundle)
        run_bundle("explaining", config_file=configs, **overrides)
    except (*user_errors, RuntimeError) as error:
        # MONAI wraps an error raised inside a config expression in "RuntimeError: Failed to evaluate ..."
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, user_errors):
            cause = cause.__cause__
        if cause is None:
            raise
        print(f"monai-ms explain: {cause}", file=sys.stderr)
        return 1
    return 0


def _parse_settings(settings: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> overrides; VALUE is read as JSON, or kept as a string when it is not JSON."""
    parsed: dict[str, Any] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set needs KEY=VALUE, got {setting!r}")
        try:
            parsed[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key.strip()] = value
    return parsed
