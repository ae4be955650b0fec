"""The linear feature paths of the whole-volume networks (intensity histogram, tissue features) and their
least-squares / logistic start."""

from __future__ import annotations

import pytest
import torch

from monai_ms.engines import fit_feature_paths, fit_histogram_head
from monai_ms.networks import BrainClassifier3D, BrainRegressor3D
from monai_ms.networks.blocks import IntensityHistogram, TissueFeatures

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


def _tissue_volume(shares: tuple[float, float, float], means: tuple[float, float, float], seed: int = 0) -> torch.Tensor:
    """A (1, 1, 20, 20, 20) z-scored-like volume: a 16^3 brain of three classes with the given shares, zero outside."""
    generator = torch.Generator().manual_seed(seed)
    n = 16**3
    counts = [round(share * n) for share in shares[:2]]
    labels = torch.cat([torch.full((counts[0],), 0), torch.full((counts[1],), 1), torch.full((n - sum(counts),), 2)])
    labels = labels[torch.randperm(n, generator=generator)]
    values = torch.tensor(means)[labels] + 0.08 * torch.randn(n, generator=generator)
    volume = torch.zeros(1, 1, 20, 20, 20)
    volume[0, 0, 2:18, 2:18, 2:18] = values.reshape(16, 16, 16)
    return volume


def test_tissue_features_recover_known_fractions_whatever_the_contrast() -> None:
    """Shares 20/45/35% inside a brain of 16^3 of 20^3 voxels, under two contrasts (another scanner's
    tissue intensities): the same fractions to 0.01; the histogram of the same volumes changes."""
    features = TissueFeatures()
    for means in ((-2.0, -0.2, 0.9), (-1.2, 0.3, 0.7)):
        measured = features.counts(_tissue_volume((0.20, 0.45, 0.35), means))[0]
        assert abs(float(measured[0]) - 16**3 / 20**3) < 1e-6  # the brain's share of the volume
        assert torch.allclose(measured[1:], torch.tensor([0.20, 0.45, 0.35]), atol=0.01), measured
    histogram = IntensityHistogram(bins=7)
    low, high = (histogram.counts(_tissue_volume((0.20, 0.45, 0.35), m)) for m in ((-2.0, -0.2, 0.9), (-1.2, 0.3, 0.7)))
    assert float((low - high).abs().max()) > 0.05  # 7.5% of the volume moves to another bin


def test_class_normalised_histogram_keeps_its_bins_under_another_contrast() -> None:
    """``TissueFeatures(bins=...)``: the brain's histogram on the scale of its own class centres. One brain
    rendered with two scanners' class intensities (a piecewise-linear map through the centres) gives the same
    bins to 0.02, while its plain histogram moves; a brain whose classes are spread wider (more voxels between
    them) at the same class shares gives other bins."""
    features = TissueFeatures(bins=9, value_range=(-2.0, 2.0))
    assert features.out_features == 4 + 9

    def scan(means: tuple[float, float, float], spread: float) -> torch.Tensor:
        generator = torch.Generator().manual_seed(5)
        n = 16**3
        labels = torch.cat([torch.full((819,), 0), torch.full((1843,), 1), torch.full((n - 819 - 1843,), 2)])
        unit = labels.float() - 1.0 + spread * 0.08 * torch.randn(n, generator=generator)  # class centres at -1, 0, 1
        dark, middle, bright = means
        values = torch.where(unit < 0, middle + unit * (middle - dark), middle + unit * (bright - middle))
        volume = torch.zeros(1, 1, 20, 20, 20)
        volume[0, 0, 2:18, 2:18, 2:18] = values.reshape(16, 16, 16)
        return volume

    first, second = (features.counts(scan(m, 1.0))[0] for m in ((-2.0, -0.2, 0.9), (-0.5, 1.5, 2.2)))
    assert torch.allclose(first[1:4], torch.tensor([0.20, 0.45, 0.35]), atol=0.01)
    assert torch.allclose(first[4:], second[4:], atol=0.02), (first, second)
    plain = IntensityHistogram(bins=9, value_range=(-2.0, 2.0))
    assert float((plain.counts(scan((-2.0, -0.2, 0.9), 1.0)) - plain.counts(scan((-0.5, 1.5, 2.2), 1.0))).abs().max()) > 0.05
    wider = features.counts(scan((-2.0, -0.2, 0.9), 3.0))[0]
    assert float((wider[4:] - first[4:]).abs().max()) > 0.05


def test_regressor_starts_at_one_fit_of_both_feature_paths() -> None:
    """Age set by the dark-class share: the tissue path carries it, and histogram + tissue are fitted as one model."""
    entries = []
    for i in range(24):
        dark = 0.1 + 0.3 * i / 23
        image = _tissue_volume((dark, 0.5 - dark / 2, 0.5 - dark / 2), (-2.0, -0.2, 0.9), seed=i)
        entries.append({"image": image, "age": 20.0 + 100.0 * dark})
    ages = torch.tensor([e["age"] for e in entries])
    network = BrainRegressor3D(channels=TINY, strides=(2, 2), histogram_bins=5, tissue_features=True).eval()
    network.set_normalization(ages.mean(), ages.std())
    result = fit_feature_paths(network, entries, transform=lambda d: d, target_key="age")
    assert result["paths"] == ["histogram", "tissue"] and result["features"] == 5 + 4
    assert float(network.tissue_head.bias) == 0.0  # one intercept, on the first path
    with torch.no_grad():
        predicted = network(torch.cat([e["image"] for e in entries]))[:, 0]
    assert float((predicted - ages).abs().mean()) < 1.0, (predicted, ages)
    scripted = torch.jit.script(network)
    assert torch.allclose(scripted(entries[0]["image"]), network(entries[0]["image"]))


def _layered_brain(size: int = 40) -> torch.Tensor:
    """A ball: white matter core, a folded grey-matter band (fine structure a coarse scan blurs), CSF outside it."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    centre = (size - 1) / 2
    radius = ((grid - centre) ** 2).sum(0).sqrt()
    folds = 1.5 * torch.sin(grid[0] * 1.3) * torch.sin(grid[1] * 1.1)
    values = torch.where(radius < 9 + folds, 1.0, torch.where(radius < 14 + folds, 0.6, 0.25))
    return torch.where(radius < 17, values, torch.zeros(())).reshape(1, 1, size, size, size)


def test_smoothing_brings_the_histograms_of_two_resolutions_closer() -> None:
    """The same brain at its own voxels and acquired 1.5x coarser (down and up again, as the chain resamples it):
    with ``smoothing`` the class-normalised histograms of the two are closer than without; the class shares are
    those of the unsmoothed image either way, and a smoothed uniform brain stays uniform to its edge."""
    sharp = _layered_brain()
    brain = (sharp != 0).float()
    coarse = torch.nn.functional.interpolate(sharp, scale_factor=1 / 1.5, mode="trilinear", align_corners=False)
    coarse = torch.nn.functional.interpolate(coarse, size=sharp.shape[2:], mode="trilinear", align_corners=False) * brain

    def gap(features: TissueFeatures) -> float:
        return float((features.counts(sharp)[0, 4:] - features.counts(coarse)[0, 4:]).abs().sum())

    plain, smoothed = TissueFeatures(bins=12), TissueFeatures(bins=12, smoothing=1.5)
    assert gap(smoothed) < 0.7 * gap(plain), (gap(smoothed), gap(plain))
    torch.testing.assert_close(smoothed.counts(sharp)[0, :4], plain.counts(sharp)[0, :4])
    uniform = smoothed._smooth(brain * 3.0, brain)
    torch.testing.assert_close(uniform, brain * 3.0)
    scripted = torch.jit.script(smoothed)
    torch.testing.assert_close(scripted.counts(sharp), smoothed.counts(sharp))
    with pytest.raises(ValueError, match="smoothing >= 0"):
        TissueFeatures(bins=4, smoothing=-1.0)


def test_a_checkpoint_with_the_former_nested_histogram_buffers_loads_with_the_same_features() -> None:
    """brain_age 0.5.0 checkpoints from before the features took one soft_histogram (f56d298) hold a nested
    IntensityHistogram's buffers (bin centres, an unused standardisation): they load, strictly, and the
    features stay those of the same weights."""
    network = BrainRegressor3D(channels=(4, 8), strides=(2, 2), tissue_features=True, tissue_bins=16)
    state = network.state_dict()
    old = dict(state)
    old["tissue.histogram.centres"] = torch.linspace(-2.0, 2.0, 16)
    old["tissue.histogram.feature_mean"] = torch.full((16,), 0.3)
    old["tissue.histogram.feature_std"] = torch.full((16,), 2.0)
    fresh = BrainRegressor3D(channels=(4, 8), strides=(2, 2), tissue_features=True, tissue_bins=16)
    fresh.load_state_dict(old, strict=True)
    x = torch.zeros(1, 1, 20, 20, 20)
    x[0, 0, 2:18, 2:18, 2:18] = torch.rand(16, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.1
    torch.testing.assert_close(fresh.tissue(x), network.tissue(x))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_state_dict({**state, "tissue.other.weight": torch.zeros(1)}, strict=True)


def _sized_brain(side: int, dark: float, seed: int) -> torch.Tensor:
    """A (1, 1, 20, 20, 20) volume: a brain cube of ``side`` voxels, ``dark`` of it CSF, the rest grey and white."""
    generator = torch.Generator().manual_seed(seed)
    n = side**3
    labels = torch.cat([torch.full((round(dark * n),), 0), torch.full((n - round(dark * n),), 1)])
    labels = torch.where((labels == 1) & (torch.rand(n, generator=generator) < 0.5), 2, labels)
    labels = labels[torch.randperm(n, generator=generator)]
    values = torch.tensor((-2.0, -0.2, 0.9))[labels] + 0.08 * torch.randn(n, generator=generator)
    volume = torch.zeros(1, 1, 20, 20, 20)
    volume[0, 0, :side, :side, :side] = values.reshape(side, side, side)
    return volume


@pytest.mark.parametrize("signal", ["size", "dark"])
def test_leading_features_keep_brain_size_alone_unless_the_fractions_clearly_help(signal: str) -> None:
    """Sex set by brain size (the fractions are noise): the start keeps the size alone and the fractions
    start at weight 0. Sex set by the CSF share (size is noise): all four features are kept."""
    generator = torch.Generator().manual_seed(1)
    entries = []
    for i in range(40):
        male = i % 2
        draw, share = int(torch.randint(0, 3, (), generator=generator)), float(torch.rand((), generator=generator))
        if signal == "size":
            side, dark = 15 + male + draw % 2, 0.1 + 0.3 * share
        else:
            side, dark = 14 + draw, 0.15 + 0.1 * male + 0.05 * share
        entries.append({"image": _sized_brain(side, dark, seed=i), "sex": float(male), "subject": f"P{i}"})
    network = BrainClassifier3D(channels=TINY, strides=(2, 2), tissue_features=True).eval()
    result = fit_feature_paths(network, entries, transform=lambda d: d, target_key="sex", leading_features=1)
    assert set(result["scores"]) == {"first 1", "all 4"}
    weights = network.tissue_head.weight.detach()[0]
    if signal == "size":
        assert result["used"] == 1 and float(weights[0]) != 0.0
        assert torch.count_nonzero(weights[1:]) == 0
    else:
        assert result["used"] == 4 and torch.count_nonzero(weights[1:]) > 0
        first, full = result["scores"]["first 1"], result["scores"]["all 4"]
        assert full[0] > first[0] + full[1]
    plain = fit_feature_paths(network, entries, transform=lambda d: d, target_key="sex")
    assert plain["used"] == 4 and "scores" not in plain
    with pytest.raises(ValueError, match="leading_features must be None or at least 1, got 0"):
        fit_feature_paths(network, entries, transform=lambda d: d, target_key="sex", leading_features=0)


def test_augmented_copies_move_the_start_to_the_features_the_augmentation_keeps() -> None:
    """Age follows brain size, and on the clean training scans the CSF share too; an augmentation that moves
    the CSF share (as another scanner's partial volume does) and keeps the size moves the fitted weight to the
    size, and a scan whose CSF share moved is predicted closer. Copies share their subject's inner fold."""
    from monai_ms.engines import fit_normalization

    entries = []
    for i in range(24):
        side = 12 + i % 6
        entries.append({"image": _sized_brain(side, 0.1 + 0.04 * (side - 12), seed=i), "age": 30.0 + 4.0 * (side - 12), "subject": f"P{i}"})
    generator = torch.Generator().manual_seed(0)
    calls = []

    def move_csf(image: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        brain = image != 0
        moved = brain & (torch.rand(image.shape, generator=generator) < 0.3 * float(torch.rand((), generator=generator)))
        return torch.where(moved, torch.full_like(image, -2.0), image)

    weights, networks = {}, {}
    for name, augment in (("plain", None), ("augmented", move_csf)):
        torch.manual_seed(0)
        network = BrainRegressor3D(channels=TINY, strides=(2, 2), tissue_features=True).eval()
        fit_normalization(network, entries, target_key="age", demographics=False)
        result = fit_feature_paths(network, entries, transform=lambda d: d, target_key="age", augment=augment, augment_copies=2)
        weights[name] = network.tissue_head.weight.detach()[0].abs()
        if augment is None:
            assert result["augmented_copies"] == 0
        else:
            assert result["augmented_copies"] == 2 and len(calls) == 2 * len(entries)
            assert result["cv"] == "GroupKFold(5) over 24 subjects"
            shifted = move_csf(entries[0]["image"][0])[None]  # the youngest scan, its CSF share raised
            with torch.no_grad():
                assert abs(float(network(shifted)) - 30.0) < abs(float(networks["plain"](shifted)) - 30.0)
        networks[name] = network
    ratio = {name: float(w[1] / w[0]) for name, w in weights.items()}  # CSF share weight / size weight
    assert ratio["augmented"] < 0.5 * ratio["plain"], ratio
    with pytest.raises(ValueError, match="augment_copies must be at least 1 with augment, got 0"):
        fit_feature_paths(networks["plain"], entries, transform=lambda d: d, target_key="age", augment=move_csf, augment_copies=0)
