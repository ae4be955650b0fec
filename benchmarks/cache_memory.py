"""RAM the training cache holds per session, for each bundle's chain at 2 mm and 1 mm, float32 and float16.

Runs each bundle's own cached chain (read from its ``train.json``: ROI, patch padding, concat key) on one
real scan and sums the bytes of the cached tensors, so the figures in docs/robustness.md can be rerun.
At 1 mm the whole-volume ROI is scaled by 2 per axis (what "train at 1 mm" means for those bundles).

Usage (repository root)::

    python benchmarks/cache_memory.py                  # synthetic 1 mm scan (monai-ms synth --spacing 1)
    python benchmarks/cache_memory.py --t1 T1.nii.gz --t2 T2.nii.gz --lesion mask.nii.gz

Writes ``benchmarks/results/cache_memory.json`` and prints one line per bundle.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cached_bytes(bundle: str, item: dict, spacing: float, cache_dtype: str | None) -> int:
    from monai.bundle import ConfigParser

    from monai_ms.data import cohort_dataset

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    scale = 2.0 / spacing
    parser["spacing"] = [spacing] * 3
    parser["cache_dtype"] = cache_dtype
    if "roi_size" in parser:
        parser["roi_size"] = [int(round(s * scale)) for s in parser["roi_size"]]
    if "patch_size" in parser:
        parser["patch_size"] = [int(round(s * scale)) for s in parser["patch_size"]]
    chain = parser.get_parsed_content("train#preprocessing")
    keys = [k for k in ("t1", "t2", "lesion") if k in item]
    dataset = cohort_dataset([{k: item[k] for k in keys} | {"age": 40, "sex": "F", "edss": 2.0}], chain, progress=False)
    cached = dataset._cache[0]
    return sum(v.numel() * v.element_size() for v in cached.values() if hasattr(v, "element_size"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t1")
    parser.add_argument("--t2")
    parser.add_argument("--lesion")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cache_memory.json"))
    args = parser.parse_args(argv)
    if args.t1:
        item = {"t1": args.t1, "t2": args.t2, "lesion": args.lesion}
    else:
        from monai_ms.data.manifest import build_from_csv
        from monai_ms.data.synthetic import generate_cohort

        folder = Path(tempfile.mkdtemp(prefix="cache_memory_"))
        generate_cohort(folder, subjects=1, seed=5, spacing=1.0, overwrite=True)
        entry = build_from_csv(folder / "metadata.csv", relative_to=folder)[0]
        item = {k: str(folder / entry[k]) for k in ("t1", "t2", "lesion")}
    rows = []
    for bundle in ("edss", "lesion_seg", "brain_age", "sex"):
        for spacing in (2.0, 1.0):
            for dtype in (None, "float16"):
                mib = _cached_bytes(bundle, {k: v for k, v in item.items() if v}, spacing, dtype) / 2**20
                rows.append({"bundle": bundle, "spacing_mm": spacing, "cache_dtype": dtype or "float32", "mib_per_session": round(mib, 2)})
        line = ", ".join(f"{r['spacing_mm']:g} mm {r['cache_dtype']} {r['mib_per_session']} MiB" for r in rows[-4:])
        print(f"{bundle}: {line}")
    from monai_ms.io import write_json

    write_json({"command": " ".join([sys.executable, *sys.argv]), "machine": platform.platform(), "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
