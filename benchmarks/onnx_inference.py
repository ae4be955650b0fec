"""lesion_seg network on CPU: ONNX Runtime against TorchScript, same weights, same windows, same threads.

Exports the bundle's ``network_def`` (``--ckpt``, or random weights: the time does not depend on them)
once to TorchScript (``torch.jit.script``, as ``monai.bundle ckpt_export`` does) and once to ONNX
(:func:`monai_ms.bundle.onnx_export.export_onnx`), then times, in the same process with ``--threads``
intra-op threads for both runtimes:

- ``window``: one forward of ``sw_batch_size`` patches of ``patch_size`` (the sliding-window inferer's call);
- ``volume``: a whole ``monai.inferers.sliding_window_inference`` over a volume of ``--volume`` voxels
  (default: the demo cohort's 2 mm grid after cropping, 80 x 96 x 80), ``sw_overlap`` of the bundle.

Each figure is the median of ``--repeats`` runs after one warm-up; the ONNX/TorchScript time ratio is
reported from the same run, with the largest absolute output difference.

Usage (repository root)::

    python benchmarks/onnx_inference.py                 # 2 threads, random weights
    python benchmarks/onnx_inference.py --threads 2 --repeats 10 --ckpt bundles/lesion_seg/models/model.pt

Writes ``benchmarks/results/onnx_inference.json`` (git-ignored) and prints a one-line summary.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import REPO, RESULTS, command_line, machine_info  # noqa: E402


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="lesion_seg model.pt (default: random weights)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of both runtimes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--volume", type=int, nargs=3, default=[80, 96, 80], help="volume of the sliding-window run")
    parser.add_argument("--out", default=str(RESULTS / "onnx_inference.json"))
    return parser.parse_args(argv)


def _median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    import numpy as np
    import onnxruntime as ort
    import torch
    from monai.bundle import ConfigParser
    from monai.inferers import sliding_window_inference

    from monai_ms.bundle.onnx_export import export_onnx
    from monai_ms.io import write_json

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="onnx_bench_") as tmp:
        bundle = Path(tmp) / "lesion_seg"
        shutil.copytree(REPO / "bundles" / "lesion_seg" / "configs", bundle / "configs")
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "train.json"))
        parser["bundle_root"] = str(bundle)
        network = parser.get_parsed_content("network_def").eval()
        (bundle / "models").mkdir()
        if args.ckpt:
            shutil.copy(args.ckpt, bundle / "models" / "model.pt")
            network.load_state_dict(torch.load(args.ckpt, map_location="cpu", weights_only=True))
        else:
            torch.save(network.state_dict(), bundle / "models" / "model.pt")
        check = export_onnx(bundle)
        scripted = torch.jit.script(network).eval()
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(check.path), options, providers=["CPUExecutionProvider"])

        patch = [int(v) for v in parser.get_parsed_content("patch_size")]
        sw_batch = int(parser.get_parsed_content("sw_batch_size"))
        overlap = float(parser.get_parsed_content("sw_overlap"))
        generator = torch.Generator().manual_seed(0)
        windows = torch.rand(sw_batch, 2, *patch, generator=generator)
        volume = torch.rand(1, 2, *args.volume, generator=generator)

        def ts_net(x):
            return scripted(x)

        def onnx_net(x):
            return torch.from_numpy(session.run(["pred"], {"image": np.ascontiguousarray(x.numpy())})[0])

        results = {}
        with torch.no_grad():
            outputs = {}
            for name, net in (("torchscript", ts_net), ("onnxruntime", onnx_net)):
                window = _median_seconds(lambda: net(windows), args.repeats)
                whole = _median_seconds(lambda: sliding_window_inference(volume, patch, sw_batch, net, overlap=overlap), args.repeats)
                outputs[name] = sliding_window_inference(volume, patch, sw_batch, net, overlap=overlap)
                results[name] = {"window_s": round(window, 4), "volume_s": round(whole, 3)}
        diff = float((outputs["onnxruntime"] - outputs["torchscript"]).abs().max())
    ratio = {k: round(results["onnxruntime"][k] / results["torchscript"][k], 3) for k in ("window_s", "volume_s")}
    result = {
        "command": command_line(__file__, argv),
        "machine": machine_info(args.threads),
        "onnxruntime_version": ort.__version__,
        "weights": args.ckpt or "random (time does not depend on the weights)",
        "patch_size": patch, "sw_batch_size": sw_batch, "sw_overlap": overlap, "volume": args.volume,
        "threads": args.threads, "repeats": args.repeats, "statistic": "median after one warm-up",
        "seconds": results,
        "onnx_over_torchscript": ratio,
        "max_abs_diff_volume_logits": diff,
        "export_check": check.describe(),
    }
    write_json(result, args.out)
    print(f"lesion_seg on {args.threads} threads: window {results['torchscript']['window_s']:.3f}s TorchScript vs "
          f"{results['onnxruntime']['window_s']:.3f}s ONNX Runtime (x{ratio['window_s']}); volume {args.volume} "
          f"{results['torchscript']['volume_s']:.2f}s vs {results['onnxruntime']['volume_s']:.2f}s (x{ratio['volume_s']}); "
          f"max |diff| {diff:.1e}; wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
