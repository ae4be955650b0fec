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
from monai_ms.engines.metrics.bootstrap import bootstrap_metrics
from monai_ms.engines.metrics.scores import regression_metrics

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
    # the baselines each fold fitted on its own training split, pooled over the same sessions
    assert set(summary["pooled_baselines"]) == {"training_median", "imaging_features"}
    median = summary["pooled_baselines"]["training_median"]
    assert median["mae"] == pytest.approx(regression_metrics(pooled["baseline_training_median"], pooled["age"])["mae"])
    assert ci["intervals"]["training_median"]["mae"] == pytest.approx(median["ci95"]["mae"])
    comparison = summary["baseline_comparison"]
    assert comparison["baseline"] == "training_median" and comparison["metric"] == "mae"
    assert summary["beats_baselines"] == (summary["pooled"]["mae"] < median["mae"])
    maes = [r["metrics"]["mae"] for r in summary["folds"]]
    assert summary["across_folds"]["mae"] == pytest.approx({"mean": np.mean(maes), "sd": np.std(maes, ddof=1), "n_folds": 2})
    table = (out / "cv.md").read_text()
    assert "| pooled (95% CI) |" in table and "mean +- SD over folds" in table and "monai-ms cv" in table
    assert "| baseline training_median, pooled |" in table and "Beats its trivial baselines (pooled mae)" in table
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


def test_folds_made_from_the_pool_never_put_a_subjects_sessions_on_both_sides(tmp_path):
    from monai_ms.bundle.cross_validation import fold_manifest, manifest_folds
    from monai_ms.data import new_manifest

    entries = _entries(15)  # every other patient has two sessions
    pool, testing = entries[:-3], entries[-3:]
    assert len(pool) > len({e["subject"] for e in pool})
    path = write_manifest(new_manifest({"training": pool[:15], "validation": pool[15:], "testing": testing}), tmp_path / "m.json")
    per_fold, info = manifest_folds(path, 3, seed=2)
    assert "split_entries" in info["source"]
    assert sorted(e["session"] for fold in per_fold for e in fold) == sorted(e["session"] for e in pool)  # each once
    for k in range(3):
        for inner_validation in (0.0, 0.3):
            fold = fold_manifest(per_fold, k, tmp_path, tmp_path / f"fold_{k}", inner_validation=inner_validation)
            sides = [{e["subject"] for e in fold[split]} for split in ("training", "validation", "testing")]
            assert all(not a & b for i, a in enumerate(sides) for b in sides[i + 1:]), (k, inner_validation)
            assert not {e["session"] for split in fold.values() if isinstance(split, list) for e in split} & {e["session"] for e in testing}


FAKE_MONAI_BUNDLE = """
import csv, json, sys
from pathlib import Path

args = sys.argv[1:]  # -m monai.bundle run RUN_ID --config_file FILES --key value ...
run_id, options = args[3], dict(zip(args[6::2], args[7::2]))
if run_id == "training":
    models = Path(options["--ckpt_dir"])
    models.mkdir(parents=True, exist_ok=True)
    (models / "model.pt").write_bytes(b"weights")
    (models / "argv.json").write_text(json.dumps(options))
else:
    entries = json.loads(Path(options["--data_manifest"]).read_text())[options["--eval_split"]]
    out = Path(options["--output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["session", "edss", "prediction"])
        writer.writerows([e["session"], e["edss"], e["edss"] + 0.5] for e in entries)
"""


def test_fold_placeholder_gives_each_fold_its_own_file(tmp_path):
    """``--set lesion_init=.../fold_{fold}/...``: each fold's training gets its own fold's file (the EDSS bundle's
    segmenter from a lesion_seg cross-validation); a stand-in for ``python -m monai.bundle`` records the arguments."""
    import sys

    from monai_ms.bundle.cross_validation import overrides_of_fold, run_cross_validation
    from monai_ms.data import new_manifest

    assert overrides_of_fold({"lesion_init": "cv/fold_{fold}/model.pt", "epochs": 2, "x": [1]}, 3) == {
        "lesion_init": "cv/fold_3/model.pt", "epochs": 2, "x": [1]}
    bundle = tmp_path / "edss"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "train.json").write_text(json.dumps({"task": "edss"}))
    (bundle / "configs" / "evaluate.json").write_text("{}")
    fake = tmp_path / "fake_python"
    fake.write_text(f"#!{sys.executable}\n{FAKE_MONAI_BUNDLE}")
    fake.chmod(0o755)
    entries = [{**e, "edss": float(i % 7)} for i, e in enumerate(_entries(12))]
    path = write_manifest(new_manifest({"training": entries[:12], "validation": entries[12:], "testing": []}), tmp_path / "m.json")
    template = str(tmp_path / "lesion_cv" / "fold_{fold}" / "models" / "model.pt")
    summary = run_cross_validation(bundle, path, 3, tmp_path / "out", overrides={"lesion_init": template, "epochs": 2},
                                   python=str(fake), n_resamples=10)
    for k in range(3):
        used = json.loads((tmp_path / "out" / f"fold_{k}" / "models" / "argv.json").read_text())
        assert used["--lesion_init"] == str(tmp_path / "lesion_cv" / f"fold_{k}" / "models" / "model.pt")
        assert used["--epochs"] == "2"
    assert summary["overrides"]["lesion_init"] == template  # the command as given is what is recorded
    assert summary["pooled"]["mae"] == pytest.approx(0.5)


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


def test_sex_folds_are_scored_with_calibration():
    from monai_ms.bundle.cross_validation import TASK_SCORERS, score_table
    from monai_ms.engines.metrics.scores import expected_calibration_error

    frame = pd.DataFrame({"sex": ["F", "M", "m", "F", "M", "F"], "p_male": [0.2, 0.9, 0.4, 0.6, 0.7, 0.1]})
    metrics = score_table("sex", frame)
    assert metrics["ece"] == pytest.approx(expected_calibration_error(frame["p_male"], [0, 1, 1, 0, 1, 0]))
    assert "ece" in TASK_SCORERS["sex"].columns  # a column of cv.md


def test_pooled_baselines_decide_whether_the_model_is_a_result():
    """A sex model that ranks no better than brain volume alone is marked, in cv.json's keys and in cv.md."""
    from monai_ms.bundle.cross_validation import markdown_table, pooled_report, pooled_summary
    from monai_ms.engines.metrics.scores import classification_metrics

    rng = np.random.default_rng(0)
    sex = np.array(["F", "M"] * 20)
    labels = (sex == "M").astype(int)
    volume = labels + rng.normal(0, 0.6, 40)  # brain volume separates the sexes well ...
    frame = pd.DataFrame({
        "session": [f"s{i}" for i in range(40)], "sex": sex,
        "p_male": 1 / (1 + np.exp(-(labels + rng.normal(0, 1.5, 40)))),  # ... the model less well
        "baseline_training_prevalence": 0.5, "baseline_logistic_brain_volume": 1 / (1 + np.exp(-volume)),
        "baseline_imaging_features": 1 / (1 + np.exp(-volume)),
    })
    subjects = {f"s{i}": f"P{i // 2}" for i in range(40)}  # two sessions per subject
    report = pooled_report("sex", frame, subjects, n_resamples=200)
    summary = pooled_summary(report)
    expected = classification_metrics(frame["baseline_logistic_brain_volume"].to_numpy(), labels)["auc"]
    assert summary["pooled_baselines"]["logistic_brain_volume"]["auc"] == pytest.approx(expected)
    assert summary["pooled"]["auc"] < expected
    assert summary["beats_baselines"] is False and summary["beats_imaging_features"] is False
    assert summary["baseline_comparison"]["baseline"] == "logistic_brain_volume"
    low, high = summary["baseline_comparison"]["difference_ci95"]
    assert low < summary["pooled"]["auc"] - expected < high
    assert summary["pooled_ci95"]["n_subjects"] == 20 and summary["pooled_ci95"]["unit"] == "subject"
    table = markdown_table({"bundle": "bundles/sex", "task": "sex", "k": 2, "command": "monai-ms cv", "folds_source": "x",
                            "subjects_per_fold": [10, 10], "selection": "inner", "folds": [], "across_folds": {}, **summary})
    assert "**NO: not a result**" in table and "| baseline logistic_brain_volume, pooled |" in table
    # a better model flips the verdict
    better = frame.assign(p_male=frame["baseline_logistic_brain_volume"] * 0.5 + labels * 0.5)
    assert pooled_summary(pooled_report("sex", better, subjects, n_resamples=0))["beats_baselines"] is True


def test_a_table_without_baseline_columns_has_no_baselines():
    from monai_ms.bundle.cross_validation import score_baselines

    assert score_baselines("lesion_seg", pd.DataFrame({"dice": [0.5]})) == {}
    assert score_baselines("brain_age", pd.DataFrame({"age": [30.0], "age_pred": [31.0]})) == {}


def _finished_run(folder: Path, prediction: np.ndarray, frame: pd.DataFrame, task: str = "brain_age", manifest: str = "m1") -> Path:
    """A monai-ms cv output folder as run_cross_validation leaves it: cv.json and the pooled predictions.csv."""
    folder.mkdir()
    (folder / "cv.json").write_text(json.dumps({"task": task, "manifest_sha256": manifest, "bundle_version": "0.5.0", "overrides": {}}))
    frame.assign(age_pred=prediction, baseline_training_median=40.0).to_csv(folder / "predictions.csv", index=False)
    return folder


def test_two_runs_are_compared_on_the_same_resamples(tmp_path, capsys):
    """A design whose errors are a third of the other's is decidedly better either way round; the difference is
    the plain difference of the two pooled MAEs; runs that cannot be paired get one line."""
    from monai_ms.bundle.cross_validation import compare_runs

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"session": [f"s{i}" for i in range(40)], "subject": [f"P{i // 2}" for i in range(40)]})
    frame["age"] = rng.uniform(20, 60, 40)
    noise = rng.normal(0, 6, 40)
    coarse = _finished_run(tmp_path / "coarse", frame["age"] + noise, frame)
    fine = _finished_run(tmp_path / "fine", frame["age"] + noise / 3, frame)
    result = compare_runs(coarse, fine, n_resamples=200)
    direct = [regression_metrics(frame["age"] + n, frame["age"])["mae"] for n in (noise, noise / 3)]
    assert result["first"] == pytest.approx(direct[0]) and result["second"] == pytest.approx(direct[1])
    assert result["runs"]["second"]["folder"] == str(fine) and result["runs"]["first"]["bundle_version"] == "0.5.0"
    assert result["difference"] == pytest.approx(direct[1] - direct[0])
    low, high = result["difference_ci95"]
    assert low < result["difference"] < high < 0
    assert result["decided"] == "second better" and result["n_sessions"] == 40 and result["n_subjects"] == 20
    assert compare_runs(fine, coarse, n_resamples=200)["decided"] == "first better"
    alike = _finished_run(tmp_path / "alike", frame["age"] + rng.permutation(noise), frame)  # the same errors, shuffled
    assert compare_runs(coarse, alike, n_resamples=200)["decided"] == "undecided"
    out = tmp_path / "comparison.json"
    assert main(["cv-compare", str(coarse), str(fine), "--resamples", "100", "--out", str(out)]) == 0
    assert "second better" in capsys.readouterr().out and json.loads(out.read_text())["task"] == "brain_age"
    other_sessions = _finished_run(tmp_path / "fewer", frame["age"][:30], frame[:30])
    other_cohort = _finished_run(tmp_path / "other", frame["age"], frame, manifest="m2")
    anonymous = _finished_run(tmp_path / "anonymous", frame["age"], frame.drop(columns="subject"))
    refused = {other_sessions: "session s30 is not in", other_cohort: "another manifest", tmp_path: "not a finished"}
    unlabelled = _finished_run(tmp_path / "unlabelled", frame["age"], frame.drop(columns="session"))
    refused[anonymous] = "column 'subject' missing"
    refused[unlabelled] = "column 'session' missing"
    for folder, message in refused.items():
        assert main(["cv-compare", str(coarse), str(folder)]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
