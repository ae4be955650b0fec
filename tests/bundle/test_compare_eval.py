"""``monai-ms compare-eval`` (:mod:`monai_ms.bundle.compare`): two evaluations of one split, paired."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monai_ms.bundle.compare import ComparisonError, compare_evaluations, compare_tables, detect_task
from monai_ms.cli import main
from monai_ms.engines.metrics.bootstrap import resample_indices
from monai_ms.engines.metrics.segmentation import segmentation_metrics, summarize_segmentation


def _segmentations(errors: int, seed: int) -> pd.DataFrame:
    """Per-scan rows of the real metric function: 12 scans of 6 subjects, 9 with a lesion, ``errors`` voxels wrong."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(12):
        truth = np.zeros((12, 12, 12), bool)
        if i % 4:
            truth[3:8, 3:8, 3:8] = True
        pred = truth.copy()
        flat = pred.reshape(-1)
        flat[rng.choice(flat.size, errors + int(rng.integers(0, 3)), replace=False)] ^= True
        rows.append({"session": f"s{i}", "subject": f"P{i // 2}", **segmentation_metrics(pred, truth, spacing=2.0)})
    return pd.DataFrame(rows)


def _evaluation(folder: Path, table: pd.DataFrame, name: str, manifest: str = "m1", split: str = "validation") -> Path:
    """An evaluation output folder as ``run evaluating`` leaves it: metrics.json with provenance, and the table."""
    folder.mkdir()
    provenance = {"split": split, "fold": None, "manifest_sha256": manifest, "bundle": "b", "bundle_version": "0.6.0"}
    (folder / "metrics.json").write_text(json.dumps({"split": split, "provenance": provenance}))
    table.to_csv(folder / name, index=False)
    return folder


def test_two_segmenters_are_compared_on_the_mean_dice_of_metrics_json(tmp_path, capsys):
    """lesion_seg: each side is exactly the summary's mean Dice (scans with lesions), the difference is decided for a
    segmenter with far fewer wrong voxels, either way round, and the interval is that of paired subject resamples."""
    coarse, fine = _segmentations(40, 0), _segmentations(4, 1)
    result = compare_tables("lesion_seg", coarse, fine, n_resamples=300)
    expected = [summarize_segmentation(t.to_dict("records"))["mean_dice"] for t in (coarse, fine)]
    assert result["first"] == pytest.approx(expected[0]) and result["second"] == pytest.approx(expected[1])
    assert result["n_sessions"] == 12 and result["n_subjects"] == 6 and result["n_sessions_with_lesions"] == 9
    differences = [
        summarize_segmentation(fine.iloc[i].to_dict("records"))["mean_dice"]
        - summarize_segmentation(coarse.iloc[i].to_dict("records"))["mean_dice"]
        for i in resample_indices(fine["subject"].tolist(), 300, 0)
    ]
    assert result["difference_ci95"] == pytest.approx(list(np.nanpercentile(differences, [2.5, 97.5])))
    assert result["decided"] == "second better" and compare_tables("lesion_seg", fine, coarse, 300)["decided"] == "first better"
    # rows in another order pair by session, not by position: the same resamples, the same interval
    shuffled = compare_tables("lesion_seg", coarse.iloc[::-1], fine, 300)
    assert shuffled["difference_ci95"] == pytest.approx(result["difference_ci95"]) and shuffled["undefined_resamples"] == 0

    first = _evaluation(tmp_path / "default", coarse, "per_scan.csv")
    second = _evaluation(tmp_path / "variant", fine, "per_scan.csv")
    assert detect_task(first) == "lesion_seg"
    out = tmp_path / "compare.json"
    assert main(["compare-eval", str(first), str(second), "--resamples", "300", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert "on the validation split, 12 sessions (9 with lesions) of 6 subjects" in line and line.endswith("second better")
    written = json.loads(out.read_text())
    assert written["difference"] == pytest.approx(result["difference"]) and written["runs"]["second"]["folder"] == str(second)


def test_evaluations_that_cannot_be_paired_get_one_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"session": [f"s{i}" for i in range(20)], "subject": [f"P{i // 2}" for i in range(20)]})
    frame["age"] = rng.uniform(20, 60, 20)
    ages = frame.assign(age_pred=frame["age"] + rng.normal(0, 5, 20))
    base = _evaluation(tmp_path / "base", ages, "predictions.csv")
    assert detect_task(base) == "brain_age"
    refused = {
        _evaluation(tmp_path / "test_split", ages, "predictions.csv", split="testing"): "compare evaluations of one split",
        _evaluation(tmp_path / "other", ages, "predictions.csv", manifest="m2"): "another manifest",
        _evaluation(tmp_path / "fewer", ages[:15], "predictions.csv"): "base/predictions.csv: session s15 is not in",
        _evaluation(tmp_path / "twice", pd.concat([ages, ages[:1]]), "predictions.csv"): "session s0 is listed twice",
        _evaluation(tmp_path / "moved", ages.assign(subject="P0"), "predictions.csv"): "has another subject",
        _evaluation(tmp_path / "sex", frame.assign(sex="F", p_male=0.5), "predictions.csv"): "a sex evaluation",
        tmp_path / "missing": "not a finished evaluation",
    }
    (tmp_path / "missing").mkdir()
    old = _evaluation(tmp_path / "old", ages, "predictions.csv")
    (old / "metrics.json").write_text(json.dumps({"model": {}}))
    refused[old] = "no provenance"
    for folder, message in refused.items():
        assert main(["compare-eval", str(base), str(folder)]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert compare_evaluations(base, base, n_resamples=50)["decided"] == "undecided"


def test_segmenters_must_average_the_same_scans_and_a_test_split_comparison_is_flagged(tmp_path, caplog):
    coarse, fine = _segmentations(40, 0), _segmentations(4, 1)
    other_masks = fine.assign(volume_true_ml=fine["volume_true_ml"].where(fine["session"] != "s1", 0.0))
    with pytest.raises(ComparisonError, match="session s1 has a reference lesion in one table and none in the other"):
        compare_tables("lesion_seg", coarse, other_masks, 50)
    with pytest.raises(ComparisonError, match="column 'volume_true_ml' missing"):
        compare_tables("lesion_seg", coarse, fine.drop(columns="volume_true_ml"), 50)
    first = _evaluation(tmp_path / "a", coarse, "per_scan.csv", split="testing")
    second = _evaluation(tmp_path / "b", fine, "per_scan.csv", split="testing")
    with caplog.at_level("WARNING"):
        assert compare_evaluations(first, second, n_resamples=50)["decided"] == "second better"
    assert "score the test split once" in caplog.text


def test_cv_compare_takes_lesion_seg_runs(tmp_path):
    """``monai-ms cv-compare`` of two lesion_seg cross-validations: the pooled per-scan tables, scored as compare-eval
    scores two evaluations."""
    from monai_ms.bundle.cross_validation import compare_runs

    runs = []
    for name, table in (("coarse", _segmentations(40, 0)), ("fine", _segmentations(4, 1))):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "cv.json").write_text(json.dumps({"task": "lesion_seg", "manifest_sha256": "m1", "bundle_version": "0.6.0"}))
        table.assign(fold=0).to_csv(folder / "predictions.csv", index=False)
        runs.append((folder, table))
    result = compare_runs(runs[0][0], runs[1][0], n_resamples=200)
    direct = compare_tables("lesion_seg", runs[0][1], runs[1][1], n_resamples=200)
    assert result["second"] == pytest.approx(direct["second"]) and result["decided"] == "second better"
    assert result["difference_ci95"] == pytest.approx(direct["difference_ci95"])
