"""Every bundle trains and infers on T1 + FLAIR and on T1 + T2 + FLAIR (the ``modalities`` setting), and
inference refuses a manifest that lacks a modality the model needs, naming the session, before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from bundle_runner import NO_N4, REPO, TINY_OVERRIDES, check, run_bundle

from monai_ms.bundle import demo_manifest
from monai_ms.data import read_manifest, write_manifest
from monai_ms.data.fields import IMAGE_KEYS
from monai_ms.engines.training.lesion_pathway import read_provenance

pytestmark = pytest.mark.slow

LESION_TINY = {"spacing": [4.0, 4.0, 4.0], "patch_size": [32, 32, 32], "patches_per_volume": 2, "batch_size": 2, "num_workers": 0, **NO_N4}
SETTINGS = {
    "lesion_seg": {**LESION_TINY, "epochs": 1},
    "brain_age": {**TINY_OVERRIDES, "epochs": 1},
    "sex": {**TINY_OVERRIDES, "epochs": 1},
    "edss": {**TINY_OVERRIDES, "epochs": 1, "lesion_init": ""},
}
MODALITIES = {"t1_flair": ["t1", "flair"], "t1_t2_flair": ["t1", "t2", "flair"]}


@pytest.fixture(scope="module")
def flair_manifest(tmp_path_factory):
    """The tiny test cohort with a FLAIR per session (same split as the T1 + T2 one)."""
    path = demo_manifest(tmp_path_factory.mktemp("flair_cohort"), subjects=14, spacing=None, seed=1, tiny=True, flair=True)
    manifest = read_manifest(path)
    assert all("flair" in e and "t2" in e for split in ("training", "validation", "testing") for e in manifest[split])
    return path


def _output(bundle, out):
    if bundle == "lesion_seg":
        return {"inference_dir": str(out / "inference")}
    return {"predictions_csv": str(out / "predictions.csv")}


@pytest.mark.parametrize("modalities", list(MODALITIES), ids=list(MODALITIES))
@pytest.mark.parametrize("bundle", ["lesion_seg", "brain_age", "sex", "edss"])
def test_bundle_trains_and_infers_on_its_modalities(bundle, modalities, flair_manifest, tmp_path):
    chosen = MODALITIES[modalities]
    overrides = {**SETTINGS[bundle], "modalities": chosen, "data_manifest": flair_manifest,
                 "output_dir": str(tmp_path / "eval"), "ckpt_dir": str(tmp_path / "models")}
    check(run_bundle(bundle, "training", ["train"], overrides))
    model = tmp_path / "models" / "model.pt"
    assert read_provenance(model)["modalities"] == chosen
    state = torch.load(model, map_location="cpu", weights_only=True)
    convolutions = [(name, value) for name, value in state.items() if name.endswith("conv.weight") and value.dim() == 5]
    # the first convolution reads one channel per modality; EDSS: its segmenter reads them all, its second
    # stream every modality but the T1
    if bundle == "edss":
        lesion = next(v for n, v in convolutions if n.startswith("lesion_network."))
        second = next(v for n, v in convolutions if n.startswith("t2_encoder."))
        assert (lesion.shape[1], second.shape[1]) == (len(chosen), len(chosen) - 1)
    else:
        assert convolutions[0][1].shape[1] == len(chosen), convolutions[0][0]
    check(run_bundle(bundle, "inferring", ["train", "inference"], {**overrides, **_output(bundle, tmp_path)}))
    testing = {e["session"] for e in read_manifest(flair_manifest)["testing"]}
    if bundle == "lesion_seg":
        table = pd.read_csv(tmp_path / "inference" / "lesions.csv")
        assert set(table["session"]) == testing
        assert all((tmp_path / "inference" / f"{s}_lesion_mask.nii.gz").is_file() for s in testing)
    else:
        assert set(pd.read_csv(tmp_path / "predictions.csv")["session"]) == testing


def test_inference_refuses_a_manifest_without_a_modality_the_model_reads(flair_manifest, tmp_path):
    overrides = {**SETTINGS["lesion_seg"], "modalities": ["t1", "flair"], "data_manifest": flair_manifest,
                 "output_dir": str(tmp_path / "eval"), "ckpt_dir": str(tmp_path / "models")}
    check(run_bundle("lesion_seg", "training", ["train"], overrides))
    manifest = read_manifest(flair_manifest)
    root = Path(flair_manifest).parent
    scans = []
    for index, entry in enumerate(manifest["testing"]):
        entry = {k: str((root / v).resolve()) if k in IMAGE_KEYS else v for k, v in entry.items()}
        if index == 0:
            entry.pop("flair")  # a T1 + T2 session given to a T1 + FLAIR model
        scans.append(entry)
    write_manifest({**manifest, "testing": scans}, tmp_path / "scans.json")
    result = run_bundle("lesion_seg", "inferring", ["train", "inference"],
                        {**overrides, "data_manifest": str(tmp_path / "scans.json"), "inference_dir": str(tmp_path / "inference")})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"testing[0] session {scans[0]['session']}: missing key flair (needed by task lesion_seg_inference)" in result.stderr
    assert not (tmp_path / "inference" / "lesions.csv").exists()  # stopped before any work


def test_exported_metadata_records_the_modalities():
    from monai_ms.bundle.export import inputs_for_modalities

    edss = json.loads((REPO / "bundles" / "edss" / "configs" / "metadata.json").read_text())["network_data_format"]["inputs"]
    inputs = inputs_for_modalities(edss, ["t1", "t2", "flair"])
    assert list(inputs) == ["t1", "contrasts", "demographics"]
    assert inputs["contrasts"]["num_channels"] == 2 and inputs["contrasts"]["channel_def"] == {"0": "T2w", "1": "FLAIR"}
    assert list(inputs_for_modalities(edss, ["t1", "flair"])) == ["t1", "flair", "demographics"]
