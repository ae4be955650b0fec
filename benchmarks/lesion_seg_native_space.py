"""Check lesion_seg inference outputs against their inputs: same grid as the input T1, overlap with the truth.

For every session of a manifest's ``testing`` split that ``run inferring`` has processed, compares
``<inference_dir>/<session>_lesion_mask.nii.gz`` with the session's T1 file (shape, affine, orientation)
and, when the manifest has a ``lesion`` mask, the voxel Dice and the volumes in the T1's own space.

Usage (repository root, after ``run inferring`` on the same manifest)::

    monai-ms synth --out /tmp/scan1mm --subjects 1 --spacing 1 --seed 5
    monai-ms manifest build --csv /tmp/scan1mm/metadata.csv --new-scans --out /tmp/scan1mm.json
    python -m monai.bundle run inferring --config_file "['bundles/lesion_seg/configs/train.json','bundles/lesion_seg/configs/inference.json']" \\
        --data_manifest /tmp/scan1mm.json --inference_dir /tmp/scan1mm_out
    python benchmarks/lesion_seg_native_space.py /tmp/scan1mm.json /tmp/scan1mm_out

Writes ``benchmarks/results/lesion_seg_native_space.json`` (git-ignored), prints one line per session, and
exits 1 when a mask is missing or not on its T1's grid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from monai_ms.data import read_manifest  # noqa: E402
from monai_ms.data.manifest import resolve_path  # noqa: E402
from monai_ms.io import write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("inference_dir")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lesion_seg_native_space.json"))
    args = parser.parse_args(argv)
    manifest = read_manifest(args.manifest)
    rows, failed = [], False
    for entry in manifest["testing"]:
        t1_path = resolve_path(entry["t1"], Path(args.manifest).parent)
        mask_path = Path(args.inference_dir) / f"{entry['session']}_lesion_mask.nii.gz"
        if not mask_path.is_file():
            print(f"{entry['session']}: no mask at {mask_path}")
            failed = True
            continue
        t1, mask = nib.load(str(t1_path)), nib.load(str(mask_path))
        same_grid = t1.shape == mask.shape and np.allclose(t1.affine, mask.affine, atol=1e-4)
        predicted = np.asanyarray(mask.dataobj) > 0
        row = {
            "session": entry["session"],
            "t1_shape": list(t1.shape),
            "mask_shape": list(mask.shape),
            "same_shape_and_affine": bool(same_grid),
            "orientation": "".join(nib.aff2axcodes(mask.affine)),
            "mask_dtype": str(mask.get_data_dtype()),
            "predicted_ml": float(predicted.sum() * np.prod(t1.header.get_zooms()[:3]) / 1000.0),
        }
        if entry.get("lesion"):
            truth = np.asanyarray(nib.load(str(resolve_path(entry["lesion"], Path(args.manifest).parent))).dataobj) > 0
            overlap = int(np.logical_and(truth, predicted).sum())
            row["true_ml"] = float(truth.sum() * np.prod(t1.header.get_zooms()[:3]) / 1000.0)
            row["dice"] = 2.0 * overlap / max(int(truth.sum() + predicted.sum()), 1)
        failed |= not same_grid
        rows.append(row)
        print(
            f"{row['session']}: mask {row['mask_shape']} {row['orientation']} {row['mask_dtype']}, T1 {row['t1_shape']}, "
            f"same grid {row['same_shape_and_affine']}, predicted {row['predicted_ml']:.2f} mL"
            + (f", truth {row['true_ml']:.2f} mL, Dice {row['dice']:.3f}" if "dice" in row else "")
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json({"manifest": str(args.manifest), "inference_dir": str(args.inference_dir), "sessions": rows}, args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
