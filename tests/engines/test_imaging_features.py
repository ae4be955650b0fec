"""The imaging-feature baseline: a label-free tissue model and a linear model on measured features."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from monai_ms.engines.metrics.imaging_features import feature_table, fit_feature_model, session_features, tissue_fractions
from monai_ms.engines.metrics.scores import regression_baselines, regression_metrics

FRACTIONS = {"csf": 0.15, "gm": 0.45, "wm": 0.40}
MEANS_T1 = {"csf": 30.0, "gm": 65.0, "wm": 100.0}


def _brain(rng: np.random.Generator, shape=(40, 40, 40), scale: float = 1.0, bias: float = 0.0, means=MEANS_T1) -> np.ndarray:
    """A ball of brain whose voxels are drawn CSF / GM / WM in FRACTIONS, 4% noise, a scale and a linear bias."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    ball = (grid**2).sum(0) < 0.9
    names = rng.choice(list(FRACTIONS), size=int(ball.sum()), p=list(FRACTIONS.values()))
    values = np.array([means[n] for n in names]) * (1 + 0.04 * rng.standard_normal(names.size))
    image = np.zeros(shape)
    image[ball] = values
    image *= scale * np.exp(bias * grid[0])  # bias: a smooth multiplicative field across the head
    return image


@pytest.mark.parametrize("scale, bias", [(1.0, 0.0), (37.0, 0.0), (0.2, 0.05)])
def test_tissue_model_recovers_known_fractions_under_scaling_and_bias(scale, bias) -> None:
    fractions = tissue_fractions(_brain(np.random.default_rng(0), scale=scale, bias=bias))
    for name, truth in FRACTIONS.items():
        assert fractions[f"{name}_fraction"] == pytest.approx(truth, abs=0.03), (name, fractions)


def test_tissue_classes_follow_the_modality_contrast() -> None:
    t2_means = {"csf": 150.0, "gm": 80.0, "wm": 55.0}  # on T2 CSF is the brightest, white matter the darkest
    fractions = tissue_fractions(_brain(np.random.default_rng(1), means=t2_means), modality="t2")
    assert fractions["csf_fraction"] == pytest.approx(0.15, abs=0.03) and fractions["wm_fraction"] == pytest.approx(0.40, abs=0.03)
    with pytest.raises(ValueError, match="modality must be one of"):
        tissue_fractions(_brain(np.random.default_rng(1)), modality="flair-ish")
    with pytest.raises(ValueError, match="at least 100 brain voxels"):
        tissue_fractions(np.zeros((4, 4, 4)))


def _cohort(tmp_path, subjects: int = 12):
    """Sessions whose EDSS is driven by the lesion volume of their masks (two sessions for some subjects)."""
    rng = np.random.default_rng(2)
    entries = []
    for s in range(subjects):
        for k in range(1 + s % 2):
            name = f"S{s:02d}-{k}"
            image = _brain(rng, shape=(24, 24, 24))
            mask = np.zeros(image.shape, np.uint8)
            lesions = int(rng.integers(0, 6))
            for _ in range(lesions):
                x, y, z = rng.integers(8, 16, 3)
                mask[x : x + 2, y : y + 2, z : z + 2] = 1
            affine = np.diag([2.0, 2.0, 2.0, 1.0])
            nib.save(nib.Nifti1Image(image.astype(np.float32), affine), tmp_path / f"{name}_T1.nii.gz")
            nib.save(nib.Nifti1Image(mask, affine), tmp_path / f"{name}_lesion.nii.gz")
            volume = mask.sum() * 8 / 1000.0
            entries.append({"subject": f"S{s:02d}", "session": name, "t1": str(tmp_path / f"{name}_T1.nii.gz"),
                            "lesion": str(tmp_path / f"{name}_lesion.nii.gz"), "age": float(rng.uniform(20, 60)),
                            "sex": "F" if s % 3 else "M",
                            "edss": float(np.clip(round(2 * (1 + 8 * volume + 0.3 * rng.standard_normal())) / 2, 0, 10)),
                            "true_volume_ml": volume})
    return entries


def test_session_features_measure_brain_and_lesions(tmp_path) -> None:
    entry = _cohort(tmp_path, subjects=2)[1]
    row = session_features(entry)
    assert row["lesion_volume_ml"] == pytest.approx(entry["true_volume_ml"])
    assert row["brain_volume_ml"] == pytest.approx(np.count_nonzero(nib.load(entry["t1"]).get_fdata()) * 8 / 1000.0)
    assert row["log_lesion_volume_ml"] == pytest.approx(math.log1p(row["lesion_volume_ml"]))
    no_mask = session_features({**entry, "lesion": None})
    assert math.isnan(no_mask["lesion_volume_ml"]) and no_mask["brain_volume_ml"] == row["brain_volume_ml"]


def test_feature_baseline_finds_the_lesion_signal_a_median_cannot(tmp_path) -> None:
    entries = _cohort(tmp_path)
    train, held_out = [e for e in entries if e["subject"] < "S09"], [e for e in entries if e["subject"] >= "S09"]
    result = fit_feature_model(train, held_out, "edss", "edss", feature_table(train, workers=1), feature_table(held_out, workers=1))
    assert "log_lesion_volume_ml" in result["features"]
    y = [e["edss"] for e in held_out]
    model_mae = regression_metrics(result["predictions"], y)["mae"]
    median_mae = regression_baselines(train, held_out, "edss")["training_median"]["mae"]
    assert model_mae < 0.6 * median_mae, (model_mae, median_mae)
    # without masks the lesion features are left out, not filled in
    bare = [{**e, "lesion": None} for e in entries]
    assert "log_lesion_volume_ml" not in fit_feature_model(bare[:10], bare[10:], "edss", "edss")["features"]
    with pytest.raises(ValueError, match="at least 2 training subjects"):
        fit_feature_model(train[:1], held_out, "edss", "edss")


def test_session_features_follow_the_bundles_bias_correction(tmp_path) -> None:
    """With ``bias_correction`` (the bundle's N4 setting) the tissue model reads the corrected image: a strong field
    that moves the class fractions is taken out; the brain volume does not change."""
    image = _brain(np.random.default_rng(3), shape=(48, 48, 48), bias=0.5)
    nib.save(nib.Nifti1Image(image.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "t1.nii.gz")
    entry = {"subject": "S", "session": "S-1", "t1": str(tmp_path / "t1.nii.gz")}
    raw, corrected = session_features(entry, lesion_key=None), session_features(entry, lesion_key=None, bias_correction=True)
    raw_error = max(abs(raw[f"{n}_fraction"] - truth) for n, truth in FRACTIONS.items())
    corrected_error = max(abs(corrected[f"{n}_fraction"] - truth) for n, truth in FRACTIONS.items())
    assert raw_error > 0.05 and corrected_error < 0.03, (raw, corrected)
    assert corrected["brain_volume_ml"] == raw["brain_volume_ml"]
    # the evaluation's baselines pass the setting on
    rows = feature_table([entry], lesion_key=None, bias_correction=True)
    assert rows[0]["csf_fraction"] == corrected["csf_fraction"]


def test_features_are_cached_by_file_content_and_settings(tmp_path, monkeypatch) -> None:
    """A second evaluation (or cross-validation fold) reads a session's features from the cache: the same values,
    NaN lesion features included; a changed image, mask or N4 setting is measured afresh; an empty variable turns
    the cache off."""
    from monai_ms.engines.metrics.imaging_features import feature_cache_dir

    monkeypatch.setenv("MONAI_MS_CACHE_DIR", str(tmp_path / "cache"))
    entry = _cohort(tmp_path, subjects=2)[1]
    first = session_features(entry)
    (stored,) = list(feature_cache_dir().glob("*.json"))
    assert session_features(entry) == first
    bare = {**entry, "lesion": None}
    assert math.isnan(session_features(bare)["lesion_volume_ml"]) and math.isnan(session_features(bare)["lesion_count"])
    # the row comes from the file: what is stored there is what the next call returns
    stored.write_text(stored.read_text().replace(str(first["brain_volume_ml"]), "123.0"))
    assert session_features(entry)["brain_volume_ml"] == 123.0
    assert session_features(entry, bias_correction=True)["brain_volume_ml"] == first["brain_volume_ml"]
    image = nib.load(entry["t1"])
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj)[::-1].copy(), image.affine), entry["t1"])  # same voxels, new bytes
    assert session_features(entry)["brain_volume_ml"] == first["brain_volume_ml"]
    mask = nib.load(entry["lesion"])
    nib.save(nib.Nifti1Image(np.zeros(mask.shape, np.uint8), mask.affine), entry["lesion"])
    assert session_features(entry)["lesion_volume_ml"] == 0.0
    monkeypatch.setenv("MONAI_MS_CACHE_DIR", "")
    assert feature_cache_dir() is None and session_features(entry)["lesion_volume_ml"] == 0.0
