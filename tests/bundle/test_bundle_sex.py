"""bundles/sex end to end through ``python -m monai.bundle`` on the tiny synthetic cohort."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from bundle_runner import REPO, TINY_OVERRIDES, check, run_bundle
from test_bundle_brain_age import rebalanced_manifest

from monai_ms.data import read_manifest, write_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tiny_manifest, tmp_path_factory):
    """One 1-epoch T1 training run shared by the tests below: overrides, output folder, result."""
    out = tmp_path_factory.mktemp("sex_run")
    manifest = rebalanced_manifest(tiny_manifest, out / "cohort")
    overrides = {**TINY_OVERRIDES, "epochs": 1, "data_manifest": str(manifest),
                 "output_dir": str(out / "eval"), "ckpt_dir": str(out / "models")}
    result = check(run_bundle("sex", "training", ["train"], overrides))
    return overrides, out, result


def test_training_states_the_class_balance_and_validates_on_auc(trained):
    overrides, out, result = trained
    training = read_manifest(overrides["data_manifest"])["training"]
    women, men = sum(e["sex"] == "F" for e in training), sum(e["sex"] == "M" for e in training)
    assert f"pos_weight = {women / men:.3f}" in result.stdout + result.stderr
    log = pd.read_csv(out / "eval" / "training_log.csv")
    assert log["epoch"].tolist() == [0, 1] and {"train_loss", "val_auc", "val_accuracy"} <= set(log.columns)
    assert 0.0 <= log["val_auc"].iloc[0] <= 1.0
    state = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert next(v for k, v in state.items() if k.endswith("weight") and v.ndim == 5).shape[1] == 1  # T1 only
    assert state["tissue.feature_std"].shape == (4,) and not torch.all(state["tissue.feature_std"] == 1)
    assert "linear feature paths (tissue) fitted on" in result.stdout + result.stderr


def test_evaluate_writes_auc_brier_confusion_matrix_and_roc(trained):
    overrides, out, _ = trained
    check(run_bundle("sex", "evaluating", ["train", "evaluate"], overrides))
    manifest = read_manifest(overrides["data_manifest"])
    report = json.loads((out / "eval" / "metrics.json").read_text())
    assert report["model"]["n"] == len(manifest["testing"])
    assert {"auc", "accuracy", "balanced_accuracy", "brier", "confusion_matrix"} <= set(report["model"])
    assert set(report["baselines"]) == {"training_prevalence", "logistic_brain_volume", "imaging_features"}
    assert report["baselines"]["imaging_features"]["features"] == ["brain_volume_ml", "csf_fraction", "gm_fraction", "wm_fraction"]
    assert isinstance(report["beats_imaging_features"], bool)
    counts = report["training_class_counts"]
    assert counts == {"F": sum(e["sex"] == "F" for e in manifest["training"]), "M": sum(e["sex"] == "M" for e in manifest["training"])}
    table = pd.read_csv(out / "eval" / "predictions.csv")
    assert sorted(table["session"]) == sorted(e["session"] for e in manifest["testing"])
    assert table["p_male"].between(0, 1).all()
    assert (table["predicted"] == np.where(table["p_male"] >= 0.5, "M", "F")).all()
    assert report["model"]["brier"] == pytest.approx(((table["p_male"] - (table["sex"] == "M")) ** 2).mean(), rel=1e-6)
    assert np.array(report["model"]["confusion_matrix"]).sum() == len(table)
    # calibration: MONAI's expected calibration error of P(male), with n and a patient-bootstrap interval,
    # the reliability bins behind it and their diagram
    from monai_ms.engines.metrics.scores import expected_calibration_error

    model = report["model"]
    assert model["ece"] == pytest.approx(expected_calibration_error(table["p_male"], (table["sex"] == "M").astype(float)), abs=1e-9)
    low, high = model["ci95"]["ece"]
    assert 0.0 <= low <= high <= 1.0 and report["uncertainty"]["n_sessions"] == model["n"] == len(table)
    assert report["uncertainty"]["unit"] == "subject"
    assert sum(report["calibration"]["count"]) == len(table) and len(report["calibration"]["count"]) == report["calibration"]["n_bins"]
    for name in ("roc_curve.png", "confusion_matrix.png", "reliability_diagram.png"):
        assert (out / "eval" / name).stat().st_size > 1000


def test_inference_writes_p_male_and_class_matching_evaluation(trained, tmp_path):
    overrides, out, _ = trained
    manifest = read_manifest(overrides["data_manifest"])
    new_scans = [{k: v for k, v in e.items() if k not in ("sex", "age", "edss")} for e in manifest["testing"]]
    write_manifest({**manifest, "testing": new_scans}, tmp_path / "new_scans.json")
    csv = tmp_path / "predictions.csv"
    infer_overrides = {**overrides, "data_manifest": str(tmp_path / "new_scans.json"), "predictions_csv": str(csv)}
    check(run_bundle("sex", "inferring", ["train", "inference"], infer_overrides))
    table = pd.read_csv(csv)
    assert list(table.columns) == ["session", "p_male", "sex_pred", "model_version"]
    record = json.loads((tmp_path / "predictions.provenance.json").read_text())["provenance"]
    assert record["split"] == "testing"
    assert record["checkpoint_sha256"] == hashlib.sha256((out / "models" / "model.pt").read_bytes()).hexdigest()
    assert record["manifest_sha256"] == hashlib.sha256((tmp_path / "new_scans.json").read_bytes()).hexdigest()
    assert (table["sex_pred"] == np.where(table["p_male"] >= 0.5, "M", "F")).all()
    if (out / "eval" / "predictions.csv").exists():  # the evaluate test ran: same model, same scans, same P(male)
        evaluated = pd.read_csv(out / "eval" / "predictions.csv").set_index("session")
        np.testing.assert_allclose(table.set_index("session")["p_male"], evaluated.loc[table["session"], "p_male"], rtol=1e-5)
    assert (table["model_version"] == json.loads((REPO / "bundles/sex/configs/metadata.json").read_text())["version"]).all()


def test_mistyped_override_is_refused(trained, tmp_path):
    overrides, _, _ = trained
    result = run_bundle("sex", "training", ["train"], {**overrides, "image_key": ["t1"], "ckpt_dir": str(tmp_path / "models")})
    assert result.returncode != 0 and "unknown override --image_key" in result.stderr and "--image_keys" in result.stderr
    assert not (tmp_path / "models").exists()


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_process_ddp_training_gathers_auc_over_all_validation_sessions(trained, tmp_path):
    overrides, _, _ = trained
    overrides = {**overrides, "output_dir": str(tmp_path / "eval"), "ckpt_dir": str(tmp_path / "models")}
    launcher = ["torchrun", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle"]
    check(run_bundle("sex", "training", ["train", "multi_gpu_train"], overrides, launcher=launcher))
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not torch.all(state["tissue.feature_std"] == 1)  # multi_gpu_train.json fits the feature path too
    log = pd.read_csv(tmp_path / "eval" / "training_log.csv")
    # re-evaluate the final weights on the validation split in one process: the DDP AUC used every session
    check(run_bundle("sex", "evaluating", ["train", "evaluate"], {**overrides, "eval_split": "validation",
          "checkpoint": str(tmp_path / "models" / "last.pt")}))
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["model"]["n"] == len(read_manifest(overrides["data_manifest"])["validation"])
    assert report["model"]["auc"] == pytest.approx(log["val_auc"].iloc[-1], abs=1e-6)
