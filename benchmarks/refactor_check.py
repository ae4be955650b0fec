"""Did a change keep every bundle's results? Train and evaluate each bundle on the tiny cohort at two revisions.

A refactor (moving code between modules, config logic into named steps) must not change what the bundles
compute. This script checks out ``--base`` (default ``HEAD``) into a temporary git worktree, then, for each
bundle and for both trees (the base and the working tree), runs ``training`` (tiny settings, seeded) and
``evaluating`` on the same 4 mm test cohort with that tree's code (``PYTHONPATH``) and configs, and compares
the two ``metrics.json`` files number by number (provenance, file paths and times left out). Training is
deterministic on the CPU with the default workers (``tests/engines/test_determinism.py``), so any difference is a
change in behaviour.

    python benchmarks/refactor_check.py --base 41f40e0            # all four bundles, about 6 min on 2 cores
    python benchmarks/refactor_check.py --base HEAD --bundles sex  # one bundle

Exit status 0 when every bundle's metrics agree (to ``--tolerance``), 1 otherwise; the differences are printed
and written to ``--out``/result.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import REPO, RESULTS, bundle_command, command_line  # noqa: E402

TINY = {"spacing": [4.0, 4.0, 4.0], "epochs": 1, "batch_size": 2, "num_workers": 0}
SETTINGS = {
    "lesion_seg": {**TINY, "patch_size": [32, 32, 32], "patches_per_volume": 2},
    "brain_age": {**TINY, "roi_size": [32, 40, 32]},
    "sex": {**TINY, "roi_size": [32, 40, 32]},
    "edss": {**TINY, "roi_size": [32, 40, 32], "lesion_init": ""},
}
SKIPPED_KEYS = {"provenance", "created_utc", "seconds", "wall_clock"}


def numbers(report: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a metrics report to ``{"a.b.c": value}`` for numbers, strings and booleans (provenance left out)."""
    flat: dict[str, Any] = {}
    if isinstance(report, dict):
        for key, value in report.items():
            if key not in SKIPPED_KEYS:
                flat.update(numbers(value, f"{prefix}{key}."))
    elif isinstance(report, list):
        for index, value in enumerate(report):
            flat.update(numbers(value, f"{prefix}{index}."))
    else:
        flat[prefix.rstrip(".")] = report
    return flat


def differences(before: dict, after: dict, tolerance: float) -> list[str]:
    """Lines naming each key whose value differs (numbers: by more than ``tolerance``, relative and absolute)."""
    a, b = numbers(before), numbers(after)
    lines = [f"{key}: only {'before' if key in a else 'after'}" for key in sorted(set(a) ^ set(b))]
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            same = (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=tolerance, abs_tol=tolerance)
        else:
            same = x == y
        if not same:
            lines.append(f"{key}: {x!r} -> {y!r}")
    return lines


def _run(tree: Path, bundle: str, run_id: str, configs: list[str], overrides: dict, log: Path) -> None:
    command = bundle_command(run_id, [tree / "bundles" / bundle / "configs" / f"{c}.json" for c in configs], overrides)
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONWARNINGS": "ignore"}
    with open(log, "w") as out:
        result = subprocess.run(command, cwd=tree, stdout=out, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{bundle} {run_id} in {tree} failed (exit {result.returncode}); see {log}")


def bundle_metrics(tree: Path, bundle: str, manifest: str, folder: Path) -> dict:
    """Train and evaluate ``bundle`` of ``tree`` into ``folder``; return its ``metrics.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    overrides = {**SETTINGS[bundle], "data_manifest": manifest, "ckpt_dir": str(folder / "models"), "output_dir": str(folder / "eval")}
    _run(tree, bundle, "training", ["train"], overrides, folder / "train.log")
    _run(tree, bundle, "evaluating", ["train", "evaluate"], overrides, folder / "evaluate.log")
    return json.loads((folder / "eval" / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="HEAD", help="git revision to compare the working tree with (default HEAD)")
    parser.add_argument("--bundles", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--out", default=str(RESULTS / "refactor_check"), help="folder of the runs and result.json")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="relative and absolute tolerance of numbers")
    parser.add_argument("--manifest", default=None, help="cohort manifest (default: the 4 mm test cohort, generated once)")
    args = parser.parse_args(argv)
    from monai_ms.bundle import demo_manifest

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = args.manifest or demo_manifest(out / "cohort", subjects=14, spacing=None, seed=1, tiny=True)
    report: dict[str, Any] = {"command": command_line(__file__, argv), "base": args.base, "bundles": {}}
    with tempfile.TemporaryDirectory(prefix="refactor_check_") as scratch:
        base = Path(scratch) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), args.base], cwd=REPO, check=True)
        try:
            for bundle in args.bundles.split(","):
                before = bundle_metrics(base, bundle, str(manifest), out / bundle / "before")
                after = bundle_metrics(REPO, bundle, str(manifest), out / bundle / "after")
                lines = differences(before, after, args.tolerance)
                report["bundles"][bundle] = {"same": not lines, "differences": lines, "compared": len(numbers(before))}
                print(f"{bundle}: {'same' if not lines else f'{len(lines)} differences'} ({len(numbers(before))} values compared)")
                for line in lines[:20]:
                    print(f"  {line}")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, check=False)
    (out / "result.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(b["same"] for b in report["bundles"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
