"""The cache switch: RAM (float32 or float16), on disk keyed by item, file stats and chain, or none."""

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
    full = cohort_dataset(datalist, paired_transforms("eval", **SETTINGS), progress=False)
    half = cohort_dataset(datalist, paired_transforms("eval", cache_dtype="float16", **SETTINGS), progress=False)
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
    dataset = cohort_dataset(datalist, chain, progress=False)
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
    with pytest.raises(ValueError, match="cache_dtype must be a torch dtype"):
        paired_transforms("eval", cache_dtype="half-ish", **SETTINGS)
