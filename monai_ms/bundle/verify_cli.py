"""``monai-ms bundle verify``: check a shared bundle (folder or zip) before running it.

Prints one line per check, one ``FAILED:`` line per problem and a verdict; exit status 0 when the
bundle passes, 1 otherwise. With ``--extract-to`` a zip that passes is unpacked there.

Examples:
    monai-ms bundle verify edss_bundle.zip
    monai-ms bundle verify edss_bundle.zip --extract-to shared_models/
    monai-ms bundle verify shared_models/edss
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``monai-ms bundle verify``."""
    parser.add_argument("source", metavar="DIR_OR_ZIP", help="a bundle folder or a zip from monai-ms bundle export")
    parser.add_argument(
        "--extract-to", default=None, metavar="DIR", help="with a zip: unpack the bundle into DIR/<name> if it passes"
    )
    parser.add_argument("--rtol", type=float, default=1e-4, help="TorchScript vs checkpoint relative tolerance")
    parser.add_argument("--atol", type=float, default=1e-5, help="TorchScript vs checkpoint absolute tolerance")


def run(args: argparse.Namespace) -> int:
    """Verify and print the report; 0 if the bundle passes, else 1."""
    from monai_ms.bundle.verify import verify_bundle

    report = verify_bundle(args.source, extract_to=args.extract_to, rtol=args.rtol, atol=args.atol)
    lines = report.format().splitlines()
    # checks on stdout; problems and a failing verdict on stderr
    for line in lines[:-1]:
        print(line, file=sys.stderr if line.startswith("FAILED:") else sys.stdout)
    print(lines[-1], file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1
