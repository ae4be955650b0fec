"""The bundles' dataset: one switch between a RAM cache, an on-disk cache and no cache.

- ``cache="memory"``: ``monai.data.CacheDataset``: the deterministic preprocessing runs once, the results
  live in RAM (fastest; memory grows with the cohort). With ``paired_transforms(cache_dtype="float16")``
  the cached images take half the memory.
- ``cache="disk"``: ``monai.data.PersistentDataset``: preprocessed volumes are written once to
  ``cache_dir`` and read back every epoch, for cohorts larger than RAM. The cache file name hashes the
  item (paths, metadata, and each input file's size and modification time, so a replaced scan is not
  served stale) and the deterministic transform chain (so a changed spacing or ROI is not either).
- ``cache="none"``: ``monai.data.Dataset``: everything every epoch (bounded memory, slowest).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import pickle_hashing

__all__ = ["CACHE_MODES", "cohort_dataset", "hash_item_with_file_stats"]

CACHE_MODES = ("memory", "disk", "none")


def hash_item_with_file_stats(item: Mapping[str, Any]) -> bytes:
    """Hash a datalist item together with the size and mtime of every existing file it names.

    Args:
        item: a datalist entry (``{"t1": path, "t2": path, "age": ..., ...}``).

    Returns:
        an md5 hex digest as bytes (the form ``PersistentDataset`` expects of ``hash_func``).
    """
    stats = {}
    for key, value in sorted(item.items(), key=lambda kv: str(kv[0])):
        if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
            stat = os.stat(value)
            stats[str(key)] = (stat.st_size, stat.st_mtime_ns)
    return pickle_hashing({"item": dict(item), "files": stats})


def cohort_dataset(
    data: Sequence[Mapping[str, Any]],
    transform: Callable,
    cache: str = "memory",
    cache_rate: float = 1.0,
    num_workers: int | None = 1,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Dataset:
    """Build the dataset of a bundle stage with the chosen cache.

    Args:
        data: datalist entries (from ``monai_ms.data.load_datalist``).
        transform: the stage's chain (``paired_transforms``).
        cache: ``"memory"``, ``"disk"`` or ``"none"`` (see the module docstring).
        cache_rate: share of items cached in RAM (``cache="memory"``).
        num_workers: threads filling the RAM cache (``cache="memory"``).
        cache_dir: folder of the on-disk cache (``cache="disk"``); created if missing. Safe to share
            between runs and stages: entries are keyed by item, file stats and transform chain.
        progress: progress bar while filling the RAM cache.

    Raises:
        ValueError: an unknown ``cache`` or ``cache="disk"`` without ``cache_dir``.

    Examples:
        >>> ds = cohort_dataset(datalist, paired_transforms("train"), cache="disk", cache_dir="cache")  # doctest: +SKIP
    """
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
    if cache == "memory":
        return CacheDataset(data, transform, cache_rate=cache_rate, num_workers=num_workers, progress=progress)
    if cache == "none":
        return Dataset(data, transform)
    if not cache_dir:
        raise ValueError("cache='disk' needs a cache_dir (e.g. --cache_dir /scratch/monai_ms_cache)")
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    return PersistentDataset(
        data, transform, cache_dir=cache_dir, hash_func=hash_item_with_file_stats, hash_transform=pickle_hashing
    )
