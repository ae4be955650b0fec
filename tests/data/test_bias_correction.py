"""N4 bias-field correction (``monai_ms.data.bias_correction``): the field it recovers and where the chains use it.

The generator's bias shift is corrected in ``test_synth_settings.py`` (``test_n4_takes_out_most_of_the_bias_shift``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_ms.data.bias_correction import N4BiasCorrectiond, n4_log_bias_field
from monai_ms.data.transforms import paired_steps

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def _phantom(shape=(36, 40, 32), seed=0):
    """A skull-stripped two-tissue ellipsoid (grey 60, white 100, 3% noise) and a smooth log field (+-0.35)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    clean = np.where(radius < 0.85, np.where(radius < 0.55, 100.0, 60.0), 0.0)
    clean = np.where(clean > 0, clean * (1 + 0.03 * rng.standard_normal(shape)), 0.0).astype(np.float32)
    log_field = (0.25 * grid[0] - 0.2 * grid[1] ** 2 + 0.15 * grid[2]).astype(np.float32)
    return clean, log_field


def test_n4_recovers_a_known_smooth_field():
    clean, true_log = _phantom()
    brain = clean > 0
    biased = clean * np.exp(true_log)
    estimate = n4_log_bias_field(biased, spacing=(2.0, 2.0, 2.0), grid_mm=4.0)
    assert estimate.shape == biased.shape and estimate.dtype == np.float32
    assert abs(float(estimate[brain].mean())) < 1e-4  # mean 0 over the brain: the brain's mean log intensity is kept
    # the field up to a constant: the error is small next to the field's own spread (0.13 SD)
    error = (estimate - true_log)[brain]
    assert np.std(error) < 0.25 * np.std(true_log[brain]), (np.std(error), np.std(true_log[brain]))
    # white matter, uniform before the field, is nearly uniform again
    white = clean > 80
    corrected = biased * np.exp(-estimate)
    assert np.std(np.log(corrected[white])) < 0.4 * np.std(np.log(biased[white]))


def test_n4_leaves_an_empty_image_alone():
    np.testing.assert_array_equal(n4_log_bias_field(np.zeros((8, 8, 8))), np.zeros((8, 8, 8), np.float32))


def test_dictionary_transform_keeps_background_metadata_and_channels():
    clean, true_log = _phantom()
    biased = torch.from_numpy(clean * np.exp(true_log))
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    image = MetaTensor(torch.stack([biased, 0.5 * biased]), affine=affine)  # two channels, each its own field
    out = N4BiasCorrectiond(keys="t1", grid_mm=4.0)({"t1": image, "age": 40.0})
    corrected = out["t1"]
    assert isinstance(corrected, MetaTensor) and corrected.shape == image.shape
    torch.testing.assert_close(corrected.affine, image.affine)
    assert out["age"] == 40.0
    background = torch.from_numpy(clean == 0)
    assert torch.all(corrected[:, background] == 0)
    # each channel corrected on its own: the second is still half the first (same field, half the scale)
    torch.testing.assert_close(corrected[1], 0.5 * corrected[0], rtol=1e-3, atol=1e-3)
    white = torch.from_numpy(clean > 80)
    assert corrected[0, white].log().std() < 0.4 * image[0, white].log().std()


@pytest.mark.parametrize("stage", ["train", "eval", "infer"])
def test_chains_correct_every_image_only_when_asked(stage):
    def n4_steps(**kwargs):
        return [s for s in paired_steps(stage, image_keys=["t1", "t2", "flair"], **kwargs) if s.target is N4BiasCorrectiond]

    assert n4_steps() == []
    (step,) = n4_steps(bias_correction=True)
    assert step.kwargs["keys"] == ["t1", "t2", "flair"]
    # the exported MONAI-only inference config cannot hold it, and says so
    with pytest.raises(ValueError, match="N4BiasCorrectiond has no MONAI-only equivalent"):
        step.monai_config()


def _paired_chain_configs(node):
    """Every ``paired_transforms`` entry of a config tree."""
    if isinstance(node, dict):
        if node.get("_target_") == "monai_ms.data.transforms.paired_transforms":
            yield node
        for value in node.values():
            yield from _paired_chain_configs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _paired_chain_configs(value)


def test_every_bundle_chain_reads_the_bundle_setting():
    """Training, validation, inference and explanation chains of every bundle follow its one ``bias_correction``."""
    chains = 0
    for config in sorted(BUNDLES.glob("*/configs/*.json")):
        for chain in _paired_chain_configs(json.loads(config.read_text())):
            assert chain.get("bias_correction") == "@bias_correction", config
            chains += 1
    assert chains == 15  # 4 bundles x (train, validate, infer), and explain for 3 of them
    # the imaging-feature baseline of each evaluation measures the images the way the chain sees them
    for bundle in ("brain_age", "sex", "edss"):
        text = (BUNDLES / bundle / "configs" / "evaluate.json").read_text()
        assert text.count('"imaging_task"') == 1 and text.count('"bias_correction": "@bias_correction"') == 1, bundle
    # on by default where it was chosen (brain_age 0.6.0 cross-validated, lesion_seg 0.6.0 on validation splits:
    # docs/generalisation.md), off elsewhere
    defaults = {"brain_age": True, "sex": False, "edss": False, "lesion_seg": True}
    for bundle, default in defaults.items():
        text = (BUNDLES / bundle / "configs" / "train.json").read_text()
        assert json.loads(text)["bias_correction"] is default, bundle
        # every checkpoint's provenance record says which images it saw (the EDSS lesion pathway checks it)
        assert "@task, @modalities, @bias_correction)" in text, bundle
    # the EDSS lesion stage trains on the images the EDSS run reads, not on lesion_seg's default
    edss = json.loads((BUNDLES / "edss" / "configs" / "train.json").read_text())
    (stage,) = [step for step in edss["fit_starts"] if isinstance(step, dict) and step["_target_"].endswith("start_lesion_pathway")]
    assert stage["bias_correction"] == stage["stage_inherited"]["bias_correction"] == "@bias_correction"


def test_bundle_override_builds_the_corrected_chain():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "brain_age" / "configs" / "train.json"))
    parser["bias_correction"] = True
    transforms = parser.get_parsed_content("validate#paired").transforms
    assert sum(isinstance(t, N4BiasCorrectiond) for t in transforms) == 1


def test_monai_only_export_is_not_written_for_a_bias_corrected_bundle():
    from monai.bundle import ConfigParser

    from monai_ms.bundle.export import monai_only_inference_config

    configs = BUNDLES / "edss" / "configs"
    metadata = json.loads((configs / "metadata.json").read_text())
    configs_written = {}
    for bias_correction in (False, True):
        parser = ConfigParser()
        parser.read_config([str(configs / "train.json"), str(configs / "inference.json")])
        parser["bundle_root"] = str(BUNDLES / "edss")
        parser["bias_correction"] = bias_correction
        configs_written[bias_correction] = monai_only_inference_config(parser, metadata)
    assert configs_written[False] is not None and configs_written[True] is None


def test_a_failed_fit_is_one_line_naming_the_file():
    """SimpleITK's multi-line exception becomes one line with the image's file (here: a brain too small to shrink)."""
    image = MetaTensor(torch.full((1, 2, 2, 2), 5.0), affine=torch.eye(4), meta={"filename_or_obj": "/data/sub-1_T1.nii.gz"})
    with pytest.raises(ValueError, match=r"^/data/sub-1_T1\.nii\.gz: N4 bias-field correction failed \(.+\); check") as error:
        N4BiasCorrectiond(keys="t1")({"t1": image})
    assert "\n" not in str(error.value)
