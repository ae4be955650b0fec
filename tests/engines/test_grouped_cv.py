"""Inner cross-validation of penalties on the training split is grouped by subject (issue 21)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_ms.data.split import subject_folds
from monai_ms.engines import fit_histogram_head
from monai_ms.networks import BrainClassifier3D, BrainRegressor3D


def _sessions(subjects: int, seed: int = 0) -> list[dict]:
    """1-3 sessions per subject; images whose dark-voxel share sets age and sex (constant per subject)."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    entries = []
    for s in range(subjects):
        share = 0.1 + 0.4 * s / (subjects - 1)
        for k in range(int(rng.integers(1, 4))):
            image = 1.0 + 0.1 * torch.randn(1, 8, 8, 8, generator=generator)
            image[torch.rand(1, 8, 8, 8, generator=generator) < share] = -2.0
            entries.append({"subject": f"S{s:02d}", "session": f"S{s:02d}-{k}", "image": image,
                            "age": 20.0 + 100.0 * share, "sex": float(s % 2)})
    return entries


def _assert_grouped(entries: list[dict], splits: list) -> None:
    subjects = np.array([e["subject"] for e in entries])
    assert len(splits) >= 2
    covered = np.concatenate([test for _, test in splits])
    assert sorted(covered.tolist()) == list(range(len(entries)))  # every session held out exactly once
    for train, test in splits:
        assert not set(subjects[train]) & set(subjects[test]), "a subject's sessions on both sides of a fold"


def test_regression_folds_never_split_a_subject():
    entries = _sessions(13)
    assert len(entries) > 13  # several subjects have more than one session
    splits, text = subject_folds(entries)
    _assert_grouped(entries, splits)
    assert text == "GroupKFold(5) over 13 subjects"


def test_classification_folds_are_grouped_and_hold_both_classes():
    entries = _sessions(12, seed=3)
    labels = [int(e["sex"]) for e in entries]
    splits, text = subject_folds(entries, labels=labels)
    _assert_grouped(entries, splits)
    y = np.array(labels)
    assert all(set(y[test]) == {0, 1} for _, test in splits)
    assert text.startswith("StratifiedGroupKFold(")
    with pytest.raises(ValueError, match=r"at least 2 subjects of each class .* got \[6, 1\]"):
        one_man = [e for e in entries if e["sex"] == 0 or e["subject"] == "S01"]
        subject_folds(one_man, labels=[int(e["sex"]) for e in one_man])


def test_fit_histogram_head_chooses_its_penalty_on_subject_grouped_folds():
    entries = _sessions(13)
    ages = torch.tensor([e["age"] for e in entries])
    regressor = BrainRegressor3D(channels=(4, 8), strides=(2, 2), histogram_bins=7).eval()
    regressor.set_normalization(ages.mean(), ages.std())
    alphas = (0.1, 1.0, 10.0)
    assert fit_histogram_head(regressor, entries, lambda d: d, "age", alphas=alphas)["cv"] == "GroupKFold(5) over 13 subjects"
    classifier = BrainClassifier3D(channels=(4, 8), strides=(2, 2), histogram_bins=7).eval()
    result = fit_histogram_head(classifier, entries, lambda d: d, "sex", alphas=alphas)
    assert result["cv"] == subject_folds(entries, [int(e["sex"]) for e in entries])[1]
