"""bundles/brain_age end to end through ``python -m monai.bundle`` on the tiny synthetic cohort."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from bundle_runner import REPO, TINY_OVERRIDES, check, run_bundle

from monai_ms.data import read_manifest, write_manifest
from monai_ms.engines.metrics.brain_age import AgeBias, file_sha256
from monai_ms.networks import BrainRegressor3D

pytestmark = pytest.mark.slow


def rebalanced_manifest(tiny_manifest: Path, out_dir: Path) -> Path:
    """The tiny cohort re-split for the age and sex bundles: sex alternating by subject (the tiny cohort
    has two men), 3 validation subjects (>= 3 sessions for the age-bias fit) and 3 test subjects."""
    manifest = read_manifest(tiny_manifest)
    entries = [dict(e) for split in ("training", "validation", "testing") for e in manifest[split]]
    for entry in entries:
        for key in ("t1", "t2", "lesion", "tissue"):
            if key in entry:
                entry[key] = str((tiny_manifest.parent / entry[key]).resolve())
    subjects = sorted({e["subject"] for e in entries})
    sex = {s: "MF"[i % 2] for i, s in enumerate(subjects)}
    role = {s: "validation" if i < 3 else "testing" if i < 6 else "training" for i, s in enumerate(subjects)}
    split = {name: [] for name in ("training", "validation", "testing")}
    for entry in entries:
        entry["sex"] = sex[entry["subject"]]
        split[role[entry["subject"]]].append(entry)
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_manifest({"name": "tiny, re-split for brain_age/sex tests", **split}, out_dir / "manifest.json")


@pytest.fixture(scope="module")
def trained(tiny_manifest, tmp_path_factory):
    """One 1-epoch T1+T2 training run shared by the tests below: overrides, output folder, result."""
    out = tmp_path_factory.mktemp("brain_age_run")
    manifest = rebalanced_manifest(tiny_manifest, out / "cohort")
    overrides = {**TINY_OVERRIDES, "epochs": 1, "modalities": ["t1", "t2"], "data_manifest": str(manifest),
                 "output_dir": str(out / "eval"), "ckpt_dir": str(out / "models")}
    result = check(run_bundle("brain_age", "training", ["train"], overrides))
    return overrides, out, result


def test_training_on_t1_and_t2_stores_the_age_statistics_in_the_checkpoint(trained):
    overrides, out, result = trained
    state = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)
    train_ages = [e["age"] for e in read_manifest(overrides["data_manifest"])["training"]]
    assert float(state["target_mean"]) == pytest.approx(np.mean(train_ages), rel=1e-5)
    first_conv = next(v for k, v in state.items() if k.endswith("weight") and v.ndim == 5)
    assert first_conv.shape[1] == 2  # the image_keys switch: T1 and T2 as two channels
    # the tissue-feature path was fitted on the training split (4 features of the T1 and the 16 bins of its
    # class-normalised histogram, tissue_bins), no histogram path
    bins = json.loads((REPO / "bundles" / "brain_age" / "configs" / "train.json").read_text())["network_def"]["tissue_bins"]
    assert state["tissue.feature_std"].shape == (4 + bins,) and bins == 16
    assert not torch.all(state["tissue.feature_std"] == 1)
    assert not any(key.startswith("histogram") for key in state)
    assert "linear feature paths (tissue) fitted on" in result.stdout + result.stderr
    log = pd.read_csv(out / "eval" / "training_log.csv")
    # epoch 0: the fitted linear start, validated before training (StartValidationHandler), no training loss
    assert log["epoch"].tolist() == [0, 1] and {"train_loss", "val_mae", "val_rmse"} <= set(log.columns)
    assert np.isnan(log["train_loss"][0]) and log["val_mae"].notna().all()
    assert "Epoch[0] Metrics -- val_mae" in result.stdout + result.stderr
    assert (out / "eval" / "learning_curve.png").stat().st_size > 1000
    assert "val_mae" in result.stdout + result.stderr


def test_evaluate_reports_mae_baseline_and_gap(trained):
    overrides, out, _ = trained
    check(run_bundle("brain_age", "evaluating", ["train", "evaluate"], overrides))
    report = json.loads((out / "eval" / "metrics.json").read_text())
    testing = read_manifest(overrides["data_manifest"])["testing"]
    assert report["model"]["n"] == len(testing)
    assert {"mae", "rmse", "pearson_r", "r2"} <= set(report["model"])
    assert set(report["baselines"]) == {"training_median", "imaging_features"}
    train_median = np.median([e["age"] for e in read_manifest(overrides["data_manifest"])["training"]])
    expected = np.mean([abs(train_median - e["age"]) for e in testing])
    assert report["baselines"]["training_median"]["mae"] == pytest.approx(expected)
    table = pd.read_csv(out / "eval" / "predictions.csv")
    assert sorted(table["session"]) == sorted(e["session"] for e in testing)
    imaging = report["baselines"]["imaging_features"]
    assert "age" not in imaging["features"]  # the target is not a feature
    assert imaging["mae"] == pytest.approx((table["baseline_imaging_features"] - table["age"]).abs().mean(), rel=1e-6)
    np.testing.assert_allclose(table["brain_age_gap"], table["age_pred"] - table["age"], atol=1e-5)
    assert report["model"]["mae"] == pytest.approx(table["brain_age_gap"].abs().mean(), rel=1e-5)
    correction = report["brain_age_gap"]["bias_correction"]
    # after one epoch the fit may be refused (flat predictions); either way it is stated and consistent
    assert correction["applied"] == (out / "models" / "age_bias.json").exists() == table["age_pred_corrected"].notna().all()
    assert (out / "eval" / "scatter.png").stat().st_size > 1000


def test_inference_writes_age_and_the_corrected_gap_where_age_is_known(trained, tmp_path):
    overrides, out, _ = trained
    manifest = read_manifest(overrides["data_manifest"])
    new_scans = [dict(e) for e in manifest["testing"]]
    del new_scans[0]["age"]  # a scan without a recorded age: prediction, no gap
    write_manifest({**manifest, "testing": new_scans}, tmp_path / "new_scans.json")
    bias = AgeBias(intercept=10.0, slope=0.8, n=5, checkpoint_sha256=file_sha256(out / "models" / "model.pt"))
    (tmp_path / "age_bias.json").write_text(json.dumps(bias.to_dict()))
    csv = tmp_path / "predictions.csv"
    infer_overrides = {**overrides, "data_manifest": str(tmp_path / "new_scans.json"), "predictions_csv": str(csv),
                       "age_bias_file": str(tmp_path / "age_bias.json")}
    check(run_bundle("brain_age", "inferring", ["train", "inference"], infer_overrides))
    table = pd.read_csv(csv).set_index("session")
    assert sorted(table.index) == sorted(e["session"] for e in new_scans)
    np.testing.assert_allclose(table["age_pred_corrected"], (table["age_pred"] - 10.0) / 0.8, rtol=1e-6)
    assert np.isnan(table.loc[new_scans[0]["session"], "brain_age_gap"])
    known = table.drop(new_scans[0]["session"])
    np.testing.assert_allclose(known["brain_age_gap_corrected"], known["age_pred_corrected"] - known["age"], atol=1e-5)
    assert (table["model_version"] == json.loads((REPO / "bundles/brain_age/configs/metadata.json").read_text())["version"]).all()
    sidecar = json.loads((tmp_path / "predictions.provenance.json").read_text())  # the table's provenance
    assert sidecar["rows"] == len(table) and sidecar["provenance"]["split"] == "testing"
    assert sidecar["provenance"]["checkpoint_sha256"] == file_sha256(out / "models" / "model.pt")
    assert sidecar["provenance"]["overrides"]["age_bias_file"] == str(tmp_path / "age_bias.json")


def test_torchscript_export_matches_checkpoint(trained, tmp_path):
    overrides, out, _ = trained
    ts = tmp_path / "model.ts"
    command = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
               "--ckpt_file", str(out / "models" / "model.pt"), "--meta_file", str(REPO / "bundles/brain_age/configs/metadata.json"),
               "--config_file", str(REPO / "bundles/brain_age/configs/train.json"), "--modalities", "['t1','t2']"]
    check(subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300))
    scripted = torch.jit.load(str(ts))
    config = json.loads((REPO / "bundles/brain_age/configs/train.json").read_text())["network_def"]
    eager = BrainRegressor3D(**{k: v for k, v in config.items() if k not in ("_target_", "in_channels")}, in_channels=2)
    eager.load_state_dict(torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True))
    eager.eval()
    image = torch.randn(2, 2, 32, 40, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(image), eager(image))
        assert float(scripted(image).mean()) > 5  # in years: the age statistics travel inside the export


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_process_ddp_training(trained, tmp_path):
    overrides, _, _ = trained
    overrides = {**overrides, "modalities": ["t1"], "output_dir": str(tmp_path / "eval"), "ckpt_dir": str(tmp_path / "models")}
    launcher = ["torchrun", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle"]
    check(run_bundle("brain_age", "training", ["train", "multi_gpu_train"], overrides, launcher=launcher))
    assert pd.read_csv(tmp_path / "eval" / "training_log.csv")["epoch"].tolist() == [0, 1]  # rank 0 alone writes it; 0: the fitted start
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped: loads into the plain network
    assert not torch.all(state["tissue.feature_std"] == 1)  # multi_gpu_train.json fits the feature path too
