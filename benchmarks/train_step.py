"""Samples per second of a training step (forward + backward + optimizer step) for each bundle's network.

For each bundle the network, training wrapper, loss, optimizer, batch preparation, batch size and ROI (or
patch size x patches per volume) are read from ``bundles/<bundle>/configs/train.json`` with
``monai.bundle.ConfigParser``; the batch is random tensors of those shapes, already in memory, so this
measures the model step alone. Options measured against the fp32 baseline of the same run:

- ``fp32``: the baseline (bundle network in the contiguous layout, ``--threads`` torch threads);
- ``channels_last_3d``: network and inputs in ``torch.channels_last_3d``;
- ``channels_last_3d_model``: the network only, inputs as the data loader gives them: what the bundles'
  ``channels_last: true`` (the default, chosen from this benchmark) does;
- ``bf16_autocast`` (CPU) / ``fp16_amp`` (CUDA, with ``GradScaler``, what the bundles' ``amp: true`` does);
- ``compile``: ``torch.compile(network)``; its compile time (first steps) is reported separately
  (``--no-compile`` skips it: minutes on 2 cores);
- ``threads_<n>``: ``torch.set_num_threads(n)`` for each ``--thread-variants`` value (CPU).

Data side (``--data``, EDSS only): whole training steps fed by the bundle's cached dataset on the tiny
synthetic cohort (the cache holds the 2 mm ROI volumes, so the per-epoch augmentation cost does not depend
on the source resolution) through ``DataLoader`` (the bundle's ``num_workers``) and ``ThreadDataLoader``
(``num_workers=0``), against the same steps on a batch already in memory: the share of time waiting for
data is ``1 - in-memory step time / fed step time``.

On CUDA also ``torch.cuda.max_memory_allocated`` per option.

Usage (repository root)::

    python benchmarks/train_step.py                  # all bundles, all options (compile: minutes)
    python benchmarks/train_step.py --quick --no-compile
    python benchmarks/train_step.py --tiny           # 16^3 inputs, batch 2, 1 step (tests)

Writes ``benchmarks/results/train_step.json`` (git-ignored) and prints a one-line summary.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import CACHE, TINY_SESSIONS, RESULTS, bundle_parser, command_line, machine_info, synthetic_cohort  # noqa: E402

BUNDLES = ("edss", "lesion_seg", "brain_age", "sex")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", default=",".join(BUNDLES), help=f"comma-separated subset of {','.join(BUNDLES)}")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per option (default 4; the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--threads", type=int, help="torch threads of the baseline (default: torch's default)")
    parser.add_argument("--thread-variants", default="1", help="comma-separated thread counts to try besides the baseline (CPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="also measure torch.compile")
    parser.add_argument("--data", action=argparse.BooleanOptionalAction, default=True, help="DataLoader vs ThreadDataLoader (EDSS)")
    parser.add_argument("--quick", action="store_true", help="2 timed steps, no thread variants")
    parser.add_argument("--tiny", action="store_true", help="test mode: 16^3 inputs, batch 2, 1 step, no compile")
    parser.add_argument("--cache-dir", default=str(CACHE), help="where synthetic cohorts are cached (default benchmarks/results/cache)")
    parser.add_argument("--out", default=str(RESULTS / "train_step.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.thread_variants = 2, ""
    if args.tiny:
        args.steps, args.warmup, args.compile, args.thread_variants = 1, 1, False, ""
    return args


class Bundle:
    """The training pieces of one bundle, built from its ``train.json``."""

    def __init__(self, name: str, device: Any, tiny: bool) -> None:
        import torch

        parser = bundle_parser(name)
        parser["device"] = f"$torch.device('{device}')"
        parser["train#datalist"] = [{"sex": "F", "age": 40.0, "edss": 2.0}, {"sex": "M", "age": 50.0, "edss": 4.0}]
        if tiny:
            for key in ("roi_size", "patch_size"):
                if key in parser.get():
                    parser[key] = [16, 16, 16]
            parser["batch_size"] = 2
        self.name, self.parser, self.device = name, parser, torch.device(device)
        self.network = parser.get_parsed_content("network")
        self.train_network = parser.get_parsed_content("train_network") if "train_network" in parser.get() else self.network
        self.loss = parser.get_parsed_content("loss")
        key = "train_prepare_batch" if "train_prepare_batch" in parser.get() else "prepare_batch"
        self.prepare = parser.get_parsed_content(key)
        patch = parser.get("patch_size")
        self.spatial = list(patch if patch is not None and parser.get("patches_per_volume") else parser["roi_size"])
        self.batch = int(parser["batch_size"]) * (int(parser.get("patches_per_volume", 1)) if patch is not None else 1)
        if "in_channels" in parser["network_def"]:
            self.in_channels = int(parser.get_parsed_content("network_def#in_channels"))
        else:
            self.in_channels = len(parser.get("image_keys", ["t1"]))
        self.parameters = sum(p.numel() for p in self.network.parameters())

    def optimizer(self, network: Any) -> Any:
        """The bundle's optimizer (class and arguments from the config) over ``network``'s parameters."""
        import pydoc

        config = self.parser.get("optimizer")
        kwargs = {key: self.parser.get_parsed_content(f"optimizer#{key}") for key in config if key not in ("_target_", "params")}
        return pydoc.locate(config["_target_"])(network.parameters(), **kwargs)

    def random_batch(self, generator: Any) -> dict[str, Any]:
        """Random tensors with the shapes the bundle's batch preparation expects."""
        import torch

        target_key = self.parser.get("target_key")
        batch: dict[str, Any] = {}
        for key in list(self.prepare.input_keys) + list(self.prepare.label_keys):
            if key == "demographics":
                batch[key] = torch.stack([torch.rand(self.batch, generator=generator) * 40 + 20, torch.randint(0, 2, (self.batch,), generator=generator).float()], 1)
            elif key == target_key:
                batch[key] = torch.randint(0, 2, (self.batch, 1), generator=generator).float() if key == "sex" else torch.rand(self.batch, 1, generator=generator) * 6
            elif key in ("lesion", self.parser.get("label_key")):
                batch[key] = (torch.rand(self.batch, 1, *self.spatial, generator=generator) > 0.99).float()
            else:
                channels = self.in_channels if key == "image" and self.in_channels else 1
                batch[key] = torch.randn(self.batch, channels, *self.spatial, generator=generator)
        return batch


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_fn(bundle: Bundle, network: Any, optimizer: Any, autocast: Any, scaler: Any, channels_last: bool) -> Callable[[dict], float]:
    import torch

    def step(batch: dict) -> float:
        inputs, target, args, kwargs = bundle.prepare(batch, bundle.device)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
            args = tuple(a.contiguous(memory_format=torch.channels_last_3d) if a.ndim == 5 else a for a in args)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            pred = network(inputs, *args, **kwargs)
            loss = bundle.loss(pred, target)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return float(loss.detach())

    return step


def _time_steps(step: Callable[[dict], float], batches: Any, steps: int, warmup: int, device: Any) -> dict[str, Any]:
    times, first = [], None
    iterator = iter(batches)
    for index in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        loss = step(next(iterator))
        _sync(device)
        elapsed = time.perf_counter() - start
        if index == 0:
            first = elapsed
        if index >= warmup:
            times.append(elapsed)
        if loss != loss:  # NaN: the option broke the numerics
            raise FloatingPointError("loss became NaN")
    return {"first_step_s": first, "step_s": statistics.median(times), "steps_s": times}


def measure_option(bundle: Bundle, option: str, args: argparse.Namespace, batches: Any = None) -> dict[str, Any]:
    """One option's median step time on ``bundle`` (fresh copy of the network and optimizer)."""
    import copy

    import torch

    cuda = bundle.device.type == "cuda"
    network = copy.deepcopy(bundle.train_network).to(bundle.device).train()
    channels_last = option == "channels_last_3d"  # network and inputs
    # the baseline is contiguous whatever the bundle's channels_last default; "channels_last_3d_model"
    # converts the network only (what channels_last: true does)
    layout = torch.channels_last_3d if option.startswith("channels_last_3d") else torch.contiguous_format
    network = network.to(memory_format=layout)
    optimizer = bundle.optimizer(network)
    autocast: Any = contextlib.nullcontext
    scaler = None
    if option == "bf16_autocast":
        autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    if option == "fp16_amp":
        autocast = lambda: torch.autocast("cuda", dtype=torch.float16)  # noqa: E731
        scaler = torch.amp.GradScaler("cuda")
    if option == "compile":
        network = torch.compile(network)
    threads = torch.get_num_threads()
    if option.startswith("threads_"):
        torch.set_num_threads(int(option.split("_")[1]))
    if cuda:
        torch.cuda.reset_peak_memory_stats(bundle.device)
    generator = torch.Generator().manual_seed(0)
    fixed = bundle.random_batch(generator)
    try:
        timing = _time_steps(_step_fn(bundle, network, optimizer, autocast, scaler, channels_last), batches or _repeat(fixed), args.steps, args.warmup, bundle.device)
    except Exception as error:  # an option that fails on this machine is reported, not fatal
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]}
    finally:
        torch.set_num_threads(threads)
    timing["samples_per_s"] = bundle.batch / timing["step_s"]
    if option == "compile":
        timing["compile_s"] = timing["first_step_s"] - timing["step_s"]
    if cuda:
        timing["gpu_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated(bundle.device) / 2**20
    return timing


def _repeat(batch: dict) -> Any:
    while True:
        yield batch


def _data_side(device: Any, args: argparse.Namespace) -> dict[str, Any]:
    """EDSS training steps fed by DataLoader vs ThreadDataLoader from the bundle's cached dataset."""
    from monai.data import DataLoader, ThreadDataLoader

    manifest = synthetic_cohort(8 if not args.tiny else TINY_SESSIONS, spacing=4.0, tiny=True, root=Path(args.cache_dir))
    bundle = Bundle("edss", device, args.tiny)
    bundle.parser["data_manifest"] = str(manifest)
    for key in ("train#datalist",):
        bundle.parser[key] = "$monai_ms.data.load_datalist(@data_manifest, 'training', validate=False)"
    if "cache" in bundle.parser.get():
        bundle.parser["cache"] = "memory"
    dataset = bundle.parser.get_parsed_content("train#dataset")
    batch_size, workers = int(bundle.parser["batch_size"]), int(bundle.parser["num_workers"])
    steps = max(2, min(args.steps, len(dataset) // batch_size))
    loaders = {
        f"DataLoader(num_workers={workers})": lambda: DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=workers > 0),
        "ThreadDataLoader(num_workers=0)": lambda: ThreadDataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0, drop_last=True),
    }
    result: dict[str, Any] = {"cohort": str(manifest), "items": len(dataset), "batch_size": batch_size, "steps": steps}
    result["in_memory"] = measure_option(bundle, "fp32", argparse.Namespace(steps=steps, warmup=1))
    for name, make in loaders.items():
        loader = make()

        def forever() -> Any:
            while True:
                yield from loader

        timing = measure_option(bundle, "fp32", argparse.Namespace(steps=steps, warmup=1), batches=forever())
        if "step_s" in timing:
            timing["data_wait_share"] = max(0.0, 1.0 - result["in_memory"]["step_s"] / timing["step_s"])
        result[name] = timing
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    device = "cuda:0" if cuda else "cpu"
    options = ["fp32", "channels_last_3d", "channels_last_3d_model", "fp16_amp" if cuda else "bf16_autocast"]
    if args.compile:
        options.append("compile")
    if not cuda:
        options += [f"threads_{n.strip()}" for n in args.thread_variants.split(",") if n.strip() and int(n) != torch.get_num_threads()]
    names = [b.strip() for b in args.bundles.split(",") if b.strip()]
    unknown = sorted(set(names) - set(BUNDLES))
    if unknown:
        raise SystemExit(f"--bundles: unknown {unknown}; choose from {','.join(BUNDLES)}")
    bundles: dict[str, Any] = {}
    for name in names:
        bundle = Bundle(name, device, args.tiny)
        entry: dict[str, Any] = {
            "network": type(bundle.network).__name__, "parameters": bundle.parameters, "batch": bundle.batch,
            "input_spatial": bundle.spatial, "inputs": {k: list(v.shape) for k, v in bundle.random_batch(torch.Generator().manual_seed(0)).items()},
            "options": {},
        }
        for option in options:
            entry["options"][option] = measure_option(bundle, option, args)
        base = entry["options"]["fp32"].get("step_s")
        for timing in entry["options"].values():
            if base and "step_s" in timing:
                timing["speedup_vs_fp32"] = round(base / timing["step_s"], 3)
        bundles[name] = entry
    data_side = _data_side(device, args) if args.data else None
    result = {
        "benchmark": "train_step",
        "command": command_line(__file__, argv),
        "machine": machine_info(torch.get_num_threads()),
        "settings": {"device": device, "steps": args.steps, "warmup": args.warmup, "tiny": args.tiny, "options": options},
        "bundles": bundles,
        "data_side_edss": data_side,
    }
    from monai_ms.io import write_json

    write_json(result, args.out)
    parts = []
    for name, entry in bundles.items():
        opts = entry["options"]
        base = opts["fp32"].get("samples_per_s")
        others = ", ".join(f"{o} {t['speedup_vs_fp32']}x" if "speedup_vs_fp32" in t else f"{o} failed" for o, t in opts.items() if o != "fp32")
        parts.append(f"{name} {base:.2f} samples/s fp32 ({others})" if base else f"{name} fp32 failed")
    line = f"train_step on {device} ({torch.get_num_threads()} threads): " + "; ".join(parts)
    if data_side:
        waits = {k: v.get("data_wait_share") for k, v in data_side.items() if isinstance(v, dict) and "data_wait_share" in v}
        line += "; edss data wait share " + ", ".join(f"{k} {v:.0%}" for k, v in waits.items())
    print(line + f" -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
