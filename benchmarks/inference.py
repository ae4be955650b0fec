"""End-to-end inference seconds per 1 mm scan for lesion_seg and edss, split into stages, vs the network time.

Both pipelines are built from the bundles' own ``train.json`` + ``inference.json`` (the chains, inferers,
post-processing and writers that ``run inferring`` uses) and timed on one synthetic 1 mm session (T1 RAS,
T2 LPS on another grid; ``benchmarks/_shared.py:synthetic_cohort``):

- lesion_seg (stages of ``benchmarks/lesion_seg_inference.py``): load -> preprocess -> sliding window ->
  post-process (sigmoid, ``Invertd`` to the T1 grid, threshold) -> write (mask, probability map, lesion
  table, QC PNG); the pure network time is the inferer's calls of the network, timed inside it;
- edss: load -> preprocess (RAS, 2 mm, T2 onto T1, crop, pad to the ROI, demographics) -> network forward
  (whole volume, ``SimpleInferer``) -> write (the bundle's ``PredictionTableHandler`` CSV).

``overhead_ratio`` = (end to end - network forward) / network forward; the issue's target is <= 0.5 for
lesion_seg at 1 mm on CPU. The trained ``bundles/<task>/models/model.pt`` is loaded when present (the
lesion table's cost depends on how many lesions the mask has), random weights otherwise. Each stage is
the median of ``--repeats`` runs after one warm-up.

Usage (repository root)::

    python benchmarks/inference.py              # both bundles, 3 repeats
    python benchmarks/inference.py --quick      # 1 repeat
    python benchmarks/inference.py --tiny       # 4 mm test scan, 1 repeat (tests)

Writes ``benchmarks/results/inference.json`` (git-ignored) and prints a one-line summary.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lesion_seg_inference  # noqa: E402
from _shared import CACHE, TINY_SESSIONS, REPO, RESULTS, bundle_parser, command_line, machine_info, synthetic_cohort  # noqa: E402

STAGES_LESION = ("load_s", "preprocess_s", "sliding_window_s", "postprocess_invert_s", "write_s")
STAGES_EDSS = ("load_s", "preprocess_s", "network_forward_s", "write_s")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", default="lesion_seg,edss", help="comma-separated subset of lesion_seg,edss")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (default 3)")
    parser.add_argument("--spacing", type=float, help="lesion_seg network grid in mm (default: the bundle's, 2); 1 runs the network at the scan's 1 mm")
    parser.add_argument("--no-probability", action="store_true", help="lesion_seg: do not write the probability map (--save_probability False)")
    parser.add_argument("--random-weights", action="store_true", help="do not load bundles/<task>/models/model.pt")
    parser.add_argument("--quick", action="store_true", help="1 repeat")
    parser.add_argument("--tiny", action="store_true", help="test mode: the 4 mm test cohort, 1 repeat")
    parser.add_argument("--cache-dir", default=str(CACHE), help="where synthetic cohorts are cached (default benchmarks/results/cache)")
    parser.add_argument("--out", default=str(RESULTS / "inference.json"))
    args = parser.parse_args(argv)
    if args.quick or args.tiny:
        args.repeats = 1
    return args


def _checkpoint(bundle: str, args: argparse.Namespace) -> str | None:
    path = REPO / "bundles" / bundle / "models" / "model.pt"
    return None if args.random_weights or not path.exists() else str(path)


def _load_weights(network: Any, ckpt: str | None) -> str:
    import torch

    if ckpt is None:
        return "random weights"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    try:
        network.load_state_dict(state)
    except RuntimeError as error:  # a checkpoint from an older network definition
        return f"random weights ({ckpt} does not fit the current network: {str(error).splitlines()[0][:120]})"
    return str(Path(ckpt).relative_to(REPO))


def lesion_seg(entry: dict, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Stage times of lesion_seg inference on one scan (median over repeats)."""
    options = argparse.Namespace(flip_tta=False, overlap=None, mode=None, spacing=args.spacing, no_probability=args.no_probability)
    parser = lesion_seg_inference._bundle(options, out_dir)
    network = parser.get_parsed_content("network")
    weights = _load_weights(network, _checkpoint("lesion_seg", args))
    network.eval()
    runs = [lesion_seg_inference._run_once(parser, dict(entry), network) for _ in range(args.repeats + 1)][1:]
    median = {key: statistics.median(run["times"][key] for run in runs) for key in runs[0]["times"]}
    return {
        "weights": weights,
        "settings": {"spacing": parser["spacing"], "roi_size": parser["patch_size"], "sw_batch_size": parser["sw_batch_size"], "overlap": parser["sw_overlap"], "mode": parser["sw_mode"]},
        "network_grid_shape": runs[0]["network_grid_shape"],
        "windows": runs[0]["windows"],
        "lesion_count": runs[0]["lesion_count"],
        "median_seconds": median,
        "runs": [run["times"] for run in runs],
    }


def _edss_once(parser: Any, entry: dict, network: Any, writer: Any) -> dict[str, float]:
    import torch
    from monai.data import list_data_collate
    from monai.transforms import Compose

    preprocessing = parser.get_parsed_content("infer#preprocessing")
    prepare = parser.get_parsed_content("infer#prepare_batch")
    load, rest = Compose(preprocessing.transforms[:1]), Compose(preprocessing.transforms[1:])
    times: dict[str, float] = {}
    start = time.perf_counter()
    data = load(dict(entry))
    times["load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    batch = list_data_collate([rest(data)])
    inputs, _, extra, kwargs = prepare(batch, torch.device("cpu"))
    times["preprocess_s"] = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        pred = network(inputs, *extra, **kwargs)
    times["network_forward_s"] = time.perf_counter() - start
    start = time.perf_counter()
    writer.ids, writer.preds = [str(entry["session"])], [float(pred.reshape(-1)[0])]
    writer.write()
    times["write_s"] = time.perf_counter() - start
    times["end_to_end_s"] = sum(times[k] for k in STAGES_EDSS)
    return times


def edss(entry: dict, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Stage times of EDSS inference on one scan (median over repeats)."""
    parser = bundle_parser("edss", ("inference.json",))
    parser["data_manifest"] = "unused"  # the benchmark feeds one scan directly
    parser["device"] = "$torch.device('cpu')"
    parser["output_dir"] = str(out_dir)
    parser["infer#provenance"] = None  # no manifest or checkpoint file to record: one scan is fed directly
    network = parser.get_parsed_content("network")
    weights = _load_weights(network, _checkpoint("edss", args))
    network.eval()
    writer = parser.get_parsed_content("infer#handlers#1")
    runs = [_edss_once(parser, entry, network, writer) for _ in range(args.repeats + 1)][1:]
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return {"weights": weights, "settings": {"spacing": parser["spacing"], "roi_size": parser["roi_size"]}, "median_seconds": median, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import nibabel as nib
    import torch

    torch.set_num_threads(args.threads)
    manifest = synthetic_cohort(TINY_SESSIONS if args.tiny else 1, spacing=4.0 if args.tiny else 1.0, tiny=args.tiny, root=Path(args.cache_dir))
    from monai_ms.data import read_manifest

    entry = dict(read_manifest(manifest)["training"][0])
    entry.pop("lesion", None), entry.pop("tissue", None)  # a new scan: images and demographics only
    names = [b.strip() for b in args.bundles.split(",") if b.strip()]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "lesion_seg" in names:
            results["lesion_seg"] = lesion_seg(entry, args, Path(tmp) / "lesion_seg")
        if "edss" in names:
            results["edss"] = edss(entry, args, Path(tmp) / "edss")
    network_key = {"lesion_seg": "network_forward_s", "edss": "network_forward_s"}
    summary = {}
    for name, r in results.items():
        m = r["median_seconds"]
        network_s = m[network_key[name]]
        r["overhead_s"] = m["end_to_end_s"] - network_s
        r["overhead_ratio"] = r["overhead_s"] / network_s if network_s else None
        r["stage_share"] = {k: v / m["end_to_end_s"] for k, v in m.items() if k != "end_to_end_s"}
        summary[name] = {"end_to_end_s": round(m["end_to_end_s"], 3), "network_s": round(network_s, 3), "overhead_ratio": round(r["overhead_ratio"], 2) if r["overhead_ratio"] else None}
    if "lesion_seg" in summary:
        summary["lesion_seg"]["target_overhead_ratio"] = 0.5
        summary["lesion_seg"]["target_met"] = bool(summary["lesion_seg"]["overhead_ratio"] is not None and summary["lesion_seg"]["overhead_ratio"] <= 0.5)
    t1 = nib.load(entry["t1"])
    t2 = nib.load(entry["t2"])
    result = {
        "benchmark": "inference",
        "command": command_line(__file__, argv),
        "machine": machine_info(args.threads),
        "scan": {
            "t1_shape": list(t1.shape), "t1_voxel_mm": [round(float(z), 3) for z in t1.header.get_zooms()[:3]],
            "t2_shape": list(t2.shape), "t2_voxel_mm": [round(float(z), 3) for z in t2.header.get_zooms()[:3]],
            "t1_axcodes": "".join(nib.aff2axcodes(t1.affine)), "t2_axcodes": "".join(nib.aff2axcodes(t2.affine)),
        },
        "settings": {"threads": args.threads, "repeats": args.repeats, "tiny": args.tiny},
        "summary": summary,
        "bundles": results,
    }
    from monai_ms.io import write_json

    write_json(result, args.out)
    parts = []
    if "lesion_seg" in results:
        m = results["lesion_seg"]["median_seconds"]
        parts.append(
            f"lesion_seg {m['end_to_end_s']:.2f} s (load {m['load_s']:.2f}, preprocess {m['preprocess_s']:.2f}, sliding window "
            f"{m['sliding_window_s']:.2f} of which network {m['network_forward_s']:.2f} over {results['lesion_seg']['windows']} windows, "
            f"invert {m['postprocess_invert_s']:.2f}, write {m['write_s']:.2f}; overhead {results['lesion_seg']['overhead_ratio']:.0%} of network, target 50%)"
        )
    if "edss" in results:
        m = results["edss"]["median_seconds"]
        parts.append(
            f"edss {m['end_to_end_s']:.2f} s (load {m['load_s']:.2f}, preprocess {m['preprocess_s']:.2f}, network {m['network_forward_s']:.2f}, "
            f"write {m['write_s']:.2f}; overhead {results['edss']['overhead_ratio']:.0%} of network)"
        )
    shape = "x".join(map(str, result["scan"]["t1_shape"]))
    print(f"inference per {shape} scan at {result['scan']['t1_voxel_mm'][0]:g} mm, {args.threads} threads: " + "; ".join(parts) + f" -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
