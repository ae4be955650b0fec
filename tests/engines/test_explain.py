"""Saliency maps (issue 9): region means, maps on the input T1 grid, the bundle command and the CLI."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from bundle_runner import REPO, TINY_OVERRIDES, check, run_bundle
from monai.bundle import ConfigParser

import monai_ms.data
from monai_ms.data import read_manifest
from monai_ms.data.transforms import paired_transforms
from monai_ms.engines.inference.saliency import (
    SaliencyExplainer,
    SaliencyRunner,
    SingleInputView,
    region_saliency,
    summarize_regions,
)
from monai_ms.networks import BrainClassifier3D, BrainRegressor3D, DualStreamRegressor


def test_region_means_against_a_hand_made_map_and_masks(tmp_path):
    saliency = np.zeros((4, 4, 4), np.float32)
    tissue = np.zeros((4, 4, 4), np.int16)
    tissue[0], tissue[1], tissue[2] = 3, 3, 2  # WM, WM, GM; slab 3 background but for one CSF voxel
    tissue[3, 0, 0] = 1
    lesion = np.zeros((4, 4, 4), np.uint8)
    lesion[0, :2] = 1  # 8 lesion voxels inside the WM
    saliency[0, :2] = 5.0  # lesion
    saliency[0, 2:] = 1.0  # NAWM: 8 voxels of 1 ...
    saliency[1] = 2.0  # ... and 16 of 2
    saliency[2] = 3.0  # GM
    saliency[3] = 100.0  # background: in no region
    row = region_saliency(saliency, lesion, tissue)
    assert row["lesion_mean"] == pytest.approx(5.0)
    assert row["nawm_mean"] == pytest.approx((8 * 1.0 + 16 * 2.0) / 24)
    assert row["gm_mean"] == pytest.approx(3.0)
    assert row["csf_mean"] == pytest.approx(100.0) and row["csf_voxels"] == 1
    assert row["brain_mean"] == pytest.approx((8 * 5 + 8 * 1 + 16 * 2 + 16 * 3 + 100) / 49)
    assert (row["lesion_voxels"], row["nawm_voxels"], row["gm_voxels"]) == (8, 24, 16)
    assert row["lesion_to_nawm"] == pytest.approx(5.0 / (40 / 24)) and row["lesion_above_nawm"] == 1.0

    # no lesion mask: lesions come from tissue label 4; no tissue map: NAWM / GM cannot be formed
    tissue_with_lesion = tissue.copy()
    tissue_with_lesion[lesion > 0] = 4
    assert region_saliency(saliency, None, tissue_with_lesion)["lesion_mean"] == pytest.approx(5.0)
    only_lesion = region_saliency(saliency, lesion, None, brain=tissue > 0)
    assert only_lesion["lesion_mean"] == pytest.approx(5.0)
    assert math.isnan(only_lesion["nawm_mean"]) and math.isnan(only_lesion["gm_mean"]) and math.isnan(only_lesion["lesion_above_nawm"])

    # the CSV shows a missing map as an empty cell, never 0, and the mean row skips it
    frame = pd.DataFrame([
        {"session": "s1", "modality": "t1", "method": "gradcam", **row},
        {"session": "s2", "modality": "t1", "method": "gradcam", **only_lesion},
    ])
    table = summarize_regions(frame)
    table.to_csv(tmp_path / "regions.csv", index=False)
    written = pd.read_csv(tmp_path / "regions.csv", keep_default_na=False)
    assert written.loc[1, "nawm_mean"] == "" and written.loc[1, "lesion_mean"] != ""
    mean = table[table["session"] == "mean"].iloc[0]
    assert mean["lesion_mean"] == pytest.approx(5.0) and mean["nawm_mean"] == pytest.approx(row["nawm_mean"])
    assert mean["lesion_above_nawm"] == 1.0 and mean["n_sessions"] == 2 and mean["method"] == "gradcam"

    with pytest.raises(ValueError, match="tissue map has shape"):
        region_saliency(saliency, None, tissue[:3])


class _BoxMean(nn.Module):
    """Output = mean intensity inside a fixed box of the input: the only region that matters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 4:8, 4:8, 4:8].mean(dim=(1, 2, 3, 4))[:, None] * 10.0 + 0.0 * self.weight.sum()

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))


def test_occlusion_is_positive_where_the_output_comes_from():
    explainer = SaliencyExplainer(_BoxMean(), ["image"], {"t1": {"input_key": "image"}}, method="occlusion", mask_size=4, overlap=0.5)
    saliency = explainer({"image": torch.ones(1, 16, 16, 16)})["t1"][0]
    assert saliency.shape == (16, 16, 16)
    assert saliency[5, 5, 5] > 0.5  # hiding the box lowers the output
    assert abs(float(saliency[14, 14, 14])) < 1e-6  # far from the box nothing changes


def test_predicted_class_view_explains_a_female_prediction_with_positive_evidence():
    network = nn.Linear(3, 1)
    with torch.no_grad():
        network.weight.fill_(-1.0), network.bias.zero_()
    view = SingleInputView(network, position=0, explain_predicted_class=True)
    x = torch.ones(1, 3)  # logit -3: predicted female
    assert float(view.set_inputs([x])) == pytest.approx(3.0)
    assert float(view(x * 2).detach()) == pytest.approx(6.0)  # more of the same evidence: more saliency


def test_unknown_target_layer_names_the_encoder_levels():
    network = BrainRegressor3D(channels=(4, 8), strides=(2, 2))
    with pytest.raises(ValueError, match=r"encoder\.blocks\.1"):
        SaliencyExplainer(network, ["image"], {"t1": {"input_key": "image", "target_layer": "encoder.blocks.7"}})


def _oblique_lps_session(tmp_path):
    """A head on an oblique LPS T1 grid (anisotropic voxels) and a T2 on its own RAS grid."""
    angle = np.deg2rad(15.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    t1_affine = np.eye(4)
    t1_affine[:3, :3] = np.diag([-3.0, -3.0, 4.0]) @ rotation  # L-P-S axes, rotated about z
    t1_affine[:3, 3] = t1_affine[:3, :3] @ -np.array([10.5, 12.5, 8.5])  # centre the grid on the origin
    t2_affine = np.diag([4.0, 4.0, 4.0, 1.0])
    t2_affine[:3, 3] = -30.0

    def head(shape, affine):
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1) @ affine[:3, :3].T + affine[:3, 3]
        radius = np.linalg.norm(grid / [26.0, 30.0, 24.0], axis=-1)
        # a left-right and front-back asymmetric head, so a flipped or rotated map would not match
        return np.where(radius <= 1.0, 1.0 + grid[..., 0] / 40.0 + np.clip(grid[..., 1], 0, None) / 20.0, 0.0).astype(np.float32)

    t1, t2 = tmp_path / "t1.nii.gz", tmp_path / "t2.nii.gz"
    t1_image = nib.Nifti1Image(head((22, 26, 18), t1_affine), t1_affine)
    t1_image.set_qform(t1_affine, code=1)
    nib.save(t1_image, str(t1))
    nib.save(nib.Nifti1Image(head((16, 16, 16), t2_affine), t2_affine), str(t2))
    return {"session": "obl-01", "subject": "P1", "t1": str(t1), "t2": str(t2), "age": 40.0, "sex": "F"}


def test_maps_land_on_the_input_t1_grid_of_an_oblique_lps_scan(tmp_path):
    entry = _oblique_lps_session(tmp_path)
    preprocessing = paired_transforms("infer", demographics=True, spacing=4.0, roi_size=(16, 16, 16))
    network = DualStreamRegressor(channels=(4, 8), strides=(2, 2), hidden=(8,), norm="batch")
    streams = {key: {"input_key": key, "target_layer": f"{key}_encoder.blocks.1"} for key in ("t1", "t2")}
    explainer = SaliencyExplainer(network, ["t1", "t2", "demographics"], streams, method="gradcampp")
    runner = SaliencyRunner(explainer, [preprocessing(entry)], preprocessing, tmp_path / "out")
    network.eval()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    table = runner.run()
    # explaining must not change the model: batch norm stays in eval mode, its statistics untouched
    assert not network.training and all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    item = preprocessing(entry)
    with torch.no_grad():
        expected = network(item["t1"][None], item["t2"][None], item["demographics"][None])
    assert table["prediction"].iloc[0] == pytest.approx(float(expected), rel=1e-5)

    t1 = nib.load(entry["t1"])
    for stream in ("t1", "t2"):
        saliency = nib.load(tmp_path / "out" / f"obl-01_{stream}_gradcampp.nii.gz")
        assert saliency.shape == t1.shape
        np.testing.assert_allclose(saliency.affine, t1.affine, atol=1e-5)
        assert nib.aff2axcodes(saliency.affine) == nib.aff2axcodes(t1.affine) == ("L", "P", "S")
        assert np.isfinite(saliency.get_fdata()).all()
    assert (tmp_path / "out" / "png" / "obl-01_gradcampp.png").stat().st_size > 5000
    # no lesion or tissue maps in the manifest entry: those cells are empty, the brain mean is not
    assert table["lesion_mean"].isna().all() and table["nawm_mean"].isna().all() and table["brain_mean"].notna().all()

    # the inversion puts network-grid voxels back where they came from: the preprocessed T1 itself,
    # mapped back, matches the input T1 (z-scored) inside the head
    back = runner.to_reference_space(item["t1"].as_tensor().clone(), item)
    original = np.asanyarray(t1.dataobj)
    head = original > 0
    inner = head & (np.abs(back) > 0)
    assert inner.sum() > 0.8 * head.sum()
    assert np.corrcoef(back[inner], original[inner])[0, 1] > 0.9


@pytest.fixture(scope="module")
def random_checkpoints(tmp_path_factory):
    """Untrained weights of each bundle's default network: saliency needs a model, not a good one."""
    folder = tmp_path_factory.mktemp("explain_models")
    classes = {"edss": DualStreamRegressor, "brain_age": BrainRegressor3D, "sex": BrainClassifier3D}
    paths = {}
    for bundle, network_class in classes.items():
        config = json.loads((REPO / "bundles" / bundle / "configs" / "train.json").read_text())["network_def"]
        arguments = {k: v for k, v in config.items() if k != "in_channels"}  # brain_age/sex: "$len(@image_keys)"
        torch.manual_seed(0)
        # the EDSS lesion load reads the voxel volume of the bundle's spacing
        context = {"modalities": ["t1", "t2"], "spacing": TINY_OVERRIDES["spacing"]}  # the runs below use it
        network = ConfigParser({"network_def": arguments, **context}, globals={"monai_ms": monai_ms}).get_parsed_content("network_def")
        assert isinstance(network, network_class)
        (folder / bundle).mkdir()
        paths[bundle] = folder / bundle / "model.pt"
        torch.save(network.state_dict(), paths[bundle])
    return paths


@pytest.mark.slow
def test_edss_bundle_explains_every_test_session_in_its_t1_space(tiny_manifest, random_checkpoints, tmp_path):
    overrides = {
        **{k: TINY_OVERRIDES[k] for k in ("spacing", "roi_size", "num_workers")},
        "data_manifest": str(tiny_manifest),
        "ckpt_dir": str(random_checkpoints["edss"].parent),
        "explain_dir": str(tmp_path / "explain"),
    }
    check(run_bundle("edss", "explaining", ["train", "explain"], overrides))
    testing = read_manifest(tiny_manifest)["testing"]
    for entry in testing:
        t1 = nib.load(tiny_manifest.parent / entry["t1"])
        for stream in ("t1", "t2"):
            saliency = nib.load(tmp_path / "explain" / f"{entry['session']}_{stream}_gradcam.nii.gz")
            assert saliency.shape == t1.shape
            np.testing.assert_allclose(saliency.affine, t1.affine, atol=1e-5)
            assert saliency.get_fdata().max() > 0
        assert (tmp_path / "explain" / "png" / f"{entry['session']}_gradcam.png").is_file()
    table = pd.read_csv(tmp_path / "explain" / "regions_gradcam.csv")
    rows = table[table["session"] != "mean"]
    assert sorted(rows["session"].unique()) == sorted(e["session"] for e in testing)
    assert sorted(table.loc[table["session"] == "mean", "modality"]) == ["t1", "t2"]
    # the tiny cohort has lesion masks and tissue maps: every region is measured
    assert rows[["lesion_mean", "nawm_mean", "gm_mean"]].notna().all().all()
    assert (rows["nawm_voxels"] > 0).all()


@pytest.mark.slow
def test_cli_explains_the_sex_model_with_occlusion(tiny_manifest, random_checkpoints, tmp_path, capsys):
    from monai_ms.cli import main

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        status = main(["explain", "sex", "--manifest", str(tiny_manifest), "--method", "occlusion", "--mask-size", "16",
                       "--checkpoint", str(random_checkpoints["sex"]), "--output-dir", str(tmp_path / "out"), "--device", "cpu",
                       "--set", "spacing=[4.0, 4.0, 4.0]", "--set", "roi_size=[32, 40, 32]"])
    assert status == 0
    table = pd.read_csv(tmp_path / "out" / "regions_occlusion.csv")
    sessions = [e["session"] for e in read_manifest(tiny_manifest)["testing"]]
    assert sorted(table.loc[table["session"] != "mean", "session"]) == sorted(sessions)
    t1 = nib.load(tiny_manifest.parent / read_manifest(tiny_manifest)["testing"][0]["t1"])
    saliency = nib.load(tmp_path / "out" / f"{sessions[0]}_t1_occlusion.nii.gz")
    assert saliency.shape == t1.shape and np.allclose(saliency.affine, t1.affine)

    # a bad cohort stops with the problem, no traceback
    assert main(["explain", str(REPO / "bundles" / "sex"), "--manifest", str(tmp_path / "nowhere.json")]) == 1
    assert "nowhere.json" in capsys.readouterr().err
