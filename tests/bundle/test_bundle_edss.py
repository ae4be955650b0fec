"""bundles/edss end to end through ``python -m monai.bundle`` on the tiny synthetic cohort."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from bundle_runner import REPO, TINY_OVERRIDES, check, run_bundle
from monai.bundle import ConfigParser

import monai_ms.data
from monai_ms.data import load_datalist, read_manifest, write_manifest
from monai_ms.engines.training.lesion_pathway import provenance_path, training_provenance
from monai_ms.io import write_json

pytestmark = pytest.mark.slow


def _network(spacing=(2.0, 2.0, 2.0)):
    """The bundle's network_def, built as MONAI builds it (``spacing``: the lesion load's voxel volume)."""
    network_def = json.loads((REPO / "bundles/edss/configs/train.json").read_text())["network_def"]
    config = {"network_def": network_def, "modalities": ["t1", "t2"], "spacing": list(spacing)}
    return ConfigParser(config, globals={"monai_ms": monai_ms}).get_parsed_content("network_def")


def test_bundle_network_reads_the_lesion_load_in_ml_of_its_spacing_and_no_tissue_features():
    network = _network()
    assert network.lesion_voxel_ml == pytest.approx(0.008) and network.tissue is None and network.measured_width == 1


@pytest.fixture(scope="module")
def trained(tiny_manifest, tmp_path_factory):
    """One 2-epoch training run shared by the tests below, its lesion pathway initialised from a
    segmenter checkpoint as the lesion_seg bundle writes it (random weights: the test is about wiring)."""
    out = tmp_path_factory.mktemp("edss_run")
    torch.manual_seed(1)
    segmenter = _network().lesion_network
    torch.save(segmenter.state_dict(), out / "lesion_model.pt")
    # the record lesion_seg writes beside its model: trained on this manifest's training split
    training = load_datalist(tiny_manifest, "training", validate=False)
    write_json(training_provenance(training, manifest=tiny_manifest), provenance_path(out / "lesion_model.pt"))
    overrides = {**TINY_OVERRIDES, "data_manifest": str(tiny_manifest), "output_dir": str(out / "eval"), "ckpt_dir": str(out / "models"),
                 "lesion_init": str(out / "lesion_model.pt")}
    result = check(run_bundle("edss", "training", ["train"], overrides))
    return overrides, out, result


def test_lesion_pathway_starts_from_the_segmenter_checkpoint_and_stays_frozen(trained):
    _, out, result = trained
    assert f"lesion pathway initialised from {out / 'lesion_model.pt'} (frozen)" in result.stdout + result.stderr
    segmenter = torch.load(out / "lesion_model.pt", map_location="cpu", weights_only=True)
    trained_state = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)
    for name, value in segmenter.items():
        torch.testing.assert_close(trained_state[f"lesion_network.{name}"], value, rtol=0, atol=0)
    # ...while the rest of the network learnt
    untrained = _network().state_dict()
    assert not torch.equal(trained_state["covariate_head.weight"], untrained["covariate_head.weight"])


def test_training_writes_checkpoints_curves_and_logs(trained):
    overrides, out, result = trained
    model = out / "models" / "model.pt"
    assert model.is_file() and (out / "models" / "last.pt").is_file()
    state = torch.load(model, map_location="cpu", weights_only=True)
    # the training split's statistics travel inside the checkpoint
    assert "demographics_mean" in state and float(state["target_std"]) > 0
    log = pd.read_csv(out / "eval" / "training_log.csv")
    assert log["epoch"].tolist() == [1, 2] and {"train_loss", "val_mae", "val_rmse"} <= set(log.columns)
    assert (out / "eval" / "learning_curve.png").stat().st_size > 1000
    assert list((out / "eval" / "tensorboard").glob("events.out.tfevents.*"))
    assert "val_mae" in result.stdout + result.stderr


def test_evaluate_reports_model_and_baselines(trained, tiny_manifest):
    overrides, out, _ = trained
    check(run_bundle("edss", "evaluating", ["train", "evaluate"], overrides))
    report = json.loads((out / "eval" / "metrics.json").read_text())
    testing = read_manifest(tiny_manifest)["testing"]
    assert report["model"]["n"] == len(testing)
    for result in (report["model"], *report["baselines"].values()):
        assert {"mae", "rmse", "pearson_r", "r2", "within_1"} <= set(result)
    assert set(report["baselines"]) == {"training_median", "linear_age_sex", "imaging_features"}
    predictions = pd.read_csv(out / "eval" / "predictions.csv")
    # tier 2: a ridge model on measured features (lesion masks present: lesion volume and count among them)
    imaging = report["baselines"]["imaging_features"]
    assert {"log_lesion_volume_ml", "brain_volume_ml", "age", "sex"} <= set(imaging["features"])
    assert imaging["mae"] == pytest.approx((predictions["baseline_imaging_features"] - predictions["edss"]).abs().mean(), rel=1e-6)
    assert report["beats_imaging_features"] == (report["model"]["mae"] < imaging["mae"])
    assert report["baseline_comparison"]["baseline"] in {"training_median", "linear_age_sex"}  # beats_baselines: tier 1
    assert sorted(predictions["session"]) == sorted(e["session"] for e in testing)
    np.testing.assert_allclose(predictions["prediction"] - predictions["edss"], predictions["error"], atol=1e-6)
    assert report["model"]["mae"] == pytest.approx(predictions["error"].abs().mean(), rel=1e-5)
    assert (out / "eval" / "scatter.png").stat().st_size > 1000
    # EDSS is declared on [0, 10]: the metrics use the clipped prediction, the network's output is kept,
    # and a column gives the clipped value on the EDSS scale's 0.5 steps
    assert report["prediction_range"]["clipped_to"] == [0.0, 10.0]
    assert predictions["prediction"].between(0.0, 10.0).all()
    np.testing.assert_allclose(predictions["prediction"], predictions["prediction_raw"].clip(0.0, 10.0), atol=1e-9)
    assert report["prediction_range"]["n_clipped"] == int((predictions["prediction"] != predictions["prediction_raw"]).sum())
    np.testing.assert_allclose(predictions["prediction_rounded"], np.floor(predictions["prediction"] * 2 + 0.5) / 2, atol=1e-9)


def test_inference_writes_one_row_per_session_with_model_version(trained, tiny_manifest, tmp_path):
    overrides, out, _ = trained
    # new scans: no EDSS in the manifest
    manifest = read_manifest(tiny_manifest)
    new_scans = {**manifest, "testing": [{k: v for k, v in e.items() if k != "edss"} for e in manifest["testing"]]}
    for entry in new_scans["testing"]:
        for key in ("t1", "t2", "lesion", "tissue"):
            if key in entry:
                entry[key] = str((tiny_manifest.parent / entry[key]).resolve())
    write_manifest(new_scans, tmp_path / "new_scans.json")
    csv = tmp_path / "predictions.csv"
    check(run_bundle("edss", "inferring", ["train", "inference"],
                     {**overrides, "data_manifest": str(tmp_path / "new_scans.json"), "predictions_csv": str(csv)}))
    table = pd.read_csv(csv)
    assert sorted(table["session"]) == sorted(e["session"] for e in manifest["testing"])
    assert list(table.columns) == ["session", "edss_pred", "edss_pred_rounded", "edss_pred_raw", "model_version"]
    assert table["edss_pred"].between(0.0, 10.0).all()
    np.testing.assert_allclose(table["edss_pred"], table["edss_pred_raw"].clip(0.0, 10.0), atol=1e-9)
    np.testing.assert_allclose(table["edss_pred_rounded"], np.floor(table["edss_pred"] * 2 + 0.5) / 2, atol=1e-9)
    version = json.loads((REPO / "bundles/edss/configs/metadata.json").read_text())["version"]
    assert (table["model_version"] == version).all()
    # the table's provenance beside it: split, manifest and checkpoint SHA-256, bundle version, overrides
    sidecar = json.loads((tmp_path / "predictions.provenance.json").read_text())
    assert sidecar["table"] == "predictions.csv" and sidecar["rows"] == len(table) and sidecar["columns"] == list(table.columns)
    record = sidecar["provenance"]
    assert record["split"] == "testing" and record["bundle_version"] == version
    assert record["manifest_sha256"] == hashlib.sha256((tmp_path / "new_scans.json").read_bytes()).hexdigest()
    assert record["checkpoint_sha256"] == hashlib.sha256((out / "models" / "model.pt").read_bytes()).hexdigest()
    assert record["overrides"]["predictions_csv"] == str(csv)


def test_torchscript_export_matches_checkpoint(trained, tmp_path):
    overrides, out, _ = trained
    ts = tmp_path / "model.ts"
    command = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
               "--ckpt_file", str(out / "models" / "model.pt"), "--meta_file", str(REPO / "bundles/edss/configs/metadata.json"),
               "--config_file", str(REPO / "bundles/edss/configs/train.json")]
    import subprocess

    # without the run's spacing the network reads another lesion-load unit than its weights: refused in one line
    refused = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "the network reads 0.008 (mL per voxel)" in refused.stderr
    spacing = overrides["spacing"]
    check(subprocess.run(command + ["--spacing", json.dumps(spacing)], cwd=REPO, capture_output=True, text=True, timeout=300))
    scripted = torch.jit.load(str(ts))
    eager = _network(spacing)
    eager.load_state_dict(torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True))
    eager.eval()
    t1, t2 = torch.randn(2, 1, 32, 40, 32), torch.randn(2, 1, 32, 40, 32)
    demographics = torch.tensor([[40.0, 0.0], [55.0, 1.0]])
    torch.testing.assert_close(scripted(t1, t2, demographics), eager(t1, t2, demographics))


def _break(manifest_path, tmp_path, how):
    manifest = read_manifest(manifest_path)
    for split in ("training", "validation", "testing"):
        for entry in manifest[split]:
            for key in ("t1", "t2", "lesion", "tissue"):
                if key in entry:
                    entry[key] = str((manifest_path.parent / entry[key]).resolve())
    entry = manifest["training"][1]
    if how == "missing file":
        entry["t1"] = str(tmp_path / "nowhere_T1.nii.gz")
        expected = "nowhere_T1.nii.gz"
    elif how == "T2 of another head":
        t2 = nib.load(entry["t2"])
        moved = t2.affine.copy()
        moved[:3, 3] += 200.0  # another scanner position: the fields of view no longer overlap
        nib.save(nib.Nifti1Image(np.asanyarray(t2.dataobj), moved), str(tmp_path / "other_head_T2.nii.gz"))
        entry["t2"] = str(tmp_path / "other_head_T2.nii.gz")
        expected = "other_head_T2.nii.gz"
    else:
        del entry["age"]
        expected = "age"
    write_manifest(manifest, tmp_path / "bad.json")
    return tmp_path / "bad.json", entry["session"], expected


@pytest.mark.parametrize("how", ["missing file", "T2 of another head", "missing age"])
def test_bad_cohort_stops_before_training_with_the_problem(tiny_manifest, tmp_path, how):
    bad, session, expected = _break(tiny_manifest, tmp_path, how)
    result = run_bundle("edss", "training", ["train"], {**TINY_OVERRIDES, "data_manifest": str(bad), "output_dir": str(tmp_path / "eval"),
                                                        "ckpt_dir": str(tmp_path / "models")})
    assert result.returncode == 1
    problem_lines = [line for line in result.stderr.splitlines() if session in line]
    assert problem_lines and any(expected in line for line in problem_lines), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models").exists()  # nothing trained


def test_mistyped_override_is_refused(tiny_manifest, tmp_path):
    result = run_bundle("edss", "training", ["train"],
                        {**TINY_OVERRIDES, "data_manifest": str(tiny_manifest), "epoch": 3, "ckpt_dir": str(tmp_path / "models")})
    assert result.returncode != 0
    assert "unknown override --epoch" in result.stderr and "--epochs" in result.stderr


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_process_ddp_training_gathers_validation_over_all_samples(tiny_manifest, tmp_path):
    overrides = {**TINY_OVERRIDES, "data_manifest": str(tiny_manifest), "output_dir": str(tmp_path / "eval"),
                 "ckpt_dir": str(tmp_path / "models"),
                 "lesion_init": ""}  # the lesion pathway learns through the auxiliary loss, across both ranks
    launcher = ["torchrun", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle"]
    check(run_bundle("edss", "training", ["train", "multi_gpu_train"], overrides, launcher=launcher))
    log = pd.read_csv(tmp_path / "eval" / "training_log.csv")  # written once, by rank 0
    assert log["epoch"].tolist() == [1, 2]
    # the last epoch's validation MAE is over every validation session, not one rank's half:
    # re-evaluate the final weights in one process and compare
    check(run_bundle("edss", "evaluating", ["train", "evaluate"], {**overrides, "eval_split": "validation",
          "evaluate#handlers#0#load_path": str(tmp_path / "models" / "last.pt")}))
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["model"]["n"] == len(read_manifest(tiny_manifest)["validation"])
    assert report["model"]["mae"] == pytest.approx(log["val_mae"].iloc[-1], rel=1e-4)


def test_metadata_is_valid_against_the_monai_schema():
    import jsonschema

    schema = json.loads((REPO / "monai_ms/bundle/schemas/meta_schema_20240725.json").read_text())
    metadata = json.loads((REPO / "bundles/edss/configs/metadata.json").read_text())
    jsonschema.validate(metadata, schema)  # raises jsonschema.ValidationError when invalid
    assert metadata["version"] in metadata["changelog"]


def test_default_lesion_init_fits_the_lesion_seg_bundle_network():
    """train.json copies lesion_seg's network_def (an exported EDSS bundle must stand alone); the copy
    must keep loading what the lesion_seg bundle writes, or the default lesion_init fails."""
    lesion_seg = json.loads((REPO / "bundles/lesion_seg/configs/train.json").read_text())["network_def"]
    segmenter = ConfigParser({"network_def": lesion_seg, "modalities": ["t1", "t2"]}).get_parsed_content("network_def")
    copy = _network().lesion_network
    result = copy.load_state_dict(segmenter.state_dict())  # strict: also raises on a shape mismatch
    assert not result.missing_keys and not result.unexpected_keys
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), segmenter.state_dict().values()))


def test_summary_counts_every_parameter_of_the_bundle_network(capsys):
    from monai_ms.cli import main

    assert main(["summary", str(REPO / "bundles/edss")]) == 0
    printed = capsys.readouterr().out
    network = _network()
    total = sum(p.numel() for p in network.parameters())
    assert f"Total params: {total:,}" in printed
    assert "demographics" in printed or "[1, 2]" in printed


def test_lowercase_boolean_override_is_refused(tiny_manifest, tmp_path):
    # python-fire passes "false" as a (truthy) string: refuse it instead of silently switching AMP on
    result = run_bundle("edss", "training", ["train"],
                        {**TINY_OVERRIDES, "data_manifest": str(tiny_manifest), "amp": "false", "ckpt_dir": str(tmp_path / "models")})
    assert result.returncode != 0
    assert "--amp must be True or False" in result.stderr


def _without_lesion_masks(manifest_path, tmp_path):
    manifest = read_manifest(manifest_path)
    for split in ("training", "validation", "testing"):
        for entry in manifest[split]:
            entry.pop("lesion", None)
            for key in ("t1", "t2", "tissue"):
                if key in entry:
                    entry[key] = str((manifest_path.parent / entry[key]).resolve())
    write_manifest(manifest, tmp_path / "no_masks.json")
    return tmp_path / "no_masks.json"


def test_cohort_without_lesion_masks_trains_with_an_empty_lesion_key(tiny_manifest, tmp_path):
    cohort = _without_lesion_masks(tiny_manifest, tmp_path)
    overrides = {**TINY_OVERRIDES, "epochs": 1, "data_manifest": str(cohort), "output_dir": str(tmp_path / "eval"),
                 "ckpt_dir": str(tmp_path / "models"), "lesion_init": ""}
    refused = run_bundle("edss", "training", ["train"], overrides)
    assert refused.returncode == 1 and "lesion" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "models").exists()
    json_null = run_bundle("edss", "training", ["train"], {**overrides, "lesion_key": "null"})
    assert json_null.returncode != 0 and "--lesion_key: the command line cannot set a value to null" in json_null.stderr
    check(run_bundle("edss", "training", ["train"], {**overrides, "lesion_key": ""}))
    assert (tmp_path / "models" / "model.pt").is_file()


def test_usage_line_from_nothing_trains_the_lesion_stage_first_and_reuses_it(tiny_manifest, tmp_path):
    """The README's first command on a fresh clone: no lesion model anywhere, so the EDSS run trains the
    lesion_seg bundle's defaults on its own training split first (issue 19), starts its frozen lesion
    pathway from that checkpoint, and a second run on the same manifest reuses it."""
    lesion_tiny = {"spacing": [4.0, 4.0, 4.0], "patch_size": [32, 32, 32], "patches_per_volume": 2, "epochs": 1, "batch_size": 2,
                   "num_workers": 0}
    overrides = {**TINY_OVERRIDES, "epochs": 1, "data_manifest": str(tiny_manifest), "output_dir": str(tmp_path / "eval"),
                 "ckpt_dir": str(tmp_path / "models"), "lesion_stage": lesion_tiny}
    result = check(run_bundle("edss", "training", ["train"], overrides))
    stage = tmp_path / "models" / "lesion_stage" / "models" / "model.pt"
    assert stage.is_file() and (tmp_path / "models" / "lesion_stage" / "eval" / "training_log.csv").is_file()
    output = result.stdout + result.stderr
    assert "lesion stage: no lesion segmenter trained on this manifest yet" in output
    assert f"lesion pathway initialised from {stage} (frozen)" in output
    # the stage was trained on the EDSS run's own training split, selected on its validation split
    record = json.loads(provenance_path(stage).read_text())
    manifest = read_manifest(tiny_manifest)
    assert record["training_subjects"] == sorted({e["subject"] for e in manifest["training"]})
    assert record["validation_subjects"] == sorted({e["subject"] for e in manifest["validation"]})
    # the EDSS model carries the stage's segmenter, unchanged (frozen)
    trained = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    for name, value in torch.load(stage, map_location="cpu", weights_only=True).items():
        assert torch.equal(trained[f"lesion_network.{name}"], value)
    # training used the stored per-session lesion feature (no segmenter pass per step)
    assert "the measured covariates (the lesion load) of" in output
    again = check(run_bundle("edss", "training", ["train"],
                             {**overrides, "output_dir": str(tmp_path / "eval2"), "ckpt_dir": str(tmp_path / "models")}))
    assert f"lesion stage: reusing {stage}" in again.stdout + again.stderr


def test_a_missing_lesion_init_path_is_an_error(tiny_manifest, tmp_path):
    overrides = {**TINY_OVERRIDES, "data_manifest": str(tiny_manifest), "output_dir": str(tmp_path / "eval"),
                 "ckpt_dir": str(tmp_path / "models"), "lesion_init": str(tmp_path / "missing.pt")}
    result = run_bundle("edss", "training", ["train"], overrides)
    assert result.returncode == 1
    assert f"lesion_init: {tmp_path / 'missing.pt'} is not a file" in result.stderr
    assert not (tmp_path / "models" / "model.pt").exists()
