"""The EDSS network's atrophy covariates (``tissue_features``): measured on the T1, fitted, stored, exported."""

from __future__ import annotations

import pytest
import torch

from monai_ms.data.transforms import voxel_volume_ml
from monai_ms.engines import fit_covariate_head, fit_normalization
from monai_ms.networks import BrainSegmenter3D, DualStreamRegressor, ForwardWithLesionMap

TINY = (4, 8, 8, 8)


def _brain(csf: float, size: int = 32, seed: int = 0) -> torch.Tensor:
    """A ``(1, size, size, size)`` z-scored-like volume: a cube of brain on an exact-zero background.

    The brain's voxels are CSF (-1.5), grey (0.2) and white matter (1.0) in the shares ``csf``,
    ``(1 - csf) / 2``, ``(1 - csf) / 2``, in random places, with a little noise inside the brain only.
    """
    generator = torch.Generator().manual_seed(seed)
    volume = torch.zeros(1, size, size, size)
    inner = volume[:, 6:-6, 6:-6, 6:-6]
    draw = torch.rand(inner.shape, generator=generator)
    grey = (1.0 - csf) / 2.0
    tissue = torch.where(draw < csf, -1.5, torch.where(draw < csf + grey, 0.2, 1.0))
    volume[:, 6:-6, 6:-6, 6:-6] = tissue + 0.05 * torch.randn(inner.shape, generator=generator)
    return volume


def _entries(n: int = 12) -> list[dict]:
    """Training sessions whose EDSS is a linear function of the CSF share (atrophy) alone."""
    entries = []
    for i in range(n):
        csf = 0.1 + 0.3 * i / (n - 1)
        t1 = _brain(csf, seed=i)
        entries.append(
            {
                "session": f"s{i}",
                "t1": t1,
                "t2": _brain(0.2, seed=100 + i),
                "demographics": torch.tensor([30.0 + (7 * i) % 20, float(i % 2)]),
                "edss": torch.tensor([1.0 + 15.0 * (csf - 0.1)]),
                "age": 30.0 + (7 * i) % 20,
                "sex": "M" if i % 2 else "F",
            }
        )
    return entries


def _identity(item: dict) -> dict:
    return item  # the entries already hold the chain's output


def _fitted(tissue_features: bool, entries: list[dict], table: dict | None = None) -> DualStreamRegressor:
    torch.manual_seed(0)
    network = DualStreamRegressor(channels=TINY, strides=(2, 2, 2, 2), hidden=(8,), tissue_features=tissue_features)
    fit_normalization(network, entries, target_key="edss")
    fit_covariate_head(network, entries, _identity, measured_features=table)
    return network.eval()


def _mae(network: DualStreamRegressor, entries: list[dict]) -> float:
    with torch.no_grad():
        errors = [
            float((network(e["t1"][None], e["t2"][None], e["demographics"][None]) - e["edss"]).abs()) for e in entries
        ]
    return sum(errors) / len(errors)


def test_tissue_covariates_let_the_fitted_start_follow_atrophy() -> None:
    entries = _entries()
    with_tissue, without = _fitted(True, entries), _fitted(False, entries)
    assert with_tissue.measured_width == 4 and without.measured_width == 0
    # EDSS is a linear function of the CSF share: the start with the tissue features fits it, age and sex cannot
    assert _mae(with_tissue, entries) < 0.1
    assert _mae(without, entries) > 0.5
    # new scans of the same kind: the stored standardisation carries the fit to them
    held_out = [
        {**e, "t1": _brain(0.1 + 0.3 * k / 3, seed=50 + k), "edss": torch.tensor([1.0 + 4.5 * k / 3])}
        for k, e in enumerate(entries[:4])
    ]
    assert _mae(with_tissue, held_out) < 0.2


def test_tissue_standardisation_is_the_training_split_s() -> None:
    entries = _entries()
    table: dict[str, list[float]] = {}
    network = _fitted(True, entries, table)
    rows = torch.tensor([table[e["session"]] for e in entries])  # (sessions, 4): the standardised tissue features
    assert rows.shape == (len(entries), 4)
    torch.testing.assert_close(rows.mean(0), torch.zeros(4, dtype=rows.dtype), atol=1e-5, rtol=0)
    raw = torch.cat([network.tissue.counts(e["t1"][None]) for e in entries])
    torch.testing.assert_close(network.tissue.feature_mean, raw.mean(0), atol=1e-5, rtol=1e-5)
    # fitting the same network again (a resumed run) measures the raw features again, not the standardised ones
    first_mean = network.tissue.feature_mean.clone()
    fit_covariate_head(network.train(), entries, _identity, measured_features={})
    torch.testing.assert_close(network.tissue.feature_mean, first_mean)


def test_stored_rows_give_the_prediction_forward_computes_and_skip_the_segmenter() -> None:
    entries = _entries(6)
    torch.manual_seed(0)
    segmenter = BrainSegmenter3D(in_channels=2, channels=TINY, strides=(2, 2, 2))
    network = DualStreamRegressor(channels=TINY, strides=(2, 2, 2, 2), lesion_network=segmenter, tissue_features=True)
    network.lesion_network.requires_grad_(False)
    fit_normalization(network, entries, target_key="edss")
    table: dict[str, list[float]] = {}
    fit_covariate_head(network, entries, _identity, measured_features=table)
    assert all(len(row) == 5 for row in table.values())  # 4 tissue features, then the lesion load
    network.eval()
    t1 = torch.stack([e["t1"] for e in entries[:2]])
    t2 = torch.stack([e["t2"] for e in entries[:2]])
    demographics = torch.stack([e["demographics"] for e in entries[:2]])
    calls = []
    with torch.no_grad():
        expected = network(t1, t2, demographics)
        network.lesion_network.register_forward_hook(lambda *args: calls.append(1))
        prediction, empty = ForwardWithLesionMap(network, table)(t1, t2, demographics, ["s0", "s1"])
    assert not calls and empty.shape == (2, 1, 0, 0, 0)
    torch.testing.assert_close(prediction, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"expected 5 measured covariates per scan, got shape \[2, 4\]"):
        network.forward_with_measured(t1, t2, demographics, torch.zeros(2, 4))


def test_tissue_features_refuse_a_lesion_pathway_that_trains() -> None:
    entries = _entries(4)
    torch.manual_seed(0)
    segmenter = BrainSegmenter3D(in_channels=2, channels=TINY, strides=(2, 2, 2))
    network = DualStreamRegressor(channels=TINY, strides=(2, 2, 2, 2), lesion_network=segmenter, tissue_features=True)
    fit_normalization(network, entries, target_key="edss")
    with pytest.raises(ValueError, match="tissue_features needs a frozen, pre-trained lesion pathway"):
        fit_covariate_head(network, entries, _identity, measured_features={})


def test_a_network_with_tissue_features_scripts_and_keeps_them_in_its_state() -> None:
    entries = _entries(6)
    network = _fitted(True, entries)
    assert "tissue.feature_mean" in network.state_dict() and "tissue.feature_std" in network.state_dict()
    scripted = torch.jit.script(network)
    e = entries[0]
    with torch.no_grad():
        torch.testing.assert_close(
            scripted(e["t1"][None], e["t2"][None], e["demographics"][None]),
            network(e["t1"][None], e["t2"][None], e["demographics"][None]),
        )


def test_lesion_load_is_log_one_plus_millilitres_whatever_the_voxel_size() -> None:
    """1 mL of lesion: 125 voxels at 2 mm or 1000 at 1 mm give log(2); without a voxel volume, the former
    ``log(1 + 1000 * fraction)`` depends on the grid."""
    coarse, fine = torch.full((1, 1, 20, 20, 20), -20.0), torch.full((1, 1, 40, 40, 40), -20.0)
    coarse[0, 0, :5, :5, :5], fine[0, 0, :10, :10, :10] = 20.0, 20.0
    segmenter = BrainSegmenter3D(in_channels=2, channels=TINY, strides=(2, 2, 2))
    at = {
        ml: DualStreamRegressor(channels=TINY, strides=(2, 2, 2, 2), lesion_network=segmenter, lesion_voxel_ml=ml)
        for ml in (0.008, 0.001)
    }
    assert float(at[0.008].lesion_load_feature(coarse)) == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)
    assert float(at[0.001].lesion_load_feature(fine)) == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)
    legacy = DualStreamRegressor(channels=TINY, strides=(2, 2, 2, 2), lesion_level=0)
    assert float(legacy.lesion_load_feature(coarse)) == pytest.approx(float(torch.log1p(torch.tensor(1000.0 * 125 / 8000))), abs=1e-5)
    with pytest.raises(ValueError, match="lesion_voxel_ml must be None or > 0"):
        DualStreamRegressor(channels=TINY, strides=(2, 2, 2, 2), lesion_voxel_ml=0.0)
    with pytest.raises(ValueError, match="lesion_voxel_ml counts input voxels: it needs lesion_network"):
        DualStreamRegressor(channels=TINY, strides=(2, 2, 2, 2), lesion_level=0, lesion_voxel_ml=0.008)
    assert voxel_volume_ml([2.0, 2.0, 2.0]) == voxel_volume_ml(2.0) == pytest.approx(0.008)
    assert voxel_volume_ml([1.0, 1.0, 3.0]) == pytest.approx(0.003)


def test_a_checkpoint_carries_its_lesion_load_unit() -> None:
    """Weights fitted on one unit of the lesion load are refused by a network that reads another, with one line."""

    def network(voxel_ml: float | None) -> DualStreamRegressor:
        segmenter = BrainSegmenter3D(in_channels=2, channels=TINY, strides=(2, 2, 2))
        return DualStreamRegressor(channels=TINY, strides=(2, 2, 2, 2), lesion_network=segmenter, lesion_voxel_ml=voxel_ml)

    current = network(0.008).state_dict()
    network(0.008).load_state_dict(current)  # the same unit
    before_050 = {k: v for k, v in network(None).state_dict().items() if k != "lesion_load_unit_ml"}
    network(None).load_state_dict(before_050)  # an EDSS 0.4.0 checkpoint into the 0.4.0 feature
    with pytest.raises(ValueError, match="this checkpoint predates EDSS 0.5.0.*network_def#lesion_voxel_ml null"):
        network(0.008).load_state_dict(before_050)
    with pytest.raises(ValueError, match=r"fitted with lesion_voxel_ml 0.008 \(mL per voxel\), the network reads 0.001"):
        network(0.001).load_state_dict(current)
