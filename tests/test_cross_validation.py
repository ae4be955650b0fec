"""``monai-ms cv`` end to end: 2 folds of bundles/brain_age on the tiny cohort, 1 epoch, real bundle runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bundle_runner import REPO, TINY_OVERRIDES

from monai_ms.cli import main
from monai_ms.data import read_manifest, write_manifest
from monai_ms.data.manifest import rebase_paths
from monai_ms.engines.bootstrap import bootstrap_metrics
from monai_ms.engines.metrics import regression_metrics

pytestmark = pytest.mark.slow


def _argv(manifest: Path, out: Path, **extra) -> list[str]:
    settings = {**TINY_OVERRIDES, "epochs": 1, **extra}
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    return ["cv", str(REPO / "bundles" / "brain_age"), "--data_manifest", str(manifest), "--folds", "2", "--out", str(out), *sets]


@pytest.fixture(scope="module")
def cv_run(tiny_manifest, tmp_path_factory):
    """The tiny cohort with test entries whose images do not exist (reading one would fail), cross-validated."""
    root = tmp_path_factory.mktemp("cv")
    manifest = read_manifest(tiny_manifest)
    manifest = {**manifest, **{split: rebase_paths(manifest[split], tiny_manifest.parent, root) for split in ("training", "validation")}}
    testing = [{**e, "t1": "no_such_dir/missing_T1.nii.gz", "t2": "no_such_dir/missing_T2.nii.gz"} for e in manifest["testing"]]
    path = write_manifest({**manifest, "testing": testing}, root / "manifest.json")
    out = root / "out"
    assert main(_argv(path, out)) == 0
    return path, out, manifest


def test_folds_are_trained_evaluated_and_pooled(cv_run):
    path, out, manifest = cv_run
    summary = json.loads((out / "cv.json").read_text())
    assert summary["k"] == 2 and [r["fold"] for r in summary["folds"]] == [0, 1]
    assert "split_entries" in summary["folds_source"] and summary["test_split"] == "not read"
    pool = manifest["training"] + manifest["validation"]
    tables = [pd.read_csv(out / f"fold_{k}" / "eval" / "predictions.csv") for k in (0, 1)]
    # each fold's model predicted exactly its held-out sessions; together every non-test session once
    assert sorted(pd.concat(tables)["session"]) == sorted(e["session"] for e in pool)
    for k, table in enumerate(tables):
        fold = read_manifest(out / f"fold_{k}" / "manifest.json")
        assert sorted(table["session"]) == sorted(e["session"] for e in fold["validation"])
        assert not {e["subject"] for e in fold["training"]} & {e["subject"] for e in fold["validation"]}
        assert summary["folds"][k]["metrics"] == pytest.approx(regression_metrics(table["age_pred"], table["age"]), nan_ok=True)
        assert (out / f"fold_{k}" / "models" / "model.pt").is_file()
    pooled = pd.concat(tables)
    assert summary["pooled"] == pytest.approx(regression_metrics(pooled["age_pred"], pooled["age"]), nan_ok=True)
    ci = summary["pooled_ci95"]
    assert ci["unit"] == "subject" and ci["n_subjects"] == len({e["subject"] for e in pool}) and ci["n_sessions"] == len(pool)
    subject = {e["session"]: e["subject"] for e in pool}
    pooled = pooled.reset_index(drop=True)
    again = bootstrap_metrics(lambda i: {"pooled": regression_metrics(pooled["age_pred"][i], pooled["age"][i])},
                              [subject[s] for s in pooled["session"]], n_resamples=ci["n_resamples"], seed=ci["seed"])
    assert ci["intervals"]["pooled"]["mae"] == pytest.approx(again["intervals"]["pooled"]["mae"])
    maes = [r["metrics"]["mae"] for r in summary["folds"]]
    assert summary["across_folds"]["mae"] == pytest.approx({"mean": np.mean(maes), "sd": np.std(maes, ddof=1), "n_folds": 2})
    table = (out / "cv.md").read_text()
    assert "| pooled (95% CI) |" in table and "mean +- SD over folds" in table and "monai-ms cv" in table
    assert not (REPO / "bundles" / "brain_age" / "models" / "cv").exists()


def test_no_fold_manifest_holds_a_test_subject(cv_run):
    path, out, manifest = cv_run
    test_subjects = {e["subject"] for e in manifest["testing"]}
    test_sessions = {e["session"] for e in manifest["testing"]}
    assert test_subjects
    for k in (0, 1):
        fold = json.loads((out / f"fold_{k}" / "manifest.json").read_text())
        entries = [e for split in ("training", "validation", "testing") for e in fold.get(split, [])]
        assert not fold.get("testing")
        assert not {e["subject"] for e in entries} & test_subjects
        assert not {e["session"] for e in entries} & test_sessions


def test_rerun_skips_finished_folds_and_other_settings_are_refused(cv_run, capsys):
    path, out, _ = cv_run
    records = {k: (out / f"fold_{k}" / "fold.json").stat().st_mtime_ns for k in (0, 1)}
    models = {k: (out / f"fold_{k}" / "models" / "model.pt").stat().st_mtime_ns for k in (0, 1)}
    before = json.loads((out / "cv.json").read_text())
    assert main(_argv(path, out)) == 0
    after = json.loads((out / "cv.json").read_text())
    assert [r["skipped"] for r in after["folds"]] == [True, True]
    assert {k: (out / f"fold_{k}" / "fold.json").stat().st_mtime_ns for k in (0, 1)} == records
    assert {k: (out / f"fold_{k}" / "models" / "model.pt").stat().st_mtime_ns for k in (0, 1)} == models
    assert after["pooled"] == before["pooled"]
    capsys.readouterr()
    assert main(_argv(path, out, learning_rate=0.01)) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "fold 0 was finished with other settings" in error[0]


def test_bad_requests_get_one_line(cv_run, tmp_path, capsys):
    path, out, _ = cv_run
    assert main(_argv(path, tmp_path / "x", data_manifest="other.json")) == 1
    assert "the cv command sets" in capsys.readouterr().err
    assert main(_argv(path, tmp_path / "y")[:4] + ["--folds", "40", "--out", str(tmp_path / "y")]) == 1
    assert "40 folds need at least 40 non-test subjects" in capsys.readouterr().err
    inside = REPO / "bundles" / "brain_age" / "models" / "cv"
    assert main(_argv(path, inside)) == 1 and "bundle's own model" in capsys.readouterr().err
    assert not inside.exists()


def _entries(subjects: int) -> list[dict]:
    return [{"subject": f"P{s:02d}", "session": f"P{s:02d}-{k}", "t1": f"T1/P{s:02d}-{k}.nii.gz", "age": 30.0 + s,
             "sex": "FM"[s % 2], "edss": 2.0} for s in range(subjects) for k in range(1 + s % 2)]


def test_manifest_folds_are_used_as_written_and_checked(tmp_path):
    from monai_ms.bundle.cross_validation import fold_manifest, manifest_folds
    from monai_ms.data import ManifestError, new_manifest
    from monai_ms.data.split import split_entries

    split = split_entries(_entries(12), test_fraction=0.2, folds=3, seed=4)
    path = write_manifest(new_manifest(split), tmp_path / "m.json")
    per_fold, info = manifest_folds(path, 3)
    assert info["source"] == "the manifest's folds" and sum(info["sessions"]) == len(split["training"]) + len(split["validation"])
    for k, entries in enumerate(per_fold):
        assert {e["session"] for e in entries} == set(split["folds"][k])  # the manifest's own folds
    fold = fold_manifest(per_fold, 1, tmp_path, tmp_path / "fold_1")
    assert fold["testing"] == [] and {e["session"] for e in fold["validation"]} == set(split["folds"][1])
    assert fold["training"][0]["t1"].startswith("../")  # paths rebased to the fold manifest's folder
    inner = fold_manifest(per_fold, 1, tmp_path, tmp_path / "fold_1", inner_validation=0.3)
    assert {e["session"] for e in inner["testing"]} == set(split["folds"][1])  # the held-out fold, for evaluation only
    inner_train, inner_val = ({e["subject"] for e in inner[s]} for s in ("training", "validation"))
    assert inner_val and not inner_train & inner_val  # the epoch is chosen on other subjects of the training folds
    assert {e["session"] for e in inner["training"] + inner["validation"]} == {e["session"] for e in fold["training"]}
    with pytest.raises(ManifestError, match="the manifest has 3 folds, --folds asks for 4"):
        manifest_folds(path, 4)
    moved = json.loads(path.read_text())
    first = moved["training"][0]
    twin = next(e for e in moved["training"] + moved["validation"] if e["fold"] != first["fold"])
    twin["subject"] = first["subject"]
    (tmp_path / "bad.json").write_text(json.dumps(moved))
    with pytest.raises(ManifestError, match=f"subject {first['subject']} has sessions in folds"):
        manifest_folds(tmp_path / "bad.json", 3)
