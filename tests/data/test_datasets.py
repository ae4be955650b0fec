"""The cache switch: RAM (float32 or float16; filled by the DataLoader workers or upfront), on disk keyed by item,
file stats and chain, or none."""

from __future__ import annotations

import os

import pytest
import torch
from _nifti_factory import write_session

from monai_ms.data import cohort_dataset, paired_transforms

SETTINGS = {"target_key": "edss", "demographics": True, "spacing": 4.0, "roi_size": (16, 16, 16)}


@pytest.fixture()
def datalist(tmp_path):
    items = []
    for i in range(2):
        t1, t2 = tmp_path / f"s{i}" / "t1.nii.gz", tmp_path / f"s{i}" / "t2.nii.gz"
        write_session(t1, t2, seed=i)
        items.append({"session_id": f"s{i}", "t1": str(t1), "t2": str(t2), "age": 40 + i, "sex": "F", "edss": 2.0})
    return items


def test_float16_cache_halves_the_cached_bytes_and_serves_float32(datalist):
    full = cohort_dataset(datalist, paired_transforms("eval", **SETTINGS), fill="upfront", progress=False)
    half = cohort_dataset(datalist, paired_transforms("eval", cache_dtype="float16", **SETTINGS), fill="upfront", progress=False)
    assert half._cache[0]["t1"].dtype == torch.float16  # what stays in RAM
    cached = [sum(item[k].numel() * item[k].element_size() for k in ("t1", "t2")) for item in (full._cache[0], half._cache[0])]
    assert cached[1] * 2 == cached[0]
    served_full, served_half = full[0], half[0]
    assert served_half["t1"].dtype == torch.float32
    for key in ("t1", "t2"):
        # the same brain voxels (resampling residues are zeroed before the cache, so none underflows),
        # and a z-score that float16 rounding (3 significant digits) barely moves
        assert torch.equal(served_half[key] != 0, served_full[key] != 0)
        assert torch.allclose(served_half[key], served_full[key], atol=5e-3)


def test_float16_cache_in_the_training_chain_keeps_augmentation_after_the_cache(datalist):
    chain = paired_transforms("train", cache_dtype="float16", **SETTINGS)
    dataset = cohort_dataset(datalist, chain, fill="upfront", progress=False)
    assert dataset._cache[0]["t1"].dtype == torch.float16
    assert dataset[0]["t1"].dtype == torch.float32 and dataset[0]["t1"].shape == (1, 16, 16, 16)


def test_disk_cache_is_reused_and_invalidated_by_a_changed_chain_or_file(datalist, tmp_path):
    cache = tmp_path / "cache"
    first = cohort_dataset(datalist, paired_transforms("eval", **SETTINGS), cache="disk", cache_dir=cache)
    reference = first[0]["t1"]
    files = set(cache.glob("*.pt"))
    assert len(files) == 1
    # the same chain and files: served from disk, no new entry
    again = cohort_dataset(datalist, paired_transforms("eval", **SETTINGS), cache="disk", cache_dir=cache)
    assert torch.equal(again[0]["t1"], reference) and set(cache.glob("*.pt")) == files
    # another spacing: another entry (a stale cache would serve the old grid)
    other = cohort_dataset(datalist, paired_transforms("eval", **{**SETTINGS, "spacing": 3.0}), cache="disk", cache_dir=cache)
    other[0]
    assert len(set(cache.glob("*.pt"))) == 2
    # a replaced scan at the same path: another entry too
    write_session(datalist[0]["t1"], datalist[0]["t2"], seed=7)
    os.utime(datalist[0]["t1"], ns=(1, 1))
    changed = cohort_dataset(datalist, paired_transforms("eval", **SETTINGS), cache="disk", cache_dir=cache)
    assert not torch.equal(changed[0]["t1"], reference)
    assert len(set(cache.glob("*.pt"))) == 3


def test_no_cache_and_bad_switches(datalist):
    plain = cohort_dataset(datalist, paired_transforms("eval", **SETTINGS), cache="none")
    assert plain[1]["t1"].shape == (1, 16, 16, 16)
    with pytest.raises(ValueError, match="cache must be one of"):
        cohort_dataset(datalist, paired_transforms("eval", **SETTINGS), cache="ram")
    with pytest.raises(ValueError, match="needs a cache_dir"):
        cohort_dataset(datalist, paired_transforms("eval", **SETTINGS), cache="disk")
    with pytest.raises(ValueError, match="fill must be one of"):
        cohort_dataset(datalist, paired_transforms("eval", **SETTINGS), fill="lazily")
    with pytest.raises(ValueError, match="cache_dtype must be a torch dtype"):
        paired_transforms("eval", cache_dtype="half-ish", **SETTINGS)


def _epoch(dataset, num_workers):
    from monai.data import DataLoader

    return {item["session_id"][0]: item for item in DataLoader(dataset, batch_size=1, num_workers=num_workers)}


def test_workers_fill_the_cache_in_the_first_epoch_and_settle_moves_it_here(datalist):
    chain = paired_transforms("eval", **SETTINGS)
    dataset = cohort_dataset(datalist, chain)  # fill="workers", the bundles' default
    folder = dataset._cache.folder
    assert all(item is None for item in dataset._cache.local)  # nothing computed before the first batch
    first = _epoch(dataset, num_workers=2)
    # the workers' entries wait, complete, in the private folder: nothing reached this process yet
    assert sorted(os.listdir(folder)) == ["0.pt", "1.pt"] and all(item is None for item in dataset._cache.local)
    assert dataset.settle() == 0
    assert not os.path.exists(folder) and dataset._cache.folder is None
    upfront = cohort_dataset(datalist, chain, fill="upfront", progress=False)
    for index in range(len(datalist)):
        assert torch.equal(dataset._cache.local[index]["t1"], upfront._cache[index]["t1"])
    second = _epoch(dataset, num_workers=2)  # served from this process's memory
    for session in first:
        for key in ("t1", "t2"):
            assert torch.equal(first[session][key], second[session][key])


def test_a_half_written_entry_is_never_served_and_the_item_is_computed_again(datalist):
    dataset = cohort_dataset(datalist, paired_transforms("eval", **SETTINGS))
    folder = dataset._cache.folder
    with open(os.path.join(folder, "0.pt.1234.partial"), "wb") as handle:
        handle.write(b"interrupted")  # a worker killed mid-write leaves only this
    assert dataset.settle() == 2
    _epoch(dataset, num_workers=0)  # in this process: entries go straight to memory, no files
    assert dataset.settle() == 0 and not os.path.exists(folder)


def test_settle_only_runs_in_the_process_that_built_the_dataset(datalist):
    dataset = cohort_dataset(datalist, paired_transforms("eval", **SETTINGS))
    dataset._cache.owner_pid = -1  # as seen from a DataLoader worker
    with pytest.raises(RuntimeError, match="not in a DataLoader worker"):
        dataset.settle()


def test_the_private_folder_goes_with_the_dataset(datalist):
    import gc

    dataset = cohort_dataset(datalist, paired_transforms("eval", **SETTINGS))
    folder = dataset._cache.folder
    _epoch(dataset, num_workers=2)
    assert os.listdir(folder)
    del dataset
    gc.collect()
    assert not os.path.exists(folder)


def test_settle_handler_runs_at_each_epoch_start_of_a_real_engine(datalist):
    from ignite.engine import Engine, Events
    from monai.data import DataLoader

    from monai_ms.engines import SettleCacheHandler

    dataset = cohort_dataset(datalist, paired_transforms("train", **SETTINGS))
    missing = []
    engine = Engine(lambda engine, batch: batch["t1"].shape)
    SettleCacheHandler([dataset, datalist]).attach(engine)  # a plain list is skipped
    engine.add_event_handler(Events.EPOCH_STARTED, lambda engine: missing.append(sum(i is None for i in dataset._cache.local)))
    engine.run(DataLoader(dataset, batch_size=2, num_workers=2), max_epochs=3)
    assert missing == [2, 0, 0] and dataset._cache.folder is None


def test_an_entry_that_does_not_fit_is_computed_again_next_epoch(datalist, monkeypatch):
    import errno

    import monai_ms.data.datasets as datasets

    dataset = cohort_dataset(datalist, paired_transforms("eval", **SETTINGS))
    dataset._cache.owner_pid = -1  # as seen from a DataLoader worker: entries go to files
    real_save = torch.save

    def full_disk(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)  # part of the entry is written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.torch, "save", full_disk)
    dataset[0]  # served all the same
    assert os.listdir(dataset._cache.folder) == []  # no entry, no partial file
    monkeypatch.setattr(datasets.torch, "save", real_save)
    dataset[0]  # offered again
    assert os.listdir(dataset._cache.folder) == ["0.pt"]

    def denied(obj, path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(datasets.torch, "save", denied)
    with pytest.raises(PermissionError):  # any other failure is not hidden
        dataset[1]


def test_a_killed_runs_folder_is_removed_by_the_next_run(datalist, tmp_path):
    import subprocess
    import sys

    from monai_ms.data.datasets import FOLDER_PREFIX, _SettlingCache

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    orphan = tmp_path / f"{FOLDER_PREFIX}{done.stdout.strip()}_abc"  # its owner has exited
    orphan.mkdir()
    (orphan / "0.pt").write_bytes(b"entry of a killed run")
    alive = tmp_path / f"{FOLDER_PREFIX}{os.getpid()}_def"  # a running owner's folder stays
    alive.mkdir()
    cache = _SettlingCache(2, root=str(tmp_path))
    assert not orphan.exists() and alive.exists() and os.path.isdir(cache.folder)
