"""Tests of monai_ms.networks: shapes, TorchScript, stored normalisation, configurability, training."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn

from monai_ms.networks import (
    BrainClassifier3D,
    BrainRegressor3D,
    BrainSegmenter3D,
    Conv3DBlock,
    DualStreamRegressor,
    FeatureExtractor3D,
    ForwardWithLesionMap,
)

TINY = (4, 8, 16, 32)  # channels small enough for a 2-core CPU


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _script(network: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # recent torch releases mark TorchScript deprecated; the bundles still export it
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(network)


def _dual_inputs(batch: int = 2, size: tuple[int, int, int] = (32, 32, 32)) -> tuple[torch.Tensor, ...]:
    ages = torch.tensor([25.0, 61.0, 40.0, 33.0])[:batch]
    sexes = torch.tensor([0.0, 1.0, 1.0, 0.0])[:batch]
    age_sex = torch.stack([ages, sexes], dim=1)  # raw units: the model standardises them
    return torch.randn(batch, 1, *size), torch.randn(batch, 1, *size), age_sex


# ---------------------------------------------------------------- encoder


@pytest.mark.parametrize("size", [(32, 32, 32), (16, 24, 40), (17, 20, 33)])
def test_encoder_returns_one_map_per_level_with_documented_shapes(size: tuple[int, int, int]) -> None:
    encoder = FeatureExtractor3D(in_channels=2, channels=TINY, strides=(1, 2, 2, 2))
    features = encoder(torch.zeros(2, 2, *size))
    assert len(features) == len(TINY)
    factor = 1
    for level, (feature, stride) in enumerate(zip(features, (1, 2, 2, 2))):
        factor *= stride
        expected = (2, TINY[level], *(math.ceil(s / factor) for s in size))
        assert tuple(feature.shape) == expected
    assert encoder.out_channels == TINY[-1] == features[-1].shape[1]


def test_conv_block_residual_option_adds_a_stride_one_convolution() -> None:
    plain = Conv3DBlock(3, 4, 8, strides=2, num_res_units=0)
    residual = Conv3DBlock(3, 4, 8, strides=2, num_res_units=2)
    convs = lambda m: [c for c in m.modules() if isinstance(c, nn.Conv3d)]  # noqa: E731
    assert len(convs(plain)) == 1
    # strided conv + stride-1 conv + the residual path's projection
    assert sorted(c.stride for c in convs(residual)) == [(1, 1, 1), (2, 2, 2), (2, 2, 2)]
    x = torch.zeros(1, 4, 10, 12, 14)
    assert plain(x).shape == residual(x).shape == (1, 8, 5, 6, 7)


def test_encoder_rejects_inconsistent_levels() -> None:
    with pytest.raises(ValueError, match=r"strides must have one entry per level of channels \(4\)"):
        FeatureExtractor3D(channels=TINY, strides=(2, 2, 2))
    with pytest.raises(ValueError, match="pooling must be one of"):
        BrainRegressor3D(channels=TINY, pooling="median")


# ---------------------------------------------------------------- output shapes


@pytest.mark.parametrize("network_class", [BrainRegressor3D, BrainClassifier3D])
def test_pooled_networks_accept_any_input_size(network_class: type[nn.Module]) -> None:
    network = network_class(in_channels=2, channels=TINY, pooling="avgmax").eval()
    with torch.no_grad():
        # instance norm needs more than one voxel in the last map: > 16 voxels along some axis here
        for size in [(32, 32, 32), (24, 40, 32), (33, 17, 21)]:
            assert network(torch.randn(3, 2, *size)).shape == (3, 1)


def test_dual_stream_accepts_any_size_and_returns_one_value_per_scan() -> None:
    network = DualStreamRegressor(channels=TINY, hidden=(16,)).eval()
    with torch.no_grad():
        for size in [(32, 32, 32), (24, 40, 32)]:
            assert network(*_dual_inputs(3, size)).shape == (3, 1)


@pytest.mark.parametrize("size", [(16, 16, 16), (16, 24, 40), (8, 32, 16)])
def test_segmenter_returns_logits_at_full_input_resolution(size: tuple[int, int, int]) -> None:
    network = BrainSegmenter3D(in_channels=2, out_channels=1, channels=TINY, strides=(2, 2, 2)).eval()
    assert network.divisible_by == 8
    with torch.no_grad():
        assert network(torch.randn(1, 2, *size)).shape == (1, 1, *size)


def test_segmenter_rejects_sizes_not_divisible_with_a_clear_error() -> None:
    network = BrainSegmenter3D(channels=TINY, strides=(2, 2, 2))
    with pytest.raises(ValueError, match=r"multiple of 8 .*got input shape \[1, 2, 16, 20, 16\]"):
        network(torch.zeros(1, 2, 16, 20, 16))
    with pytest.raises(ValueError, match=r"len\(channels\) - 1 = 3"):
        BrainSegmenter3D(channels=TINY, strides=(2, 2, 2, 2))
    anisotropic = BrainSegmenter3D(channels=(4, 8, 16), strides=(2, 3))
    assert anisotropic.divisible_by == 6
    assert anisotropic(torch.zeros(1, 2, 12, 18, 6)).shape == (1, 1, 12, 18, 6)


def test_classifier_returns_unbounded_logits_not_probabilities() -> None:
    network = BrainClassifier3D(channels=TINY).eval()
    assert not any(isinstance(m, nn.Sigmoid) for m in network.modules())
    nn.init.zeros_(network.head.output.weight)
    nn.init.constant_(network.head.output.bias, 3.0)
    with torch.no_grad():
        assert torch.allclose(network(torch.randn(2, 1, 24, 24, 24)), torch.full((2, 1), 3.0))


# ---------------------------------------------------------------- TorchScript


def _scriptable_cases() -> list[tuple[str, nn.Module, tuple[torch.Tensor, ...]]]:
    torch.manual_seed(1)
    dual = DualStreamRegressor(channels=TINY, hidden=(16,), pooling="avgmax")
    dual.set_normalization([40.0, 0.5], [12.0, 0.5], target_mean=3.5, target_std=2.0)
    regressor = BrainRegressor3D(in_channels=2, channels=TINY)
    regressor.set_normalization(target_mean=45.0, target_std=12.0)
    return [
        ("dual", dual, _dual_inputs(2, (16, 24, 16))),
        ("dual_lesion", DualStreamRegressor(channels=TINY, hidden=(16,), lesion_level=1), _dual_inputs(2, (16, 24, 16))),
        ("regressor", regressor, (torch.randn(2, 2, 16, 24, 16),)),
        ("classifier", BrainClassifier3D(channels=TINY), (torch.randn(2, 1, 16, 24, 16),)),
        ("regressor_histogram", BrainRegressor3D(channels=TINY, histogram_bins=6), (torch.randn(2, 1, 16, 24, 16),)),
        (
            "classifier_histogram",
            BrainClassifier3D(in_channels=2, channels=TINY, histogram_bins=6),
            (torch.randn(2, 2, 16, 24, 16),),
        ),
        (
            "classifier_tissue",
            BrainClassifier3D(in_channels=2, channels=TINY, tissue_features=True),
            (torch.randn(2, 2, 16, 24, 16),),
        ),
        ("segmenter", BrainSegmenter3D(channels=TINY, strides=(2, 2, 2)), (torch.randn(2, 2, 16, 24, 16),)),
        (
            "dual_segmenter_ml_tissue",
            DualStreamRegressor(
                channels=TINY, hidden=(16,), lesion_network=BrainSegmenter3D(channels=TINY, strides=(2, 2, 2)),
                lesion_voxel_ml=0.008, tissue_features=True,
            ),
            _dual_inputs(2, (16, 24, 16)),
        ),
    ]


@pytest.mark.parametrize("name,network,inputs", _scriptable_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_torchscript_export_matches_eager(name: str, network: nn.Module, inputs: tuple, tmp_path) -> None:
    network.eval()
    path = tmp_path / f"{name}.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(_script(network), str(path))
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        assert torch.allclose(loaded(*inputs), network(*inputs), atol=1e-5)


def test_scripted_encoder_returns_the_same_feature_maps() -> None:
    encoder = FeatureExtractor3D(channels=TINY, num_res_units=2).eval()
    x = torch.randn(1, 1, 16, 24, 16)
    with torch.no_grad():
        eager, scripted = encoder(x), _script(encoder)(x)
    assert len(scripted) == len(eager) == len(TINY)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(eager, scripted))


def test_scripted_dual_stream_rejects_wrong_demographics() -> None:
    scripted = _script(DualStreamRegressor(channels=TINY).eval())
    t1, t2, _ = _dual_inputs(1, (24, 24, 24))
    with pytest.raises(Exception, match=r"demographics must have shape \(batch, 2\), got \[1, 3\]"):
        scripted(t1, t2, torch.zeros(1, 3))


# ---------------------------------------------------------------- stored normalisation


def test_regressor_output_is_denormalised_with_the_stored_target_statistics() -> None:
    network = BrainRegressor3D(channels=TINY).eval()
    nn.init.zeros_(network.head.output.weight)
    nn.init.constant_(network.head.output.bias, 1.0)
    network.set_normalization(target_mean=45.0, target_std=12.0)
    with torch.no_grad():
        assert torch.allclose(network(torch.randn(2, 1, 24, 24, 24)), torch.full((2, 1), 57.0))


def test_dual_stream_standardises_demographics_inside_forward() -> None:
    raw = DualStreamRegressor(channels=TINY).eval()
    normalised = DualStreamRegressor(channels=TINY).eval()
    normalised.load_state_dict(raw.state_dict())
    mean, std = torch.tensor([40.0, 0.5]), torch.tensor([10.0, 0.5])
    normalised.set_normalization(mean, std, target_mean=3.0, target_std=2.0)
    t1, t2, demographics = _dual_inputs(2, (24, 24, 24))
    with torch.no_grad():
        expected = 3.0 + 2.0 * raw(t1, t2, (demographics - mean) / std)
        assert torch.allclose(normalised(t1, t2, demographics), expected, atol=1e-5)


def test_normalisation_buffers_are_saved_and_restored(tmp_path) -> None:
    network = DualStreamRegressor(channels=TINY).eval()
    network.set_normalization([42.0, 0.4], [11.0, 0.49], target_mean=3.5, target_std=1.8)
    state = network.state_dict()
    for key in ("demographics_mean", "demographics_std", "target_mean", "target_std"):
        assert key in state
    torch.save(state, tmp_path / "model.pt")

    restored = DualStreamRegressor(channels=TINY).eval()
    restored.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert restored.demographics_mean.tolist() == pytest.approx([42.0, 0.4])
    assert restored.target_std.tolist() == pytest.approx([1.8])
    inputs = _dual_inputs(2, (24, 24, 24))
    with torch.no_grad():
        assert torch.equal(restored(*inputs), network(*inputs))

    regressor = BrainRegressor3D(channels=TINY)
    regressor.set_normalization(target_mean=50.0, target_std=15.0)
    assert regressor.state_dict()["target_mean"].tolist() == [50.0]


def test_set_normalization_rejects_unusable_statistics() -> None:
    network = DualStreamRegressor(channels=TINY)
    with pytest.raises(ValueError, match=r"demographics_std must be > 0.*\[10.0, 0.0\]"):
        network.set_normalization([40.0, 0.5], [10.0, 0.0])
    with pytest.raises(ValueError, match="demographics_mean must be a scalar or have 2 entries, got 3"):
        network.set_normalization([40.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="target_mean must be finite"):
        network.set_normalization(target_mean=float("nan"))
    assert network.demographics_mean.tolist() == [0.0, 0.0]  # nothing half-applied by the failures above


# ---------------------------------------------------------------- structure and configuration


def test_t1_and_t2_streams_do_not_share_weights() -> None:
    network = DualStreamRegressor(channels=TINY)
    t1_params = list(network.t1_encoder.parameters())
    t2_params = list(network.t2_encoder.parameters())
    assert {p.data_ptr() for p in t1_params}.isdisjoint(p.data_ptr() for p in t2_params)
    total = sum(p.numel() for p in network.parameters())
    heads = sum(p.numel() for p in [*network.head.parameters(), *network.covariate_head.parameters()])
    assert total == 2 * sum(p.numel() for p in t1_params) + heads
    # changing a T1 weight in place leaves the matching T2 weight as it was
    t1_weight, t2_weight = t1_params[0], t2_params[0]
    before = t2_weight.detach().clone()
    with torch.no_grad():
        t1_weight.add_(1.0)
    assert torch.equal(t2_weight, before) and not torch.equal(t1_weight, t2_weight)


@pytest.mark.parametrize(
    "norm,norm_type",
    [("instance", nn.InstanceNorm3d), ("batch", nn.BatchNorm3d), (("group", {"num_groups": 4}), nn.GroupNorm)],
)
@pytest.mark.parametrize("act,act_type", [("PRELU", nn.PReLU), (("leakyrelu", {"negative_slope": 0.1}), nn.LeakyReLU)])
def test_norm_and_act_are_configuration(norm, norm_type, act, act_type) -> None:
    for network, inputs in [
        (BrainRegressor3D(channels=TINY, norm=norm, act=act), (torch.randn(2, 1, 24, 24, 24),)),
        (BrainSegmenter3D(channels=TINY, strides=(2, 2, 2), norm=norm, act=act), (torch.randn(2, 2, 16, 16, 16),)),
    ]:
        types = {type(m) for m in network.modules()}
        assert norm_type in types and act_type in types
        network(*inputs).mean().backward()


@pytest.mark.parametrize("name,network,inputs", _scriptable_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_backward_reaches_every_parameter(name: str, network: nn.Module, inputs: tuple) -> None:
    network.train()
    network(*inputs).square().mean().backward()
    missing = [n for n, p in network.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"{name}: no (finite) gradient for {missing}"


# ---------------------------------------------------------------- tiny overfit runs


def _fit(network: nn.Module, inputs: tuple, target: torch.Tensor, loss_fn: nn.Module, steps: int) -> list[float]:
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    losses = []
    network.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(network(*inputs), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_dual_stream_regressor_overfits_two_samples() -> None:
    network = DualStreamRegressor(channels=TINY, hidden=(16,))
    network.set_normalization([43.0, 0.5], [18.0, 0.5], target_mean=3.5, target_std=2.5)
    losses = _fit(network, _dual_inputs(2, (24, 24, 24)), torch.tensor([[1.0], [6.0]]), nn.MSELoss(), steps=40)
    assert losses[-1] < 0.05 * losses[0], losses


def test_segmenter_overfits_two_samples() -> None:
    images = torch.randn(2, 2, 16, 16, 16)
    # a learnable "lesion": bright voxels in the T2 channel
    masks = (images[:, 1:2] > 1.0).float()
    network = BrainSegmenter3D(channels=TINY, strides=(2, 2, 2))
    losses = _fit(network, (images,), masks, nn.BCEWithLogitsLoss(), steps=40)
    assert losses[-1] < 0.6 * losses[0], losses


# ---------------------------------------------------------------- EDSS lesion pathway


@pytest.mark.parametrize("level,expected", [(None, (0,)), (0, (2, 1, 16, 12, 8)), (1, (2, 1, 8, 6, 4))])
def test_lesion_pathway_returns_logits_at_the_chosen_encoder_level(level, expected) -> None:
    network = DualStreamRegressor(channels=TINY, hidden=(16,), lesion_level=level).eval()
    inputs = _dual_inputs(2, (32, 24, 16))
    with torch.no_grad():
        prediction, logits = network.forward_with_lesion_map(*inputs)
        assert torch.equal(prediction, network(*inputs))
        assert torch.equal(ForwardWithLesionMap(network)(*inputs)[1], logits)
    assert prediction.shape == (2, 1) and tuple(logits.shape) == expected


def test_lesion_pathway_rejects_a_level_outside_the_encoder_and_unequal_t1_t2_sizes() -> None:
    with pytest.raises(ValueError, match="lesion_level"):
        DualStreamRegressor(channels=TINY, lesion_level=4)
    network = DualStreamRegressor(channels=TINY, lesion_level=0).eval()
    t1, _, demographics = _dual_inputs(2, (16, 16, 16))
    with pytest.raises(ValueError, match="same size"):
        network(t1, torch.randn(2, 1, 16, 16, 24), demographics)


def _train_lesion_pathway(lesion_weight: float, steps: int = 40) -> list[float]:
    from monai_ms.engines import LesionAuxiliaryLoss

    torch.manual_seed(0)
    t1, t2, demographics = _dual_inputs(2, (24, 24, 24))
    masks = (t2 > 1.0).float()  # a learnable "lesion": bright T2 voxels
    network = DualStreamRegressor(channels=TINY, hidden=(16,), lesion_level=0)
    training_view = ForwardWithLesionMap(network)
    loss_fn = LesionAuxiliaryLoss(nn.L1Loss(), lesion_weight=lesion_weight)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    target = torch.tensor([[1.0], [6.0]])
    lesion_losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        prediction, logits = training_view(t1, t2, demographics)
        loss_fn((prediction, logits), (target, masks)).backward()
        optimizer.step()
        soft = nn.functional.adaptive_avg_pool3d(masks, logits.shape[2:])
        lesion_losses.append(loss_fn.lesion_loss(logits.detach(), soft).item())
    return lesion_losses


def test_lesion_pathway_learns_the_mask_through_the_auxiliary_loss() -> None:
    with_masks, without = _train_lesion_pathway(1.0), _train_lesion_pathway(0.0)
    assert with_masks[-1] < 0.9 * with_masks[0], with_masks
    assert with_masks[-1] < without[-1] - 0.1, (with_masks[-1], without[-1])


# ---------------------------------------------------------------- EDSS segmenter lesion pathway


def _segmenter_regressor() -> DualStreamRegressor:
    return DualStreamRegressor(channels=TINY, hidden=(16,), lesion_network=BrainSegmenter3D(channels=TINY, strides=(2, 2, 2)))


def test_segmenter_pathway_gives_full_resolution_logits_and_a_lesion_load_that_moves_the_prediction() -> None:
    torch.manual_seed(0)
    network = _segmenter_regressor().eval()
    t1, t2, demographics = _dual_inputs(2, (16, 24, 16))
    with torch.no_grad():
        prediction, logits = network.forward_with_lesion_map(t1, t2, demographics)
        assert tuple(logits.shape) == (2, 1, 16, 24, 16) and prediction.shape == (2, 1)
        # only voxels called lesion (p > 0.5) count: all-background logits give a load of 0
        network.lesion_network.final_conv.conv.bias.fill_(-20.0)
        background = network(t1, t2, demographics)
        network.lesion_network.final_conv.conv.bias.fill_(20.0)
        everywhere = network(t1, t2, demographics)
    assert not torch.allclose(background, everywhere)
    with pytest.raises(ValueError, match="not both"):
        DualStreamRegressor(channels=TINY, lesion_level=0, lesion_network=BrainSegmenter3D(channels=TINY, strides=(2, 2, 2)))


def test_load_lesion_network_copies_and_freezes_the_segmenter(tmp_path, caplog) -> None:
    torch.manual_seed(0)
    source = BrainSegmenter3D(channels=TINY, strides=(2, 2, 2))
    torch.save({"model": source.state_dict()}, tmp_path / "wrapped.pt")
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    for name in ("wrapped.pt", "plain.pt"):
        network = _segmenter_regressor()
        assert network.load_lesion_network(tmp_path / name, freeze=True)
        for key, value in source.state_dict().items():
            assert torch.equal(network.lesion_network.state_dict()[key], value)
        assert not any(p.requires_grad for p in network.lesion_network.parameters())
        assert all(p.requires_grad for p in network.t1_encoder.parameters())
    network = _segmenter_regressor()
    assert network.load_lesion_network(tmp_path / "plain.pt", freeze=False)
    assert all(p.requires_grad for p in network.lesion_network.parameters())
    # a missing file, and weights that do not fit: the file is named
    with pytest.raises(ValueError, match="missing.pt: no lesion segmenter checkpoint"):
        _segmenter_regressor().load_lesion_network(tmp_path / "missing.pt")
    torch.save(BrainSegmenter3D(channels=(8, 8, 8, 8), strides=(2, 2, 2)).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt does not fit"):
        _segmenter_regressor().load_lesion_network(tmp_path / "other.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "plain.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated.pt: cannot read the lesion segmenter checkpoint"):
        _segmenter_regressor().load_lesion_network(tmp_path / "truncated.pt")
    with pytest.raises(ValueError, match="no lesion_network"):
        DualStreamRegressor(channels=TINY).load_lesion_network(tmp_path / "plain.pt")


def test_frozen_lesion_pathway_adds_nothing_to_the_training_loss(tmp_path) -> None:
    from monai_ms.engines import LesionAuxiliaryLoss

    torch.manual_seed(0)
    network = _segmenter_regressor()
    torch.save(network.lesion_network.state_dict(), tmp_path / "segmenter.pt")
    t1, t2, demographics = _dual_inputs(2, (32, 16, 16))
    target, masks = torch.tensor([[1.0], [3.0]]), (t2 > 1.0).float()
    loss_fn = LesionAuxiliaryLoss(nn.L1Loss(), lesion_weight=1.0)
    trainable = loss_fn(ForwardWithLesionMap(network)(t1, t2, demographics), (target, masks))
    network.load_lesion_network(tmp_path / "segmenter.pt", freeze=True)
    prediction, logits = ForwardWithLesionMap(network)(t1, t2, demographics)
    frozen = loss_fn((prediction, logits), (target, masks))
    assert float(frozen) == pytest.approx(float(nn.L1Loss()(prediction, target)))
    assert float(trainable) > float(frozen)
