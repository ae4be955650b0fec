"""Lesion segmentation inference time for one 1 mm scan, end to end, split into stages.

Builds the pipeline from the bundle's own configs (``train.json`` + ``inference.json``: the same transform
chain, sliding-window inferer, post-processing and writer as ``run inferring``) and times, for one scan:

    load (NIfTI read) -> preprocess (RAS, 2 mm, T2 onto T1, crop, z-score) -> sliding window
    -> post-process (sigmoid, Invertd back to the T1 grid, threshold) -> write (mask, probability map,
    lesion table, QC PNG)

and, separately, the pure network forward time over the same windows (the sliding-window inferer's calls
of the network, timed inside it), so the sliding-window overhead (padding, window gathering, Gaussian
blending) is the difference. The model is loaded once before timing (``--ckpt``; random weights without
it: the time does not depend on the weights). Each stage is the median of ``--repeats`` runs after one
warm-up run.

Usage (repository root)::

    python benchmarks/lesion_seg_inference.py                      # synthetic 1 mm scan, 2 threads
    python benchmarks/lesion_seg_inference.py --ckpt bundles/lesion_seg/models/model.pt --overlap 0.5 --flip-tta

Writes ``benchmarks/results/lesion_seg_inference.json`` (git-ignored) and prints a one-line summary.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t1", help="T1 NIfTI (default: a synthetic 1 mm scan, monai-ms synth --spacing 1 --seed 5)")
    parser.add_argument("--t2", help="T2 NIfTI on any grid (with --t1)")
    parser.add_argument("--ckpt", help="model.pt to load (default: random weights)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (default 3)")
    parser.add_argument("--overlap", type=float, help="sliding-window overlap (default: the bundle's)")
    parser.add_argument("--mode", choices=["gaussian", "constant"], help="window blending (default: the bundle's)")
    parser.add_argument("--spacing", type=float, help="network grid in mm (default: the bundle's, 2)")
    parser.add_argument("--no-probability", action="store_true", help="do not write the probability map (save_probability False)")
    parser.add_argument("--flip-tta", action="store_true", help="flip test-time augmentation (3 extra passes)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lesion_seg_inference.json"))
    return parser.parse_args(argv)


def _synthetic_scan(folder: Path) -> tuple[str, str]:
    from monai_ms.data.manifest import build_from_csv
    from monai_ms.data.synthetic import generate_cohort

    generate_cohort(folder, subjects=1, seed=5, spacing=1.0, overwrite=True)
    entry = build_from_csv(folder / "metadata.csv", relative_to=folder)[0]  # the first session
    return str(folder / entry["t1"]), str(folder / entry["t2"])


def _bundle(args: argparse.Namespace, out_dir: Path) -> Any:
    from monai.bundle import ConfigParser

    configs = REPO / "bundles" / "lesion_seg" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "inference.json")])
    parser.read_meta(str(configs / "metadata.json"))
    parser["bundle_root"] = str(REPO / "bundles" / "lesion_seg")
    parser["data_manifest"] = "unused"  # the benchmark feeds one scan directly
    parser["infer#provenance"] = None  # so no manifest or checkpoint file to record
    parser["device"] = "$torch.device('cpu')"
    parser["inference_dir"] = str(out_dir)
    parser["flip_tta"] = bool(args.flip_tta)
    if args.overlap is not None:
        parser["sw_overlap"] = args.overlap
    if args.mode is not None:
        parser["sw_mode"] = args.mode
    if getattr(args, "spacing", None) is not None:
        parser["spacing"] = [float(args.spacing)] * 3
    if getattr(args, "no_probability", False):
        parser["save_probability"] = False
    return parser


class _TimedNetwork:
    """Wrap the network so the sliding-window inferer's calls of it are timed (the pure forward time)."""

    def __init__(self, network: Any) -> None:
        self.network, self.seconds, self.calls, self.windows = network, 0.0, 0, 0

    def __call__(self, x: Any) -> Any:
        start = time.perf_counter()
        y = self.network(x)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.windows += int(x.shape[0])
        return y


def _run_once(parser: Any, entry: dict, network: Any) -> dict[str, Any]:
    import torch
    from monai.data import decollate_batch, list_data_collate
    from monai.transforms import Compose

    preprocessing = parser.get_parsed_content("infer#preprocessing")
    inferer = parser.get_parsed_content("infer#inferer")
    postprocessing = parser.get_parsed_content("infer#postprocessing")
    writer = parser.get_parsed_content("infer#handlers#1")
    load, rest = Compose(preprocessing.transforms[:1]), Compose(preprocessing.transforms[1:])
    times: dict[str, float] = {}

    start = time.perf_counter()
    data = load(dict(entry))
    times["load_s"] = time.perf_counter() - start

    start = time.perf_counter()
    data = rest(data)
    batch = list_data_collate([data])
    times["preprocess_s"] = time.perf_counter() - start

    timed = _TimedNetwork(network)
    start = time.perf_counter()
    with torch.no_grad():
        logits = inferer(batch["image"], timed)
    times["sliding_window_s"] = time.perf_counter() - start
    times["network_forward_s"] = timed.seconds

    start = time.perf_counter()
    item = decollate_batch(batch)[0]
    output = postprocessing({**item, "pred": decollate_batch(logits)[0]})
    times["postprocess_invert_s"] = time.perf_counter() - start

    start = time.perf_counter()
    writer.reset()
    row = writer.write_scan(item, output)
    writer.write()
    times["write_s"] = time.perf_counter() - start

    times["end_to_end_s"] = sum(times[k] for k in ("load_s", "preprocess_s", "sliding_window_s", "postprocess_invert_s", "write_s"))
    return {
        "times": times,
        "network_calls": timed.calls,
        "windows": timed.windows,
        "network_grid_shape": list(batch["image"].shape[2:]),
        "lesion_count": int(row["lesion_count"]),
        "mask_shape": list(output["pred"].shape[1:]),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import nibabel as nib
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        t1, t2 = (args.t1, args.t2) if args.t1 else _synthetic_scan(tmp_path / "scan")
        parser = _bundle(args, tmp_path / "out")
        network = parser.get_parsed_content("network")
        if args.ckpt:
            network.load_state_dict(torch.load(args.ckpt, map_location="cpu", weights_only=True))
        network.eval()
        entry = {"subject": "bench", "session": "bench-01", "t1": t1, "t2": t2}
        runs = [_run_once(parser, entry, network) for _ in range(args.repeats + 1)][1:]  # first: warm-up
        t1_image = nib.load(t1)
        t2_image = nib.load(t2)
        median = {key: statistics.median(run["times"][key] for run in runs) for key in runs[0]["times"]}
        result = {
            "benchmark": "lesion_seg_inference",
            "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__},
            "scan": {
                "t1_shape": list(t1_image.shape), "t1_voxel_mm": [round(float(z), 3) for z in t1_image.header.get_zooms()[:3]],
                "t2_shape": list(t2_image.shape), "t2_voxel_mm": [round(float(z), 3) for z in t2_image.header.get_zooms()[:3]],
                "t1_axcodes": "".join(nib.aff2axcodes(t1_image.affine)), "t2_axcodes": "".join(nib.aff2axcodes(t2_image.affine)),
            },
            "settings": {
                "network_spacing_mm": parser["spacing"], "roi_size": parser["patch_size"], "sw_batch_size": parser["sw_batch_size"],
                "overlap": parser["sw_overlap"], "mode": parser["sw_mode"], "flip_tta": bool(args.flip_tta),
                "checkpoint": args.ckpt or "random weights", "repeats": args.repeats,
            },
            "network_grid_shape": runs[0]["network_grid_shape"],
            "windows": runs[0]["windows"],
            "mask_shape_equals_t1": runs[0]["mask_shape"] == list(t1_image.shape[:3]),
            "median_seconds": {k: round(v, 3) for k, v in median.items()},
            "sliding_window_overhead_s": round(median["sliding_window_s"] - median["network_forward_s"], 3),
            "runs": [{k: round(v, 3) for k, v in run["times"].items()} for run in runs],
        }
    from monai_ms.io import write_json

    write_json(result, args.out)
    m = result["median_seconds"]
    print(
        f"lesion_seg inference, one {'x'.join(map(str, result['scan']['t1_shape']))} T1 at "
        f"{result['scan']['t1_voxel_mm'][0]} mm, {args.threads} threads: {m['end_to_end_s']:.2f} s end to end "
        f"(load {m['load_s']:.2f}, preprocess {m['preprocess_s']:.2f}, sliding window {m['sliding_window_s']:.2f} of which "
        f"network {m['network_forward_s']:.2f} over {result['windows']} windows, invert {m['postprocess_invert_s']:.2f}, "
        f"write {m['write_s']:.2f}) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
