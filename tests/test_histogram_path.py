"""The intensity-histogram path of the whole-volume networks and its least-squares / logistic start."""

from __future__ import annotations

import pytest
import torch

from monai_ms.engines import fit_histogram_head
from monai_ms.networks import BrainClassifier3D, BrainRegressor3D
from monai_ms.networks.blocks import IntensityHistogram

TINY = (4, 8)


def test_histogram_shares_match_hand_computed_triangular_weights() -> None:
    # centres -2, -1, 0, 1, 2 (width 1); channel 0: -2, -1.5, 0, 5, -7, 2.25; channel 1: 1 everywhere
    x = torch.tensor([[[-2.0, -1.5, 0.0, 5.0, -7.0, 2.25], [1.0] * 6]]).reshape(1, 2, 1, 2, 3)
    shares = IntensityHistogram(in_channels=2, bins=5, value_range=(-2.0, 2.0)).counts(x)
    # -1.5 splits half and half between -2 and -1; 2.25 gives 0.75 to the last centre; 5 and -7 lie beyond reach
    expected = [1.5 / 6, 0.5 / 6, 1 / 6, 0.0, 0.75 / 6] + [0.0, 0.0, 0.0, 1.0, 0.0]
    assert torch.allclose(shares, torch.tensor([expected]))


def test_histogram_forward_applies_the_stored_standardisation() -> None:
    histogram = IntensityHistogram(in_channels=1, bins=3, value_range=(0.0, 2.0))
    histogram.set_standardization(torch.tensor([0.5, 0.0, 0.0]), torch.tensor([0.25, 1.0, 2.0]))
    out = histogram(torch.zeros(1, 1, 2, 2, 2))  # every voxel at centre 0: shares (1, 0, 0)
    assert torch.allclose(out, torch.tensor([[2.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="positive"):
        histogram.set_standardization(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="bins >= 2"):
        IntensityHistogram(bins=1)


def _cohort(n: int = 24) -> list[dict]:
    """Images whose share of dark (-2) voxels sets the target; the rest is tissue at +1 with noise."""
    generator = torch.Generator().manual_seed(0)
    entries = []
    for i in range(n):
        share = 0.1 + 0.4 * i / (n - 1)
        image = 1.0 + 0.1 * torch.randn(1, 8, 8, 8, generator=generator)
        dark = torch.rand(1, 8, 8, 8, generator=generator) < share
        image[dark] = -2.0
        true_share = float(dark.float().mean())
        entries.append({"image": image, "age": 20.0 + 100.0 * true_share, "sex": float(true_share > 0.3)})
    return entries


def test_regressor_starts_at_the_ridge_fit_of_the_histogram() -> None:
    entries = _cohort()
    network = BrainRegressor3D(channels=TINY, strides=(2, 2), histogram_bins=7).eval()
    ages = torch.tensor([e["age"] for e in entries])
    network.set_normalization(ages.mean(), ages.std())
    result = fit_histogram_head(network, entries, transform=lambda d: d, target_key="age")
    assert result["features"] == 7 and result["sessions"] == len(entries)
    assert not network.head.output.weight.detach().any()  # the CNN starts silent
    with torch.no_grad():
        predicted = network(torch.stack([e["image"] for e in entries]))[:, 0]
    # a linear function of one histogram share: the ridge path recovers it to within a year
    assert float((predicted - ages).abs().mean()) < 1.0, (predicted, ages)


def test_classifier_starts_at_the_logistic_fit_of_the_histogram() -> None:
    entries = _cohort()
    network = BrainClassifier3D(channels=TINY, strides=(2, 2), histogram_bins=7).eval()
    fit_histogram_head(network, entries, transform=lambda d: d, target_key="sex")
    with torch.no_grad():
        logits = network(torch.stack([e["image"] for e in entries]))[:, 0]
    labels = torch.tensor([e["sex"] for e in entries])
    assert bool(((logits > 0).float() == labels).all()), (logits, labels)


def test_networks_without_a_histogram_path_are_left_unchanged() -> None:
    network = BrainRegressor3D(channels=TINY, strides=(2, 2))
    before = {k: v.clone() for k, v in network.state_dict().items()}
    assert fit_histogram_head(network, _cohort(4), transform=lambda d: d, target_key="age") == {}
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    with pytest.raises(ValueError, match="fits one output, the network has 2"):
        network = BrainRegressor3D(out_channels=2, channels=TINY, strides=(2, 2), histogram_bins=4)
        fit_histogram_head(network, _cohort(4), lambda d: d, "age")
    with pytest.raises(ValueError, match="empty training split"):
        fit_histogram_head(BrainRegressor3D(channels=TINY, strides=(2, 2), histogram_bins=4), [], lambda d: d, "age")


def test_classifier_fit_names_a_class_too_rare_to_cross_validate() -> None:
    entries = [dict(e, sex=0.0) for e in _cohort(6)]
    entries[0]["sex"] = 1.0
    network = BrainClassifier3D(channels=TINY, strides=(2, 2), histogram_bins=4)
    with pytest.raises(ValueError, match=r"at least 2 sessions of each class for 'sex', got \[5, 1\]"):
        fit_histogram_head(network, entries, transform=lambda d: d, target_key="sex")
