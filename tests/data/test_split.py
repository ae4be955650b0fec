"""split_entries: by subject, stratified, reproducible, coarsened when it must be, refusals; split CLI."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from _nifti_factory import manifest_for

from monai_ms.cli import main
from monai_ms.data.manifest import ManifestError, load_datalist, read_manifest, write_manifest
from monai_ms.data.split import split_entries

SPLITS = ("training", "validation", "testing")


def cohort(n_subjects: int = 120, seed: int = 0) -> list[dict]:
    """Entries only (no files): ~70% female, EDSS spread over the four bins, 1-3 sessions per subject."""
    rng = np.random.default_rng(seed)
    entries = []
    for s in range(n_subjects):
        sex = "F" if rng.random() < 0.7 else "M"
        edss = float(rng.choice(np.arange(0, 9.5, 0.5)))
        for v in range(int(rng.integers(1, 4))):
            entries.append(
                {"subject": f"P{s:03d}", "session": f"P{s:03d}-{v}", "sex": sex, "edss": min(10.0, edss + 0.5 * v)}
            )
    return entries


def _subjects(split: dict, name: str) -> set[str]:
    return {e["subject"] for e in split[name]}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_subject_in_two_splits_and_every_session_once(seed):
    entries = cohort()
    split = split_entries(entries, seed=seed)
    sets = [_subjects(split, name) for name in SPLITS]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sorted(e["session"] for name in SPLITS for e in split[name]) == sorted(e["session"] for e in entries)
    assert split["split"]["subjects"] == {"training": 84, "validation": 18, "testing": 18}  # 0.7 / 0.15 / 0.15


def test_stratification_roughly_preserved():
    entries = cohort(200)
    split = split_entries(entries, val_fraction=0.2, test_fraction=0.2, seed=3)
    info = split["split"]
    assert info["stratified_by"] == ["sex", "edss"] and info["note"] is None
    overall = {s: e["sex"] for e in entries for s in [e["subject"]]}
    female = sum(v == "F" for v in overall.values()) / len(overall)
    for name in SPLITS:
        counts = info["strata"][name]["sex"]
        assert abs(counts["F"] / sum(counts.values()) - female) < 0.04, (name, counts)
        bins = info["strata"][name]["edss"]
        assert len(bins) == 4 and min(bins.values()) >= 0.15 * sum(bins.values()) / 2


def test_reproducible_from_seed_whatever_the_entry_order():
    entries = cohort()
    first = split_entries(entries, seed=7)
    shuffled = entries[:]
    random.Random(0).shuffle(shuffled)
    again = split_entries(shuffled, seed=7)
    assert all(_subjects(first, name) == _subjects(again, name) for name in SPLITS)
    other = split_entries(entries, seed=8)
    assert _subjects(first, "testing") != _subjects(other, "testing")


def test_folds_partition_the_non_test_subjects():
    entries = cohort(60)
    split = split_entries(entries, test_fraction=0.2, folds=4, seed=0)
    folds = split["folds"]
    assert len(folds) == 4 and [e["session"] for e in split["validation"]] == folds[0]
    pool = split["training"] + split["validation"]
    assert all(isinstance(e["fold"], int) for e in pool) and all("fold" not in e for e in split["testing"])
    by_subject = {}
    for entry in pool:
        assert by_subject.setdefault(entry["subject"], entry["fold"]) == entry["fold"]  # one fold per subject
        assert entry["session"] in folds[entry["fold"]]
    sizes = Counter(by_subject.values())
    assert max(sizes.values()) - min(sizes.values()) <= 2  # 48 subjects -> about 12 each
    assert split["split"]["val_fraction"] is None and split["split"]["folds"] == 4


def test_small_strata_coarsen_and_say_so():
    entries = cohort(12, seed=4)
    split = split_entries(entries, val_fraction=0.25, test_fraction=0.25, seed=0)
    info = split["split"]
    assert info["stratify"] == ["sex", "edss"] and info["stratified_by"] in (["sex"], [])
    assert "stratifying by sex+edss is not possible" in info["note"]
    lonely = [
        {"subject": "A", "session": "a", "sex": "F"},
        {"subject": "B", "session": "b", "sex": "M"},
        {"subject": "C", "session": "c", "sex": "F"},
    ]
    info = split_entries(lonely, val_fraction=0.3, test_fraction=0, stratify=("sex",))["split"]
    assert info["stratified_by"] == [] and "stratum M has 1 subject" in info["note"]


@pytest.mark.parametrize(
    "kwargs, n_subjects, message",
    [
        ({"folds": 5, "test_fraction": 0}, 4, "5 folds need at least 5 non-test subjects; there are 4 subjects"),
        ({"folds": 1}, 10, "folds must be an integer >= 2"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, 10, r"val_fraction \+ test_fraction must be < 1"),
        ({"val_fraction": -0.1}, 10, r"val_fraction must be a number in \[0, 1\), got -0.1"),
        ({"test_fraction": 1.0}, 10, r"test_fraction must be a number in \[0, 1\), got 1.0"),
        ({"val_fraction": 0.3, "test_fraction": 0.3}, 2, "validation 1 \\+ testing 1 subjects leave training empty"),
        ({"stratify": ("age",)}, 10, "stratify must be a subset of"),
    ],
)
def test_refusals_are_clear(kwargs, n_subjects, message):
    entries = [{"subject": f"S{i}", "session": f"S{i}-1", "sex": "F"} for i in range(n_subjects)]
    with pytest.raises(ManifestError, match=message):
        split_entries(entries, **kwargs)


def test_entries_without_subject_are_refused_by_name():
    with pytest.raises(ManifestError, match=r"entry 1 \(session x\): subject must be a non-empty string, got None"):
        split_entries([{"subject": "A", "session": "a"}, {"session": "x"}])


def test_cli_split_moves_relative_paths_with_the_manifest(tmp_path, capsys):
    root = tmp_path / "cohort"
    manifest = manifest_for(root, n_subjects=6)
    source = write_manifest(manifest, root / "manifest.json")
    out = tmp_path / "elsewhere" / "folds.json"
    assert (
        main(["manifest", "split", str(source), "--out", str(out), "--folds", "2", "--test", "0.2", "--seed", "1"]) == 0
    )
    assert "2 folds (validation = fold 0)" in capsys.readouterr().out
    new = read_manifest(out)
    assert new["training"][0]["t1"].startswith("../cohort/T1/") and len(new["folds"]) == 2
    assert len(load_datalist(out, "validation", fold=1, task="edss")) >= 1  # the files are found from the new place
    before = source.read_bytes()
    assert main(["manifest", "split", str(source), "--out", str(source), "--overwrite"]) == 1
    assert "input file" in capsys.readouterr().err and source.read_bytes() == before
    assert main(["manifest", "split", str(source), "--out", str(out)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
