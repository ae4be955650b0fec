"""``monai-ms synth``: write a synthetic MS cohort built on the MNI ICBM152 2009c template.

Usage:
    monai-ms synth --out DIR --subjects N [--seed S] [--spacing MM] [--layout seed|bids] [--tiny]
                   [--workers W] [--preview] [--overwrite] [--settings FILE.json] [--shift NAME ...]
    monai-ms synth --show-settings [--settings FILE.json] [--shift NAME ...]

``--settings`` reads generator settings (a partial JSON object of ``SynthSettings`` groups and fields;
the rest keep their defaults); ``--shift`` applies a named scanner shift on top (repeatable, in order).
``--show-settings`` prints the resulting settings as JSON and writes nothing.
"""

from __future__ import annotations

import argparse
import sys

from monai_ms.data.synthetic_settings import SHIFTS

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``synth`` options to ``parser``.

    Args:
        parser: the sub-command's parser.
    """
    parser.add_argument("--out", help="output folder (must not exist or be empty); required unless --show-settings")
    parser.add_argument(
        "--subjects", type=int, help="number of subjects (about 1.3 sessions each); required unless --show-settings"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--spacing", type=float, default=None, help="T1 voxel size in mm (default 2, or 4 with --tiny)")
    parser.add_argument("--layout", choices=("seed", "bids"), default="seed", help="folder layout (default seed)")
    parser.add_argument("--tiny", action="store_true", help="small fast cohort for tests: 4 mm, fewer lesions")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default min(2, cpu count))")
    parser.add_argument("--preview", action="store_true", help="also write preview.png (a montage of a few sessions)")
    parser.add_argument(
        "--modalities",
        default="t1,t2",
        help="intensity images to write, comma-separated, T1 first: t1, t2, flair (default t1,t2); the FLAIR is "
        "CSF-suppressed with bright lesions on its own thick-slice grid, and adding it changes no other file",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it holds an earlier synthetic cohort (never other data)",
    )
    parser.add_argument(
        "--settings",
        metavar="FILE.json",
        help="generator settings: a JSON object of SynthSettings groups and fields (partial; the rest keep their "
        "defaults), e.g. {\"acquisition\": {\"bias_sd\": 0.25}}",
    )
    parser.add_argument(
        "--shift",
        action="append",
        choices=tuple(SHIFTS),
        default=[],
        metavar="NAME",
        help=f"apply a named scanner shift on top of the settings (repeatable): {', '.join(SHIFTS)}",
    )
    parser.add_argument(
        "--show-settings", action="store_true", help="print the resulting generator settings as JSON and exit"
    )


def run(args: argparse.Namespace) -> int:
    """Generate the cohort and print a short summary.

    Args:
        args: parsed options (see :func:`add_arguments`).

    Returns:
        0 on success, 1 on a refused or failed run (the reason is printed to stderr), 130 when
        interrupted (Ctrl-C).
    """
    from monai_ms.data.synthetic import generate_cohort
    from monai_ms.data.synthetic_settings import SynthSettings
    from monai_ms.data.templates import TemplateNotFoundError

    try:
        settings = SynthSettings.from_json(args.settings) if args.settings else SynthSettings()
        settings = settings.shifted(*args.shift)
    except (ValueError, OSError) as error:
        print(f"monai-ms synth: error: {error}", file=sys.stderr)
        return 1
    if args.show_settings:
        print(settings.to_json(), end="")
        return 0
    missing = [option for option, value in (("--out", args.out), ("--subjects", args.subjects)) if value is None]
    if missing:
        print(f"monai-ms synth: error: the following arguments are required: {', '.join(missing)}", file=sys.stderr)
        return 2
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
            settings=settings,
            modalities=[m.strip() for m in args.modalities.split(",") if m.strip()],
        )
    except (ValueError, OSError, TemplateNotFoundError) as error:
        print(f"monai-ms synth: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # generate_cohort has removed its partial folder by now
        print(f"monai-ms synth: interrupted; nothing was written to {args.out}", file=sys.stderr)
        return 130
    for line in summary.lines():
        print(line)
    if args.preview:
        print(f"preview: {summary.out_dir / 'preview.png'}")
    return 0
