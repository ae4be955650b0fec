"""The synthetic generator's settings object: JSON round trip, refusals, defaults unchanged, named shifts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import nibabel as nib
import nibabel.processing
import numpy as np
import pandas as pd
import pytest

from monai_ms.cli import main
from monai_ms.data.synthetic import GENERATOR_VERSION, generate_cohort, sample_latents
from monai_ms.data.synthetic_settings import SCANNER_SHIFTS, SHIFTS, SynthSettings

# SHA-256 of SynthSettings().to_json() per generator version. A changed default changes every cohort, so it
# needs a new GENERATOR_VERSION (cached demo cohorts are then not reused) and a new entry here; a new field
# whose default keeps today's bytes (check against the previous commit's cohort) only updates the entry.
DEFAULTS_SHA256 = {2: "7de12eff4c70eb15bc076a6e68101d3647efa854fc3726fd7c503e4fa3aa6786"}  # + the FLAIR fields (no byte changed)


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the settings object ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["default", *SHIFTS])
def test_settings_round_trip_through_json(name, tmp_path):
    settings = SynthSettings() if name == "default" else SynthSettings().shifted(name)
    assert SynthSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    settings.to_json(tmp_path / "settings.json")
    assert SynthSettings.from_json(tmp_path / "settings.json") == settings


def test_defaults_are_pinned_to_the_generator_version():
    digest = hashlib.sha256(SynthSettings().to_json().encode()).hexdigest()
    assert digest == DEFAULTS_SHA256[GENERATOR_VERSION], "the default settings changed: see DEFAULTS_SHA256"
    assert SynthSettings().changes() == {}


@pytest.mark.parametrize(
    "values, key",
    [
        ({"acquisition": {"bias_strength": 0.3}}, "acquisition.bias_strength"),
        ({"scanner": {}}, "scanner"),
        ({"lesions": {"sizes": [[1, 2, 3, 4, 5]], "max_lesion": 3}}, "lesions.max_lesion"),
    ],
)
def test_unknown_keys_are_refused_by_name(values, key):
    with pytest.raises(ValueError, match=f"unknown setting '{key}'"):
        SynthSettings.from_dict(values)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"demographics": {"female_fraction": 1.5}}, "'demographics.female_fraction' must be in \\[0, 1\\], got 1.5"),
        ({"acquisition": {"bias_sd": "strong"}}, "'acquisition.bias_sd' must be a finite number"),
        ({"acquisition": {"t1_orientation": "RSA"}}, "'acquisition.t1_orientation' must be three axis codes"),
        ({"acquisition": {"noise_fraction_3t": [0.1]}}, "must have 2 values"),
        ({"acquisition": {"t1_csf_wm_ratio": 0.3}}, "must be given together"),
        ({"acquisition": {"t1_csf_wm_ratio": 0.8, "t1_gm_wm_ratio": 0.7}}, "0 < csf < gm < 1"),
        ({"demographics": {"first_scan_dates": ["2008-01-01", "2008-13-01"]}}, "ISO dates"),
        ({"anatomy": {"deformation_max_mm": 9.0}}, "< 6.9 mm"),
    ],
)
def test_invalid_values_are_refused_with_the_rule(values, message):
    with pytest.raises(ValueError, match=message):
        SynthSettings.from_dict(values)


def test_overrides_are_partial_and_recorded():
    settings = SynthSettings().with_overrides({"anatomy": {"head_scale_mean_male": 1.0}, "edss": {"age": 0}})
    assert settings.anatomy.head_scale_mean_male == 1.0 and settings.anatomy.head_scale_sd == 0.03
    assert isinstance(settings.edss.age, float)  # JSON integers become floats
    assert settings.changes() == {"anatomy.head_scale_mean_male": 1.0, "edss.age": 0.0}
    assert SynthSettings().shifted("noise", "pose").name == "noise+pose"
    assert SynthSettings().shifted("all").changes() == {
        k: v for name in SCANNER_SHIFTS for k, v in SynthSettings().shifted(name).changes().items()
    }
    with pytest.raises(ValueError, match="unknown cohort shift 'mri'"):
        SynthSettings().shifted("mri")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.name = "other"  # type: ignore[misc]


def test_every_field_is_documented():
    for group in (getattr(SynthSettings(), f.name) for f in dataclasses.fields(SynthSettings) if f.name != "name"):
        doc = type(group).__doc__
        for f in dataclasses.fields(group):
            assert f"\n        {f.name}: " in doc, f"{type(group).__name__}.{f.name} is not documented"


def test_every_field_and_shift_is_in_the_docs():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "synthetic_cohort.md").read_text()
    for section, values in SynthSettings().to_dict().items():
        if section != "name":
            missing = [key for key in values if f"| `{key}` |" not in docs]
            assert not missing, f"docs/synthetic_cohort.md lacks {section} fields {missing}"
    assert all(f"| `{name}` |" in docs for name in SHIFTS)


def test_latent_settings_take_effect():
    default = sample_latents(40, seed=2)
    pd.testing.assert_frame_equal(default, sample_latents(40, seed=2, settings=SynthSettings()))
    heavier = SynthSettings.from_dict({"lesions": {"load_log_ml_intercept": 2.25}, "anatomy": {"head_scale_mean_male": 1.05}})
    shifted = sample_latents(40, seed=2, settings=heavier)
    assert list(shifted["sex"]) == list(default["sex"])  # the same people
    assert shifted["lesion_load_ml"].median() > 1.5 * default["lesion_load_ml"].median()
    men = default["sex"] == "M"
    assert (shifted.loc[men, "head_scale"] > default.loc[men, "head_scale"]).all()
    assert (shifted.loc[~men, "head_scale"] == default.loc[~men, "head_scale"]).all()
    with pytest.raises(ValueError, match="settings must be a SynthSettings"):
        sample_latents(2, settings={"lesions": {}})


# --- cohorts -----------------------------------------------------------------------------------------------
def test_default_settings_give_the_same_bytes_as_no_settings(tmp_path):
    generate_cohort(tmp_path / "none", subjects=2, seed=4, tiny=True, workers=1)
    generate_cohort(tmp_path / "default", subjects=2, seed=4, tiny=True, workers=1, settings=SynthSettings())
    assert _files(tmp_path / "none") == _files(tmp_path / "default")
    marker = json.loads((tmp_path / "none" / "cohort.json").read_text())
    assert marker["settings"] == SynthSettings().to_dict() and marker["settings_changes"] == {}


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    """One tiny subject (seed 0) under the default settings and under each scanner shift: name -> images."""
    root = tmp_path_factory.mktemp("shifts")
    cohorts = {}
    for name in ("default", *SCANNER_SHIFTS):
        settings = SynthSettings() if name == "default" else SynthSettings().shifted(name)
        generate_cohort(root / name, subjects=1, seed=0, tiny=True, workers=1, settings=settings)
        truth = pd.read_csv(root / name / "ground_truth.csv").iloc[0]
        mri = truth["MRI_ID"]
        cohorts[name] = {
            "t1": nib.load(root / name / "T1" / f"{mri}_T1_preprocessed.nii.gz"),
            "t2": nib.load(root / name / "T2" / f"{mri}_T2_preprocessed.nii.gz"),
            "tissue": nib.load(root / name / "tissue" / f"{mri}_tissue.nii.gz"),
            "truth": truth,
            "marker": json.loads((root / name / "cohort.json").read_text()),
        }
    return cohorts


def _tissue_ratios(cohort, modality):
    """(CSF / WM, GM / WM) of the median intensities within the ground-truth tissue labels."""
    image = cohort[modality]
    tissue = nibabel.processing.resample_from_to(cohort["tissue"], image, order=0) if modality == "t2" else cohort["tissue"]
    labels = np.asarray(tissue.dataobj)
    values = image.get_fdata()
    median = {label: np.median(values[labels == label]) for label in (1, 2, 3)}
    return np.array([median[1] / median[3], median[2] / median[3]])


def _wm_log_intensity(cohort):
    labels = np.asarray(cohort["tissue"].dataobj)
    return labels == 3, np.log(np.maximum(cohort["t1"].get_fdata(), 1e-6))


def test_each_shift_is_recorded_in_cohort_json(shifted):
    for name in SCANNER_SHIFTS:
        marker = shifted[name]["marker"]
        assert marker["settings"]["name"] == name
        assert SynthSettings.from_dict(marker["settings"]) == SynthSettings().shifted(name)
        assert marker["settings_changes"] and all(key.startswith("acquisition.") for key in marker["settings_changes"])


def test_contrast_shift_changes_the_tissue_intensity_ratios(shifted):
    for modality in ("t1", "t2"):
        default = _tissue_ratios(shifted["default"], modality)
        contrast = _tissue_ratios(shifted["contrast"], modality)
        change = contrast / default
        if modality == "t1":  # darker CSF and grey matter relative to white matter (0.30 / 0.66 vs 0.40 / 0.77)
            assert change[0] < 0.9 and change[1] < 0.95, (default, contrast)
        else:  # brighter CSF, grey matter closer to white matter (2.9 / 1.22 vs 2.29 / 1.35)
            assert change[0] > 1.04 and change[1] < 0.97, (default, contrast)  # CSF: partial volume at 4 mm
    # the other shifts keep the ratios within a few percent
    for name in ("bias", "noise", "pose"):
        np.testing.assert_allclose(_tissue_ratios(shifted[name], "t1"), _tissue_ratios(shifted["default"], "t1"), rtol=0.05)


def test_pose_shift_stores_lps_and_keeps_the_default_ras(shifted):
    assert nib.aff2axcodes(shifted["default"]["t1"].affine) == ("R", "A", "S")
    assert nib.aff2axcodes(shifted["default"]["t2"].affine) == ("L", "P", "S")
    for modality in ("t1", "t2"):
        diagonal = np.diag(shifted["pose"][modality].affine)[:3]
        assert diagonal[0] < 0 and diagonal[1] < 0 and diagonal[2] > 0
    assert shifted["pose"]["marker"]["settings"]["acquisition"]["rotation_sd_deg"] > 2.0


def test_resolution_shift_coarsens_the_t1_and_thickens_the_t2_slices(shifted):
    default, coarse = shifted["default"], shifted["resolution"]
    np.testing.assert_allclose(coarse["t1"].header.get_zooms(), 1.3 * np.array(default["t1"].header.get_zooms()))
    assert coarse["t2"].header.get_zooms()[2] == pytest.approx(2.25 / 1.5 * default["t2"].header.get_zooms()[2])
    assert coarse["t2"].header.get_zooms()[:2] == default["t2"].header.get_zooms()[:2]
    assert coarse["marker"]["summary"]["spacing"] == pytest.approx(1.3 * default["marker"]["summary"]["spacing"])


def test_noise_shift_raises_the_noise(shifted):
    default, noisy = shifted["default"], shifted["noise"]
    for column in ("t1_noise_fraction", "t2_noise_fraction"):
        assert noisy["truth"][column] == pytest.approx(2.5 * default["truth"][column], rel=0.01)
    # high-frequency variation within white matter: differences of neighbouring WM voxels
    spreads = []
    for cohort in (default, noisy):
        wm, log_t1 = _wm_log_intensity(cohort)
        both = wm[1:] & wm[:-1]
        spreads.append(np.std((log_t1[1:] - log_t1[:-1])[both]))
    assert spreads[1] > 1.5 * spreads[0], spreads


def _quadratic_fit(wm: np.ndarray, log_t1: np.ndarray) -> np.ndarray:
    """A quadratic in the voxel coordinates fitted to the log WM intensity (its smooth part), at the WM voxels."""
    ijk = np.argwhere(wm).astype(float)
    x, y, z = ((ijk - ijk.mean(axis=0)) / ijk.std(axis=0)).T
    design = np.stack([np.ones_like(x), x, y, z, x * x, y * y, z * z, x * y, x * z, y * z], axis=1)
    return design @ np.linalg.lstsq(design, log_t1[wm], rcond=None)[0]


def test_bias_shift_raises_low_frequency_variation_in_white_matter(shifted):
    """The spread of a quadratic fitted to the log WM intensity (the smooth part) grows; the rest does not."""
    smooth, rough = [], []
    for name in ("default", "bias"):
        wm, log_t1 = _wm_log_intensity(shifted[name])
        fit = _quadratic_fit(wm, log_t1)
        smooth.append(np.std(fit))
        rough.append(np.std(log_t1[wm] - fit))
    assert smooth[1] > 2.0 * smooth[0], smooth
    assert rough[1] == pytest.approx(rough[0], rel=0.2)


def test_n4_takes_out_most_of_the_bias_shift(shifted):
    """``N4BiasCorrectiond`` (the chains' ``bias_correction``) on the bias shift's T1: the smooth WM variation the
    shift added is taken out, to about the default scanner's after the same correction."""
    from monai_ms.data.bias_correction import n4_log_bias_field

    spread = {}
    for name in ("default", "bias"):
        wm, log_t1 = _wm_log_intensity(shifted[name])
        image = shifted[name]["t1"]
        corrected = log_t1 - n4_log_bias_field(image.get_fdata(), image.header.get_zooms()[:3], grid_mm=4.0)
        spread[name] = float(np.std(_quadratic_fit(wm, log_t1))), float(np.std(_quadratic_fit(wm, corrected)))
    (default_raw, default_n4), (bias_raw, bias_n4) = spread["default"], spread["bias"]
    # measured: default 0.049 -> 0.015, bias 0.161 -> 0.019 (the default generator has a weak field of its own)
    assert bias_n4 < 0.25 * bias_raw and bias_n4 < 1.5 * default_n4, spread
    assert default_n4 < default_raw, spread


# --- command line ------------------------------------------------------------------------------------------
def test_cli_settings_file_and_shift(tmp_path, capsys):
    settings_file = tmp_path / "site.json"
    settings_file.write_text(json.dumps({"name": "site", "acquisition": {"bias_sd": 0.2}}))
    out = tmp_path / "cohort"
    argv = ["synth", "--out", str(out), "--subjects", "1", "--tiny", "--workers", "1"]
    assert main([*argv, "--settings", str(settings_file), "--shift", "pose"]) == 0
    recorded = json.loads((out / "cohort.json").read_text())
    assert recorded["settings"]["name"] == "site+pose"
    assert recorded["settings_changes"]["acquisition.bias_sd"] == 0.2
    assert recorded["settings_changes"]["acquisition.t1_orientation"] == "LPS"
    assert "site+pose" in (out / "README.md").read_text()
    capsys.readouterr()

    assert main(["synth", "--show-settings", "--shift", "noise"]) == 0
    assert SynthSettings.from_dict(json.loads(capsys.readouterr().out)) == SynthSettings().shifted("noise")

    settings_file.write_text(json.dumps({"acquisition": {"bias": 0.2}}))
    assert main([*argv, "--overwrite", "--settings", str(settings_file)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "unknown setting 'acquisition.bias'" in error and str(settings_file) in error
    assert main(["synth", "--subjects", "1"]) == 2
    assert "required: --out" in capsys.readouterr().err
