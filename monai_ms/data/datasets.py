"""The bundles' dataset: one switch between a RAM cache, an on-disk cache and no cache.

- ``cache="memory"``: ``monai.data.CacheDataset``: the deterministic preprocessing runs once, the results
  live in RAM (fastest; memory grows with the cohort). With ``paired_transforms(cache_dtype="float16")``
  the cached images take half the memory. Who fills the cache:

  - ``fill="workers"`` (:class:`WorkerFilledCacheDataset`): the DataLoader's worker processes, during the
    first epoch, while it trains. The first batch comes at once, and the first epoch costs no more than an
    uncached one. :class:`SettleCacheHandler` then moves the entries into the training process, so later
    epochs' workers read them as fast as MONAI's own cache.
  - ``fill="upfront"``: MONAI's default; ``num_workers`` threads of this process fill it before the first
    batch, with a progress bar (about 1.2x the time of an uncached epoch on 2 cores, then the epoch itself).
- ``cache="disk"``: ``monai.data.PersistentDataset``: preprocessed volumes are written once to
  ``cache_dir`` and read back every epoch, for cohorts larger than RAM. The cache file name hashes the
  item (paths, metadata, and each input file's size and modification time, so a replaced scan is not
  served stale) and the deterministic transform chain (so a changed spacing or ROI is not either).
- ``cache="none"``: ``monai.data.Dataset``: everything every epoch (bounded memory, slowest).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import pickle_hashing

__all__ = ["CACHE_MODES", "CACHE_FILLS", "cohort_dataset", "hash_item_with_file_stats", "WorkerFilledCacheDataset"]

CACHE_MODES = ("memory", "disk", "none")
CACHE_FILLS = ("workers", "upfront")
SHM = "/dev/shm"
FOLDER_PREFIX = "monai_ms_cache_"  # + the owner's pid: folders of dead owners are removed
SHM_MIN_FREE = 2 * 2**30  # bytes; less (Docker's default 64 MB) and the worker-filled cache goes to TMPDIR

logger = logging.getLogger(__name__)


class _SettlingCache:
    """The list-like cache of :class:`WorkerFilledCacheDataset` (MONAI's ``runtime_cache`` container).

    Entries live in a plain list of the process that built the dataset (``local``), which forked DataLoader
    workers read at no cost. An entry a worker computes cannot reach that list, so the worker writes it to
    a private temporary folder (``torch.save``, then an atomic rename), and :meth:`settle`, run in the
    building process, loads it into ``local`` and deletes the file. The folder is removed once every entry
    is local, or when the dataset is garbage-collected.

    Files rather than a ``multiprocessing.Manager`` list: 1.3 ms to load an 80x96x80 T1+T2+mask entry
    against 25 ms through a Manager, which also passes tensors as shared-memory handles. The folder is in
    ``/dev/shm`` (RAM) when it has at least ``SHM_MIN_FREE`` free, as it has on most Linux machines: on a
    disk, writing the entries back costs about 3% of the first epoch. Docker allows 64 MB there by default,
    so the system temporary folder (``TMPDIR``) is used then. An entry that does not fit (no space left)
    is not cached this epoch; it is computed again, and offered again, in the next one. The folder's name
    holds the owner's pid, so the folders of runs killed before their cleanup are removed by the next run.

    Args:
        size: number of entries.
        root: parent of the private folder; ``None``: ``/dev/shm`` or ``TMPDIR`` as above.
    """

    def __init__(self, size: int, root: str | None = None) -> None:
        self.owner_pid = os.getpid()
        self.local: list[Any] = [None] * size
        self.folder: str | None = None
        if size:
            root = root or _scratch_root() or tempfile.gettempdir()
            _remove_orphans(root)
            self.folder = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{self.owner_pid}_", dir=root)
        self._cleanup = weakref.finalize(self, _remove_folder, self.folder, self.owner_pid) if size else None

    def __len__(self) -> int:
        return len(self.local)

    def _path(self, index: int) -> str:
        return os.path.join(str(self.folder), f"{index}.pt")

    def _load(self, index: int) -> Any:
        if self.folder is None or not os.path.exists(self._path(index)):
            return None
        # written by this dataset's own workers into a folder only this user can read
        return torch.load(self._path(index), weights_only=False)

    def __getitem__(self, index: int) -> Any:
        item = self.local[index]
        return self._load(index) if item is None else item

    def __setitem__(self, index: int, item: Any) -> None:
        if os.getpid() == self.owner_pid or self.folder is None:
            self.local[index] = item
            return
        partial = f"{self._path(index)}.{os.getpid()}.partial"
        try:
            torch.save(item, partial)
            os.replace(partial, self._path(index))  # never a half-written entry under the final name
        except OSError as error:
            with contextlib.suppress(OSError):
                os.remove(partial)
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            logger.warning(f"cache entry {index} not kept this epoch: no space left in {self.folder}")

    def settle(self) -> int:
        """Load the entries workers wrote into ``local``; returns how many entries are still missing."""
        if self.folder is None:
            return sum(item is None for item in self.local)
        if os.getpid() != self.owner_pid:
            raise RuntimeError("settle() must run in the process that built the dataset, not in a DataLoader worker")
        for index, item in enumerate(self.local):
            if item is None and (item := self._load(index)) is not None:
                self.local[index] = item
                os.remove(self._path(index))
        missing = sum(item is None for item in self.local)
        if not missing:
            self._cleanup()
            self.folder, self._cleanup = None, None
        return missing

    def __getstate__(self) -> dict[str, Any]:  # spawned DataLoader workers: no finalizer of their own
        return {**self.__dict__, "_cleanup": None}


def _scratch_root() -> str | None:
    """``/dev/shm`` when it is a writable folder with ``SHM_MIN_FREE`` bytes free, else ``None`` (``TMPDIR``)."""
    try:
        if os.path.isdir(SHM) and os.access(SHM, os.W_OK) and shutil.disk_usage(SHM).free >= SHM_MIN_FREE:
            return SHM
    except OSError:
        pass
    return None


def _remove_orphans(root: str) -> None:
    """Remove the folders of runs that were killed before their cleanup ran (``/dev/shm`` is RAM)."""
    if os.name != "posix":  # os.kill(pid, 0) probes a process only on POSIX (on Windows it sends Ctrl+C)
        return
    for folder in Path(root).glob(f"{FOLDER_PREFIX}*_*"):
        try:
            pid = int(folder.name[len(FOLDER_PREFIX) :].split("_")[0])
            os.kill(pid, 0)  # raises if no such process
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, OSError):  # not ours, or another user's live process
            continue


def _remove_folder(folder: str | None, owner_pid: int) -> None:
    if folder and os.getpid() == owner_pid:
        shutil.rmtree(folder, ignore_errors=True)


class WorkerFilledCacheDataset(CacheDataset):
    """``CacheDataset`` whose cache the DataLoader workers fill during the first epoch.

    MONAI's ``CacheDataset`` runs the deterministic transforms of every item before the first batch, in
    threads of the training process. Here each item is computed the first time a worker asks for it, as in
    an uncached epoch, and kept (MONAI's ``runtime_cache`` with a container that ends up in this process).
    Call :meth:`settle` in this process between epochs (:class:`monai_ms.engines.SettleCacheHandler` does, at
    each epoch start) so that the next epoch's workers find the entries in memory they share with it.

    Args:
        data: datalist entries.
        transform: a ``Compose`` whose deterministic head is cached.
        cache_rate: share of items cached; the rest run every transform every epoch.
        copy_cache: deep-copy a cached entry before the random transforms (keep ``True`` unless every
            random transform is known not to modify its input in place).
    """

    def __init__(self, data: Sequence, transform: Callable, cache_rate: float = 1.0, copy_cache: bool = True) -> None:
        super().__init__(data, transform, cache_rate=cache_rate, runtime_cache=True, copy_cache=copy_cache, progress=False)

    def set_data(self, data: Sequence) -> None:
        """Set the items; the cache starts empty (see ``monai.data.CacheDataset.set_data``)."""
        super().set_data(data)
        self._cache = _SettlingCache(self.cache_num)

    def settle(self) -> int:
        """Move the entries workers have computed into this process; returns how many are still missing."""
        return self._cache.settle()


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
    fill: str = "workers",
) -> Dataset:
    """Build the dataset of a bundle stage with the chosen cache.

    Args:
        data: datalist entries (from ``monai_ms.data.load_datalist``).
        transform: the stage's chain (``paired_transforms``).
        cache: ``"memory"``, ``"disk"`` or ``"none"`` (see the module docstring).
        cache_rate: share of items cached in RAM (``cache="memory"``).
        num_workers: threads filling the RAM cache (``cache="memory", fill="upfront"``).
        cache_dir: folder of the on-disk cache (``cache="disk"``); created if missing. Safe to share
            between runs and stages: entries are keyed by item, file stats and transform chain.
        progress: progress bar while filling the RAM cache (``fill="upfront"``).
        fill: who fills the RAM cache: ``"workers"`` (the DataLoader's, during the first epoch) or
            ``"upfront"`` (``num_workers`` threads, before the first batch); see the module docstring.

    Raises:
        ValueError: an unknown ``cache`` or ``fill``, or ``cache="disk"`` without ``cache_dir``.

    Examples:
        >>> ds = cohort_dataset(datalist, paired_transforms("train"), cache="disk", cache_dir="cache")  # doctest: +SKIP
    """
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
    if fill not in CACHE_FILLS:
        raise ValueError(f"fill must be one of {CACHE_FILLS}, got {fill!r}")
    if cache == "memory" and fill == "workers":
        return WorkerFilledCacheDataset(data, transform, cache_rate=cache_rate)
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
