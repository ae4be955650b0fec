"""Seconds per epoch and peak memory of the EDSS training data pipeline, without the model.

Iterates the EDSS bundle's training DataLoader (``batch_size``, ``num_workers``, ``shuffle`` and the transform
chain all read from ``bundles/edss/configs/train.json``) over a synthetic 1 mm cohort, in five variants:

- ``naive``: a per-item loader as researchers write it by hand: nibabel ``get_fdata()`` (float64), reorient
  to RAS, resample T1, T2 and lesion mask onto the same 2 mm grid with ``scipy.ndimage.affine_transform``,
  crop to the brain, pad/crop to the ROI, numpy z-score, every item every epoch. The random augmentation
  of the bundle (the same MONAI transform objects) runs after it, so every variant does the same random
  work and yields the same tensors; only the deterministic part differs. A check compares its output
  without augmentation with the bundle's ``eval`` chain (shapes and max abs difference).
- ``monai``: the bundle's chain in an uncached ``monai.data.Dataset``.
- ``cache``: the bundle's RAM cache as configured (``cache_fill="workers"``: the DataLoader workers fill it
  during epoch 1; ``SettleCacheHandler``'s ``settle()`` runs at each epoch start, inside the timed epoch).
  Epoch 1 includes filling the cache (and building the dataset); epochs 2+ are reported separately, with
  the cache's memory after epoch 1 against the bytes of the tensors it holds.
- ``cache_upfront``: the same with ``cache_fill="upfront"`` (MONAI's ``CacheDataset`` default: threads fill
  the cache before the first batch).
- ``cache_fp16`` / ``disk``: ``monai_ms.data.datasets.cohort_dataset`` with ``cache="memory",
  cache_dtype="float16"`` and ``cache="disk"`` (PersistentDataset); skipped while that module is missing.

Then ``tail_profile``: milliseconds per item of each transform after the cache, on one thread, with MONAI's
``NormalizeIntensityd`` timed beside the bundle's ``ZScoreNonzerod`` (what a cached epoch is made of).

Each variant runs in a fresh subprocess so its peak memory is its own: the peak PSS of the process tree
(main process plus DataLoader workers, shared pages split between them) sampled every 0.1 s, and
``ru_maxrss`` of the main process. Ratios are against the naive loader measured in the same run. With
``--repeats N`` every variant runs N times, interleaved, and the figures are medians (each run's timings
are kept in the JSON): single runs of one variant spread by +-5% on a shared 2-core machine.

Cohort: ``benchmarks/_shared.py:synthetic_cohort`` (generated once at 1 mm, the shortfall derived by
intensity and rigid pose changes; cached under ``benchmarks/results/cache/``).

Usage (repository root)::

    python benchmarks/data_pipeline.py             # 24 sessions at 1 mm, a few minutes on 2 cores
    python benchmarks/data_pipeline.py --repeats 3 # the README figures: medians of 3 interleaved runs
    python benchmarks/data_pipeline.py --quick     # 8 sessions, 2 epochs per variant
    python benchmarks/data_pipeline.py --tiny      # 4 sessions of the 4 mm test cohort, in-process (tests)

Writes ``benchmarks/results/data_pipeline.json`` (git-ignored) and prints a one-line summary.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import CACHE, TINY_SESSIONS, RESULTS, TreeMemorySampler, bundle_parser, command_line, machine_info, ru_maxrss_mb, synthetic_cohort, tree_pss_mb  # noqa: E402

VARIANTS = ("naive", "monai", "cache", "cache_upfront", "cache_fp16", "disk")
CACHED = ("cache", "cache_upfront", "cache_fp16", "disk")
IMAGE_KEYS = ("t1", "t2")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=24, help="cohort sessions (default 24)")
    parser.add_argument("--spacing", type=float, default=1.0, help="cohort T1 voxel size in mm (default 1)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the cached variants (default 3; >= 2)")
    parser.add_argument("--uncached-epochs", type=int, default=2, help="epochs of naive/monai (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every variant, interleaved; figures are medians (default 1)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--quick", action="store_true", help="8 sessions, 2 epochs per variant")
    parser.add_argument("--tiny", action="store_true", help="test mode: 4 sessions of the tiny 4 mm cohort, in-process")
    parser.add_argument("--in-process", action="store_true", help="run variants in this process (memory figures then overlap)")
    parser.add_argument("--num-workers", type=int, help="override the bundle's num_workers (tests)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the main process (default 2)")
    parser.add_argument("--cache-dir", default=str(CACHE), help="where synthetic cohorts are cached (default benchmarks/results/cache)")
    parser.add_argument("--out", default=str(RESULTS / "data_pipeline.json"))
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.epochs, args.uncached_epochs = 8, 2, 1
    if args.tiny:
        args.sessions, args.epochs, args.uncached_epochs, args.in_process = TINY_SESSIONS, 2, 1, True
    args.epochs = max(args.epochs, 2)
    return args


# --------------------------------------------------------------------------------------------------------
# the naive, hand-written loader


def _to_ras(data: Any, affine: Any) -> tuple[Any, Any]:
    import nibabel.orientations as nio

    transform = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt("RAS"))
    return nio.apply_orientation(data, transform), affine @ nio.inv_ornt_aff(transform, data.shape)


def _target_grid(affine: Any, shape: Sequence[int], spacing: Sequence[float]) -> tuple[Any, tuple[int, ...]]:
    """The grid of ``spacing`` mm with the image's axis directions covering its voxel centres (as MONAI's Spacing)."""
    import numpy as np

    new = np.eye(4)
    new[:3, :3] = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0) * np.asarray(spacing, dtype=float)
    corners = np.array(list(itertools.product(*[(0.0, n - 1.0) for n in shape]))).T
    corners = np.vstack([corners, np.ones(corners.shape[1])])
    out = np.linalg.solve(new, affine @ corners)[:3]
    out_shape = tuple(int(n) for n in np.round(np.ptp(out, axis=1) + 1.0))
    world = (affine @ corners)[:3]
    lowest = [i for i in range(out.shape[1]) if np.allclose(out.min(axis=1) - out[:, i], 0.0, atol=1e-3)]
    if lowest:  # the corner lowest along every output axis becomes voxel 0
        new[:3, 3] = world[:, lowest[0]]
    else:  # otherwise centre the two grids on each other
        new[:3, 3] = affine[:3, :3] @ (np.asarray(shape) / 2.0) + affine[:3, 3] - new[:3, :3] @ (np.asarray(out_shape) / 2.0)
    return new, out_shape


def _resample(data: Any, affine: Any, grid: Any, shape: tuple[int, ...], order: int) -> Any:
    import numpy as np
    from scipy import ndimage

    voxel_map = np.linalg.solve(affine, grid)  # output voxel -> input voxel
    return ndimage.affine_transform(data, voxel_map[:3, :3], voxel_map[:3, 3], output_shape=shape, order=order, mode="constant", cval=0.0)


def _pad_or_crop(data: Any, roi: Sequence[int]) -> Any:
    import numpy as np

    pad = [(max(r - n, 0) // 2, max(r - n, 0) - max(r - n, 0) // 2) for n, r in zip(data.shape, roi)]
    data = np.pad(data, pad)
    starts = [max(n // 2 - r // 2, 0) for n, r in zip(data.shape, roi)]
    return data[tuple(slice(s, s + r) for s, r in zip(starts, roi))]


def _zscore(data: Any) -> Any:
    import numpy as np

    out = np.array(data, dtype=np.float64)
    brain = out != 0
    if brain.any():
        values = out[brain]
        std = values.std()
        out[brain] = (values - values.mean()) / (std if std > 0 else 1.0)
    return out


class NaiveEDSSDataset:
    """Hand-written per-item loading: nibabel float64, reorient, resample, crop, pad, z-score; then ``tail``.

    Args:
        data: manifest entries with ``t1``, ``t2``, ``lesion`` paths and the scalar keys.
        spacing: target voxel size in mm.
        roi_size: output spatial size.
        tail: callable applied to the item dict afterwards (the bundle's random transforms), or None.
        zscore_before_tail: z-score here (no augmentation) or leave it to ``tail`` (after augmentation).
    """

    def __init__(self, data: Sequence[Mapping[str, Any]], spacing: Sequence[float], roi_size: Sequence[int], tail: Any = None, zscore_before_tail: bool = True) -> None:
        self.data, self.spacing, self.roi_size, self.tail = list(data), list(spacing), list(roi_size), tail
        self.zscore_before_tail = zscore_before_tail

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import nibabel as nib
        import numpy as np
        import torch

        entry = self.data[index]
        t1_image = nib.load(entry["t1"])
        t1, t1_affine = _to_ras(t1_image.get_fdata(), t1_image.affine)
        grid, shape = _target_grid(t1_affine, t1.shape, self.spacing)
        volumes = {"t1": _resample(t1, t1_affine, grid, shape, order=1)}
        t2_image = nib.load(entry["t2"])
        t2, t2_affine = _to_ras(t2_image.get_fdata(), t2_image.affine)
        volumes["t2"] = _resample(t2, t2_affine, grid, shape, order=1)
        if entry.get("lesion"):
            lesion_image = nib.load(entry["lesion"])
            lesion, lesion_affine = _to_ras(lesion_image.get_fdata(), lesion_image.affine)
            volumes["lesion"] = _resample(lesion, lesion_affine, grid, shape, order=0)
        brain = np.argwhere(volumes["t1"] > 0)
        low = np.maximum(brain.min(axis=0) - 2, 0)
        high = np.minimum(brain.max(axis=0) + 3, shape)
        box = tuple(slice(a, b) for a, b in zip(low, high))
        item: dict[str, Any] = {key: value for key, value in entry.items() if key not in volumes}
        for key, volume in volumes.items():
            volume = _pad_or_crop(volume[box], self.roi_size)
            if key in IMAGE_KEYS and self.zscore_before_tail:
                volume = _zscore(volume)
            item[key] = torch.from_numpy(np.ascontiguousarray(volume[None], dtype=np.float32))
        return self.tail(item) if self.tail is not None else item


class NumpyZScored:
    """The naive loader's numpy z-score over non-zero voxels (float64), in place of the bundle's ``ZScoreNonzerod``."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np
        import torch

        d = dict(data)
        for key in self.keys:
            d[key] = torch.from_numpy(_zscore(np.asarray(d[key])).astype(np.float32))
        return d


def _random_tail(chain: Any, naive: bool) -> Any:
    """The part of the bundle's chain that ``CacheDataset`` does not cache (from the first random transform)."""
    from monai.transforms import Compose, NormalizeIntensityd, Randomizable, Transform
    from monai_ms.data.transforms import ZScoreNonzerod

    transforms = list(chain.transforms)
    # where MONAI's caching datasets stop: the first random transform or the first non-Transform callable
    first = next(i for i, t in enumerate(transforms) if isinstance(t, Randomizable) or not isinstance(t, Transform))
    tail = transforms[first:]
    if naive:
        tail = [NumpyZScored(IMAGE_KEYS) if isinstance(t, (ZScoreNonzerod, NormalizeIntensityd)) else t for t in tail]
    return Compose(tail)


# --------------------------------------------------------------------------------------------------------
# one variant


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _tensor_bytes(item: Any) -> int:
    import torch

    if isinstance(item, torch.Tensor):
        return item.element_size() * item.numel()
    if isinstance(item, Mapping):
        return sum(_tensor_bytes(v) for v in item.values())
    if isinstance(item, (list, tuple)):
        return sum(_tensor_bytes(v) for v in item)
    return 0


def _bundle(manifest: str) -> Any:
    parser = bundle_parser("edss")
    parser["data_manifest"] = str(manifest)
    return parser


def _preprocessing_kwargs(parser: Any) -> dict[str, Any]:
    return {key: parser.get_parsed_content(f"train#preprocessing#{key}") for key in parser["train#preprocessing"] if key != "_target_"}


def _dataset(variant: str, parser: Any, datalist: list[dict], cache_dir: Path) -> Any:
    """The variant's dataset; all but ``naive`` are the bundle's own ``train#dataset`` with its cache overrides."""
    if variant == "naive":
        chain = parser.get_parsed_content("train#preprocessing")
        return NaiveEDSSDataset(datalist, parser["spacing"], parser["roi_size"], tail=_random_tail(chain, naive=True), zscore_before_tail=False)
    if "cache" not in parser.get():  # a bundle from before cohort_dataset: CacheDataset only
        from monai.data import Dataset

        if variant == "monai":
            return Dataset(datalist, parser.get_parsed_content("train#preprocessing"))
        if variant != "cache":
            raise RuntimeError("this bundle has no 'cache'/'cache_dtype' settings (monai_ms.data.cohort_dataset)")
        return parser.get_parsed_content("train#dataset")
    overrides = {
        "monai": {"cache": "none"},
        "cache": {"cache": "memory", "cache_dtype": None},
        "cache_upfront": {"cache": "memory", "cache_dtype": None, "cache_fill": "upfront"},
        "cache_fp16": {"cache": "memory", "cache_dtype": "float16"},
        "disk": {"cache": "disk", "cache_dir": str(cache_dir)},
    }[variant]
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("train#dataset")


def run_variant(variant: str, manifest: str, epochs: int, threads: int, num_workers: int | None = None) -> dict[str, Any]:
    """Time ``epochs`` epochs of one variant's DataLoader; memory of this process tree."""
    import torch
    from monai.data import DataLoader
    from monai.utils import set_determinism

    torch.set_num_threads(threads)
    set_determinism(seed=0)
    parser = _bundle(manifest)
    if num_workers is not None:
        parser["num_workers"] = num_workers
    datalist = parser.get_parsed_content("train#datalist")
    parser.get_parsed_content("train#preprocessing")  # imports done before the memory baseline
    batch_size, num_workers = parser["batch_size"], parser["num_workers"]
    result: dict[str, Any] = {"variant": variant, "items": len(datalist), "batch_size": batch_size, "num_workers": num_workers}
    with tempfile.TemporaryDirectory() as tmp, TreeMemorySampler() as memory:
        gc.collect()
        _malloc_trim()
        before_mb = tree_pss_mb()
        start = time.perf_counter()
        dataset = _dataset(variant, parser, datalist, Path(tmp) / "persistent")
        result["construct_s"] = time.perf_counter() - start
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=parser["train#dataloader#shuffle"], num_workers=num_workers)
        epochs_s, shapes = [], {}
        for epoch in range(epochs):
            start = time.perf_counter()
            if callable(getattr(dataset, "settle", None)):  # what SettleCacheHandler does at each epoch start
                dataset.settle()
            for batch in loader:
                shapes = {key: list(value.shape) for key, value in batch.items() if isinstance(value, torch.Tensor)}
            epochs_s.append(time.perf_counter() - start)
            if epoch == 0 and variant in ("cache", "cache_upfront", "cache_fp16"):
                if callable(getattr(dataset, "settle", None)):
                    dataset.settle()  # the worker-filled entries, now in this process (its Manager shut down)
                del batch
                gc.collect()
                result["cache_mb_untrimmed"] = tree_pss_mb() - before_mb
                _malloc_trim()  # freed 1 mm intermediates stay in glibc arenas until trimmed
                result["cache_mb"] = tree_pss_mb() - before_mb
                cache = getattr(dataset, "_cache", [])
                items = [cache[i] for i in range(len(cache))]
                result["cache_tensor_mb"] = sum(_tensor_bytes(item) for item in items) / 2**20
                result["cache_dtypes"] = sorted({str(v.dtype) for item in items[:1] for v in item.values() if isinstance(v, torch.Tensor)})
                del items
        if variant == "disk":
            result["disk_cache_mb"] = sum(f.stat().st_size for f in (Path(tmp) / "persistent").rglob("*") if f.is_file()) / 2**20
    result["epochs_s"] = epochs_s
    result["epoch1_s"] = epochs_s[0] + result["construct_s"]
    result["later_epoch_s"] = statistics.mean(epochs_s[1:]) if len(epochs_s) > 1 else None
    result["batch_shapes"] = shapes
    result["peak_tree_pss_mb"] = memory.peak_mb
    result["ru_maxrss_mb"] = ru_maxrss_mb()
    return result


def _aligned_difference(reference: Any, ours: Any, max_shift: int = 2) -> dict[str, Any]:
    """Max |difference| over our brain voxels at the integer shift (per axis) that aligns the two best."""
    import numpy as np

    a, b = np.asarray(reference, dtype=np.float64)[0], np.asarray(ours, dtype=np.float64)[0]
    best: dict[str, Any] = {}
    for shift in itertools.product(range(-max_shift, max_shift + 1), repeat=3):
        sa = tuple(slice(max(s, 0), n + min(s, 0)) for s, n in zip(shift, a.shape))
        sb = tuple(slice(max(-s, 0), n + min(-s, 0)) for s, n in zip(shift, b.shape))
        pa, pb = a[sa], b[sb]
        brain = pb != 0
        diff = float(np.abs(pa[brain] - pb[brain]).max()) if brain.any() else float("inf")
        if not best or diff < best["max_abs_diff"]:
            rim = int(((pa != 0) & ~brain).sum())
            best = {"shift_voxels": list(shift), "max_abs_diff": diff, "monai_nonzero_where_naive_zero": rim}
    return best


def equivalence(manifest: str, items: int = 2) -> dict[str, Any]:
    """The naive loader without augmentation against the bundle's deterministic ``eval`` chain.

    Reports the plain max |difference| of the final tensors, and, because a one-voxel difference of the
    brain crop shifts the whole padded volume, the max |difference| over the naive loader's brain voxels
    after the best integer shift (and the voxels MONAI leaves non-zero where the naive loader has 0).
    """
    import torch
    from monai_ms.data.transforms import paired_transforms

    parser = _bundle(manifest)
    datalist = parser.get_parsed_content("train#datalist")[:items]
    kwargs = {**_preprocessing_kwargs(parser), "stage": "eval"}
    chain = paired_transforms(**kwargs)
    naive = NaiveEDSSDataset(datalist, parser["spacing"], parser["roi_size"])
    max_abs: dict[str, float] = {}
    aligned: dict[str, list] = {}
    shapes_equal = True
    for index, entry in enumerate(datalist):
        reference, ours = chain(dict(entry)), naive[index]
        for key in ("t1", "t2", "lesion"):
            a, b = torch.as_tensor(reference[key]).float(), ours[key].float()
            shapes_equal &= tuple(a.shape) == tuple(b.shape)
            if tuple(a.shape) == tuple(b.shape):
                max_abs[key] = max(max_abs.get(key, 0.0), float((a - b).abs().max()))
                aligned.setdefault(key, []).append(_aligned_difference(a.numpy(), b.numpy()))
    return {
        "items": len(datalist),
        "shapes_equal": bool(shapes_equal),
        "max_abs_diff": max_abs,
        "aligned": aligned,
        "max_abs_diff_aligned": {key: max(r["max_abs_diff"] for r in rows) for key, rows in aligned.items()},
    }


def tail_profile(manifest: str, items: int = 8, repeats: int = 3) -> dict[str, Any]:
    """Milliseconds per item of each transform after the cache (the random tail), on one thread.

    The deterministic head runs once per item, as the cache does; then the tail runs ``repeats`` times per
    item with its own random draws (each transform fires with its probability, as in training). MONAI's
    ``NormalizeIntensityd(nonzero=True, channel_wise=True)`` is timed on the same inputs as the baseline
    of the bundle's ``ZScoreNonzerod``.
    """
    import copy

    import torch
    from monai.transforms import Compose, NormalizeIntensityd, Randomizable, Transform
    from monai.utils import set_determinism
    from monai_ms.data.transforms import ZScoreNonzerod

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        parser = _bundle(manifest)
        datalist = parser.get_parsed_content("train#datalist")[:items]
        chain = parser.get_parsed_content("train#preprocessing")
        transforms = list(chain.transforms)
        first = next(i for i, t in enumerate(transforms) if isinstance(t, Randomizable) or not isinstance(t, Transform))
        head, tail = Compose(transforms[:first]), transforms[first:]
        cached = [head(dict(entry)) for entry in datalist]
        set_determinism(seed=0)
        times: dict[str, float] = {}
        baseline = "NormalizeIntensityd (MONAI; baseline, not in the chain)"
        for _ in range(repeats):
            for item in cached:
                data = copy.deepcopy(item)
                for transform in tail:
                    if isinstance(transform, ZScoreNonzerod):
                        reference = NormalizeIntensityd(keys=transform.keys, nonzero=True, channel_wise=True)
                        inputs = {key: data[key].clone() for key in transform.keys}
                        start = time.perf_counter()
                        reference(inputs)
                        times[baseline] = times.get(baseline, 0.0) + time.perf_counter() - start
                    name = f"{type(transform).__name__}({','.join(map(str, getattr(transform, 'keys', ())))})"
                    start = time.perf_counter()
                    data = transform(data)
                    times[name] = times.get(name, 0.0) + time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
        set_determinism(seed=None)
    count = len(cached) * repeats
    per_item = {name: round(1000 * total / count, 2) for name, total in times.items()}
    chain_ms = sum(value for name, value in per_item.items() if name != baseline)
    return {"items": len(cached), "repeats": repeats, "threads": 1, "ms_per_item": per_item, "tail_ms_per_item": round(chain_ms, 2)}


# --------------------------------------------------------------------------------------------------------


def _child_run(args: argparse.Namespace, variant: str, manifest: Path, epochs: int) -> dict[str, Any]:
    if args.in_process:
        return run_variant(variant, str(manifest), epochs, args.threads, args.num_workers)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--manifest", str(manifest), "--epochs", str(epochs), "--threads", str(args.threads)]
    if args.num_workers is not None:
        command += ["--num-workers", str(args.num_workers)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"variant": variant, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's repeated runs: the first run's details, the median of its timings, every run's timings."""
    ok = [run for run in runs if "epochs_s" in run]
    if not ok:
        return runs[0]
    result = dict(ok[0])
    result["epoch_s_mean"] = statistics.median(statistics.mean(run["epochs_s"]) for run in ok)
    for key in ("epoch1_s", "later_epoch_s", "peak_tree_pss_mb"):
        values = [run[key] for run in ok if run.get(key) is not None]
        result[key] = statistics.median(values) if values else None
    result["repeats"] = [{key: run.get(key) for key in ("epochs_s", "construct_s", "epoch1_s", "later_epoch_s")} for run in runs]
    return result


def _round(values: Mapping[str, float]) -> dict[str, float]:
    return {key: round(float(value), 4) for key, value in values.items()}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        print(json.dumps(run_variant(args.child, args.manifest, args.epochs, args.threads, args.num_workers)))
        return 0
    start = time.perf_counter()
    spacing = 4.0 if args.tiny else args.spacing
    manifest = synthetic_cohort(args.sessions, spacing=spacing, tiny=args.tiny, root=Path(args.cache_dir))
    cohort_s = time.perf_counter() - start
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {','.join(VARIANTS)}")
    has_datasets = "cache" in _bundle(str(manifest)).get()
    results: dict[str, Any] = {}
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    for _ in range(max(args.repeats, 1)):  # interleaved, so a slow spell of the machine hits every variant
        for variant in variants:
            if variant in ("cache_upfront", "cache_fp16", "disk") and not has_datasets:
                results[variant] = {"variant": variant, "skipped": "the bundle has no cache/cache_dtype settings yet (monai_ms.data.cohort_dataset)"}
                continue
            epochs = args.epochs if variant in CACHED else args.uncached_epochs
            runs[variant].append(_child_run(args, variant, manifest, epochs))
    for variant, done in runs.items():
        if done:
            results[variant] = _median_run(done)
    check = equivalence(str(manifest))
    profile = tail_profile(str(manifest), items=min(8, args.sessions), repeats=1 if args.tiny else 3)

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if not a or not b else round(a / b, 2)

    naive_s = results.get("naive", {}).get("epoch_s_mean")
    monai_s = results.get("monai", {}).get("epoch_s_mean")
    # the uncached chain's own first epoch (fresh process: lazy imports, cold allocator), the like-for-like
    # comparison for a cache-filling epoch 1
    monai_first_s = results.get("monai", {}).get("epoch1_s")
    summary: dict[str, Any] = {"naive_epoch_s": naive_s, "monai_uncached_epoch_s": monai_s, "monai_uncached_epoch1_s": monai_first_s}
    for name in CACHED:
        r = results.get(name, {})
        if "epochs_s" in r:
            summary[f"{name}_epoch1_s"] = r["epoch1_s"]
            summary[f"{name}_later_epoch_s"] = r["later_epoch_s"]
            summary[f"speedup_{name}_later_vs_naive"] = ratio(naive_s, r["later_epoch_s"])
            summary[f"{name}_epoch1_vs_monai_uncached"] = ratio(r["epoch1_s"], monai_s)
            summary[f"{name}_epoch1_vs_monai_uncached_epoch1"] = ratio(r["epoch1_s"], monai_first_s)
    summary["speedup_monai_uncached_vs_naive"] = ratio(naive_s, monai_s)
    cache = results.get("cache", {})
    if "cache_mb" in cache:
        summary["cache_mb"], summary["cache_tensor_mb"] = round(cache["cache_mb"], 1), round(cache["cache_tensor_mb"], 1)
        summary["cache_overhead_ratio"] = ratio(cache["cache_mb"], cache["cache_tensor_mb"])
    summary["peak_tree_pss_mb"] = {name: round(r["peak_tree_pss_mb"], 1) for name, r in results.items() if "peak_tree_pss_mb" in r}
    result = {
        "benchmark": "data_pipeline",
        "command": command_line(__file__, argv),
        "machine": machine_info(args.threads),
        "settings": {
            "bundle": "edss", "sessions": args.sessions, "cohort_spacing_mm": spacing, "tiny_cohort": args.tiny, "manifest": str(manifest),
            "epochs_cached": args.epochs, "epochs_uncached": args.uncached_epochs, "repeats": args.repeats,
            "subprocess_per_variant": not args.in_process,
            "num_workers_override": args.num_workers,
        },
        "cohort_prepare_s": round(cohort_s, 2),
        "equivalence_naive_vs_monai": check,
        "tail_profile": profile,
        "summary": summary,
        "variants": results,
    }
    from monai_ms.io import write_json

    write_json(result, args.out)

    def fmt(value: Any, unit: str = "s") -> str:
        return "n/a" if value is None else f"{value:.2f}{unit}"

    line = (
        f"data_pipeline edss, {args.sessions} sessions at {spacing:g} mm, batch {cache.get('batch_size', '?')} x {cache.get('num_workers', '?')} workers: "
        f"naive {fmt(naive_s)}/epoch, monai uncached {fmt(monai_s)}, cache epoch1 {fmt(summary.get('cache_epoch1_s'))} "
        f"({summary.get('cache_epoch1_vs_monai_uncached')}x the uncached mean, {summary.get('cache_epoch1_vs_monai_uncached_epoch1')}x its epoch 1) "
        f"epochs2+ {fmt(summary.get('cache_later_epoch_s'))} ({summary.get('speedup_cache_later_vs_naive')}x vs naive); "
        f"cache {summary.get('cache_mb')} MB for {summary.get('cache_tensor_mb')} MB of tensors; "
    )
    for name in ("cache_upfront", "cache_fp16", "disk"):
        r = results.get(name, {})
        line += f"{name} " + (f"epoch1 {fmt(r['epoch1_s'])} epochs2+ {fmt(r['later_epoch_s'])}; " if "epochs_s" in r else f"{r.get('skipped') or r.get('error', 'not run')}; ")
    line += f"naive vs monai max |diff| {_round(check['max_abs_diff'])}, after best 1-voxel alignment {_round(check['max_abs_diff_aligned'])}; "
    line += f"after the cache {profile['tail_ms_per_item']:.1f} ms/item on 1 thread -> {args.out}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
