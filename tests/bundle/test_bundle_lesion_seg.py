"""bundles/lesion_seg end to end through ``python -m monai.bundle`` on the tiny synthetic cohort."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import nibabel as nib
import nibabel.processing
import numpy as np
import pandas as pd
import pytest
import torch
from bundle_runner import NO_N4, REPO, check, run_bundle

from monai_ms.data import read_manifest, write_manifest
from monai_ms.engines.training.lesion_pathway import read_provenance
from monai_ms.networks import BrainSegmenter3D

pytestmark = pytest.mark.slow

BUNDLE = REPO / "bundles" / "lesion_seg"
# tiny settings for the 4 mm test cohort: a few seconds per epoch on 2 cores; N4 (the default) stays on here
LESION_TINY = {
    "spacing": [4.0, 4.0, 4.0],
    "patch_size": [32, 32, 32],
    "patches_per_volume": 2,
    "epochs": 2,
    "batch_size": 2,
    "num_workers": 0,
}


def _absolute(manifest_path: Path) -> dict:
    manifest = read_manifest(manifest_path)
    for split in ("training", "validation", "testing"):
        for entry in manifest[split]:
            for key in ("t1", "t2", "lesion", "tissue"):
                if key in entry:
                    entry[key] = str((manifest_path.parent / entry[key]).resolve())
    return manifest


def _digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tiny_manifest, tmp_path_factory):
    """One 2-epoch training run shared by the tests below; returns its overrides and output folder."""
    out = tmp_path_factory.mktemp("lesion_seg_run")
    overrides = {**LESION_TINY, "data_manifest": str(tiny_manifest), "output_dir": str(out / "eval"), "ckpt_dir": str(out / "models")}
    result = check(run_bundle("lesion_seg", "training", ["train"], overrides))
    return overrides, out, result


def test_training_writes_checkpoints_curves_and_logs(trained):
    _, out, result = trained
    assert (out / "models" / "model.pt").is_file() and (out / "models" / "last.pt").is_file()
    state = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state["final_conv.conv.weight"].shape[:2] == (1, 8)  # 8 = channels[0] of the default network
    log = pd.read_csv(out / "eval" / "training_log.csv")
    assert log["epoch"].tolist() == [1, 2] and {"train_loss", "val_mean_dice"} <= set(log.columns)
    assert log["val_mean_dice"].between(0, 1).all()
    assert (out / "eval" / "learning_curve.png").stat().st_size > 1000
    assert list((out / "eval" / "tensorboard").glob("events.out.tfevents.*"))
    assert "val_mean_dice" in result.stdout + result.stderr
    # the run used the default N4 bias-field correction (the other tests of this kind turn it off) and says so
    assert read_provenance(out / "models" / "model.pt")["bias_correction"] is True


def test_evaluate_writes_per_scan_and_mean_metrics_in_native_space(trained, tiny_manifest):
    overrides, out, _ = trained
    check(run_bundle("lesion_seg", "evaluating", ["train", "evaluate"], overrides))
    report = json.loads((out / "eval" / "metrics.json").read_text())
    testing = read_manifest(tiny_manifest)["testing"]
    summary = report["summary"]
    assert report["space"] == "native T1 grid of each scan" and report["rules"]["min_volume_mm3"] == 3.0
    assert summary["n_scans"] == len(testing)
    per_scan = pd.read_csv(out / "eval" / "per_scan.csv")
    assert sorted(per_scan["session"]) == sorted(e["session"] for e in testing)
    for column in ("dice", "hd95_mm", "abs_volume_difference_ml", "lesion_tpr", "lesion_fdr", "lesion_f1"):
        assert column in per_scan.columns
    # reference volumes are those of the users' own mask files, at the T1 voxel size
    for _, row in per_scan.iterrows():
        entry = next(e for e in testing if e["session"] == row["session"])
        mask = nib.load(tiny_manifest.parent / entry["lesion"])
        expected_ml = float((np.asanyarray(mask.dataobj) > 0).sum()) * float(np.prod(mask.header.get_zooms()[:3])) / 1000
        assert row["volume_true_ml"] == pytest.approx(expected_ml)
    assert summary["true_lesions"] == per_scan["true_lesions"].sum()
    assert summary["mean_dice"] == pytest.approx(per_scan["dice"].mean(), nan_ok=True)
    assert (out / "eval" / "volumes.png").stat().st_size > 1000


def _oblique_lps(t1_path: Path, target: Path) -> nib.Nifti1Image:
    """Resample a T1 onto an oblique (15 and 10 degrees), anisotropic (3.5 x 4 x 5 mm), LPS grid."""
    image = nib.load(t1_path)
    a, b = np.deg2rad(15.0), np.deg2rad(10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    zooms = np.array([3.5, 4.0, 5.0])
    shape = np.array([66, 60, 46])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rz @ rx @ np.diag(zooms)
    centre = nib.affines.apply_affine(image.affine, (np.array(image.shape[:3]) - 1) / 2)
    affine[:3, 3] = centre - affine[:3, :3] @ ((shape - 1) / 2)
    resampled = nibabel.processing.resample_from_to(image, (tuple(shape), affine), order=1)
    out = nib.Nifti1Image(np.asarray(resampled.dataobj, dtype=np.float32), affine)
    nib.save(out, str(target))
    return out


def test_inference_maps_masks_back_to_oblique_lps_input_without_masks(trained, tiny_manifest, tmp_path):
    overrides, out, _ = trained
    manifest = _absolute(tiny_manifest)
    # new scans: no lesion masks; the first T1 on an oblique, anisotropic, LPS grid
    scans = [{k: v for k, v in e.items() if k not in ("lesion", "tissue", "edss")} for e in manifest["testing"]]
    oblique = _oblique_lps(Path(scans[0]["t1"]), tmp_path / "oblique_T1.nii.gz")
    assert nib.aff2axcodes(oblique.affine)[:2] == ("L", "P")
    scans[0]["t1"] = str(tmp_path / "oblique_T1.nii.gz")
    write_manifest({**manifest, "testing": scans}, tmp_path / "new_scans.json")
    before = {e["session"]: (_digest(e["t1"]), _digest(e["t2"])) for e in scans}
    infer_dir = tmp_path / "inference"
    check(run_bundle("lesion_seg", "inferring", ["train", "inference"],
                     {**overrides, "data_manifest": str(tmp_path / "new_scans.json"), "inference_dir": str(infer_dir)}))

    for entry in scans:
        t1 = nib.load(entry["t1"])
        mask = nib.load(infer_dir / f"{entry['session']}_lesion_mask.nii.gz")
        prob = nib.load(infer_dir / f"{entry['session']}_lesion_prob.nii.gz")
        assert mask.shape == t1.shape and prob.shape == t1.shape
        np.testing.assert_allclose(mask.affine, t1.affine, atol=1e-4)
        assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(t1.affine)
        assert mask.get_data_dtype() == np.uint8 and set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1}
        probabilities = prob.get_fdata()
        assert probabilities.min() >= 0 and probabilities.max() <= 1
        # the network saw the brain crop: mapped back, it must cover this scan's brain and not the whole field of view
        brain = t1.get_fdata() > 0
        covered = probabilities > 0
        assert (covered & brain).sum() / brain.sum() > 0.97
        assert covered.sum() < covered.size
        assert (infer_dir / "qc" / f"{entry['session']}_qc.png").stat().st_size > 5000
        assert before[entry["session"]] == (_digest(entry["t1"]), _digest(entry["t2"]))  # inputs untouched

    scans_table = pd.read_csv(infer_dir / "lesions.csv")
    # both tables record where they came from: the inferred split, the manifest and the checkpoint (SHA-256)
    for table in ("lesions", "lesion_table"):
        sidecar = json.loads((infer_dir / f"{table}.provenance.json").read_text())
        assert sidecar["provenance"]["split"] == "testing" and len(sidecar["provenance"]["checkpoint_sha256"]) == 64
    assert sorted(scans_table["session"]) == sorted(e["session"] for e in scans)
    assert {"lesion_count", "total_volume_ml", "mask_file", "model_version"} <= set(scans_table.columns)
    lesions = pd.read_csv(infer_dir / "lesion_table.csv")
    assert list(lesions.columns) == ["session", "lesion_id", "voxels", "volume_ml", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
                                     "location", "ventricle_distance_mm", "cortex_distance_mm", "infratentorial_fraction"]
    counts = lesions.groupby("session").size().reindex(scans_table["session"], fill_value=0)
    assert counts.tolist() == scans_table["lesion_count"].tolist()
    assert set(lesions["location"]) <= {"periventricular", "juxtacortical", "infratentorial", "deep_white_matter"}
    assert lesions["location"].notna().all()


def test_inference_refuses_to_write_over_an_input(trained, tiny_manifest, tmp_path):
    overrides, _, _ = trained
    manifest = _absolute(tiny_manifest)
    entry = {k: v for k, v in manifest["testing"][0].items() if k not in ("lesion", "tissue")}
    # an input named like the output the bundle would write, in the folder it would write to
    trap = tmp_path / f"{entry['session']}_lesion_mask.nii.gz"
    shutil.copy(entry["t1"], trap)
    entry["t1"] = str(trap)
    digest = _digest(trap)
    write_manifest({**manifest, "testing": [entry]}, tmp_path / "scans.json")
    result = run_bundle("lesion_seg", "inferring", ["train", "inference"],
                        {**overrides, "data_manifest": str(tmp_path / "scans.json"), "inference_dir": str(tmp_path)})
    assert result.returncode != 0
    assert "refusing to write" in result.stderr and trap.name in result.stderr
    assert _digest(trap) == digest


def test_metadata_is_valid_and_torchscript_export_matches_checkpoint(trained, tmp_path):
    _, out, _ = trained
    schema = json.loads((REPO / "monai_ms/bundle/schemas/meta_schema_20240725.json").read_text())
    jsonschema.validate(json.loads((BUNDLE / "configs/metadata.json").read_text()), schema)
    ts = tmp_path / "model.ts"
    command = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
               "--ckpt_file", str(out / "models" / "model.pt"), "--meta_file", str(BUNDLE / "configs/metadata.json"),
               "--config_file", str(BUNDLE / "configs/train.json")]
    check(subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300))
    scripted = torch.jit.load(str(ts))
    network_def = json.loads((BUNDLE / "configs/train.json").read_text())["network_def"]
    eager = BrainSegmenter3D(**{k: v for k, v in network_def.items() if k not in ("_target_", "in_channels")}, in_channels=2)
    eager.load_state_dict(torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True))
    eager.eval()
    image = torch.randn(1, 2, 32, 40, 24)
    torch.testing.assert_close(scripted(image), eager(image))


def test_mistyped_override_is_refused(tiny_manifest, tmp_path):
    overrides = {**LESION_TINY, "data_manifest": str(tiny_manifest), "patchsize": [32, 32, 32], "ckpt_dir": str(tmp_path / "models")}
    result = run_bundle("lesion_seg", "training", ["train"], overrides)
    assert result.returncode != 0
    assert "unknown override --patchsize" in result.stderr and "--patch_size" in result.stderr


def test_cohort_without_masks_stops_training_with_the_session(tiny_manifest, tmp_path):
    manifest = _absolute(tiny_manifest)
    session = manifest["training"][0]["session"]
    del manifest["training"][0]["lesion"]
    write_manifest(manifest, tmp_path / "bad.json")
    result = run_bundle("lesion_seg", "training", ["train"], {**LESION_TINY, "data_manifest": str(tmp_path / "bad.json"),
                                                              "output_dir": str(tmp_path / "eval"), "ckpt_dir": str(tmp_path / "models")})
    assert result.returncode == 1
    assert any(session in line and "lesion" in line for line in result.stderr.splitlines()), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "models").exists()


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_process_ddp_training(tiny_manifest, tmp_path):
    overrides = {**LESION_TINY, **NO_N4, "epochs": 1, "data_manifest": str(tiny_manifest), "output_dir": str(tmp_path / "eval"),
                 "ckpt_dir": str(tmp_path / "models")}
    launcher = ["torchrun", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle"]
    check(run_bundle("lesion_seg", "training", ["train", "multi_gpu_train"], overrides, launcher=launcher))
    log = pd.read_csv(tmp_path / "eval" / "training_log.csv")  # written once, by rank 0
    assert log["epoch"].tolist() == [1] and log["val_mean_dice"].between(0, 1).all()
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(key.startswith("module.") for key in state)  # loadable without the DDP wrapper
