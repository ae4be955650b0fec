"""The levers of fast default training: bf16 autocast on the CPU, the segmenter's prior bias, and the EDSS
lesion feature computed once per session instead of at every step."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer

from monai_ms.engines import AutocastInferer, LesionAuxiliaryLoss, cpu_autocast, fit_covariate_head
from monai_ms.networks import BrainSegmenter3D, DualStreamRegressor, ForwardWithLesionMap

TINY = (4, 8, 8, 8)


def test_autocast_inferer_runs_bf16_and_returns_float32_close_to_full_precision() -> None:
    torch.manual_seed(0)
    net = BrainSegmenter3D(in_channels=2, channels=TINY, strides=(2, 2, 2)).eval()
    x = torch.randn(1, 2, 32, 32, 32)
    with torch.no_grad():
        full = SimpleInferer()(x, net)
        half = AutocastInferer(SimpleInferer(), dtype="bf16")(x, net)
        window = AutocastInferer(SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=2), dtype="bf16")(x, net)
    assert half.dtype == torch.float32 and window.dtype == torch.float32
    assert not torch.equal(half, full), "bf16 changed nothing: autocast did not run"
    torch.testing.assert_close(half, full, rtol=0.05, atol=0.05)  # bf16 keeps ~3 significant digits
    # dtype None is the wrapped inferer, bit for bit
    assert torch.equal(AutocastInferer(SimpleInferer(), dtype=None)(x, net), full)


def test_autocast_inferer_casts_tuples_and_leaves_integers() -> None:
    out = AutocastInferer(SimpleInferer())(
        torch.ones(2, 3), lambda x: (torch.nn.functional.linear(x, torch.ones(1, 3)), torch.ones(2, dtype=torch.long))
    )
    assert out[0].dtype == torch.float32 and out[1].dtype == torch.long


def test_cpu_autocast_setting() -> None:
    assert cpu_autocast("bf16", "cpu") == "bf16"
    assert cpu_autocast("bf16", "cuda:0") is None  # CUDA uses MONAI's fp16 amp instead
    assert cpu_autocast(None, "cpu") is None and cpu_autocast("fp32", "cpu") is None
    with pytest.raises(ValueError, match="autocast must be 'bf16' or None.*'float8'"):
        cpu_autocast("float8", "cpu")
    with pytest.raises(ValueError, match="dtype must be one of"):
        AutocastInferer(SimpleInferer(), dtype="int8")


def test_segmenter_prior_probability_sets_the_untrained_foreground_probability() -> None:
    torch.manual_seed(0)
    net = BrainSegmenter3D(in_channels=2, channels=TINY, strides=(2, 2, 2), prior_probability=0.01)
    probability = torch.sigmoid(net(torch.randn(2, 2, 16, 16, 16)))
    assert 0.005 < float(probability.mean().detach()) < 0.02  # PyTorch's default bias gives about 0.5
    with pytest.raises(ValueError, match=r"prior_probability must be in \(0, 1\) or None, got 1.5"):
        BrainSegmenter3D(prior_probability=1.5)


def _regressor() -> DualStreamRegressor:
    torch.manual_seed(0)
    segmenter = BrainSegmenter3D(in_channels=2, channels=TINY, strides=(2, 2, 2))
    return DualStreamRegressor(channels=TINY, strides=(2, 2, 2, 2), lesion_network=segmenter)


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(2, 1, 32, 32, 32), torch.randn(2, 1, 32, 32, 32), torch.tensor([[30.0, 0.0], [50.0, 1.0]])


def test_stored_lesion_feature_gives_the_prediction_forward_computes_and_skips_the_segmenter() -> None:
    network = _regressor().eval()
    t1, t2, demographics = _inputs()
    with torch.no_grad():
        expected, logits = network.forward_with_lesion_map(t1, t2, demographics)
        feature = network.lesion_load_feature(logits)[:, 0]
    table = {"s1": [float(feature[0])], "s2": [float(feature[1])]}
    calls = []
    network.lesion_network.register_forward_hook(lambda *args: calls.append(1))
    view = ForwardWithLesionMap(network, table)
    with torch.no_grad():
        prediction, empty = view(t1, t2, demographics, ["s1", "s2"])
    assert not calls, "the segmenter ran although the feature was stored"
    assert empty.shape == (2, 1, 0, 0, 0)
    torch.testing.assert_close(prediction, expected)
    # a session missing from the table: computed from the images, as forward does
    with torch.no_grad():
        view(t1, t2, demographics, ["s1", "unknown"])
    assert calls


def test_fit_covariate_head_stores_the_feature_only_for_a_frozen_segmenter() -> None:
    t1, t2, demographics = _inputs()
    entries = [{"session": f"s{i}", "t1": t1[i], "t2": t2[i], "demographics": demographics[i], "edss": float(2 * i + 1)} for i in range(2)]
    entries.append({"session": "s2", "t1": t1[0] * 0.5, "t2": t2[0], "demographics": demographics[0], "edss": 4.0})
    identity = lambda item: item  # noqa: E731 (the entries already hold tensors)
    trainable, frozen = _regressor(), _regressor()
    frozen.lesion_network.requires_grad_(False)
    table_trainable, table_frozen = {}, {}
    fit_covariate_head(trainable, entries, identity, measured_features=table_trainable)
    fit_covariate_head(frozen, entries, identity, measured_features=table_frozen)
    assert table_trainable == {}  # a trainable pathway changes every step: nothing to store
    assert sorted(table_frozen) == ["s0", "s1", "s2"]
    with torch.no_grad():
        _, logits = frozen.forward_with_lesion_map(t1[:1], t2[:1], demographics[:1])
    assert table_frozen["s0"] == pytest.approx([float(frozen.lesion_load_feature(logits))], abs=1e-5)


def test_loss_with_a_stored_feature_is_the_regression_loss_alone() -> None:
    loss = LesionAuxiliaryLoss(torch.nn.L1Loss())
    prediction = torch.zeros(2, 1, requires_grad=True)
    target = (torch.ones(2, 1), torch.ones(2, 1, 8, 8, 8))
    assert float(loss((prediction, torch.zeros(2, 1, 0, 0, 0)), target)) == pytest.approx(1.0)
    # masks given to a network without any lesion pathway stay an error, in training too
    with pytest.raises(ValueError, match="the network has no lesion pathway"):
        loss((prediction, torch.zeros(0)), target)
