"""LesionAuxiliaryLoss against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from monai_ms.engines import LesionAuxiliaryLoss


def test_regression_alone_when_no_mask_is_given() -> None:
    loss = LesionAuxiliaryLoss(torch.nn.L1Loss(), lesion_weight=5.0)
    prediction, target = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [3.0]])
    logits = torch.zeros(2, 1, 2, 2, 2)
    assert loss(prediction, target).item() == pytest.approx(0.5)
    assert loss((prediction, logits), (target,)).item() == pytest.approx(0.5)


def test_lesion_term_uses_the_mask_pooled_to_the_logits_resolution() -> None:
    mask = torch.zeros(1, 1, 4, 4, 4)
    mask[0, 0, :2, :2, :1] = 1.0  # half of the first 2x2x2 block
    logits = torch.randn(1, 1, 2, 2, 2)
    soft = torch.zeros(1, 1, 2, 2, 2)
    soft[0, 0, 0, 0, 0] = 0.5
    prediction, target = torch.tensor([[2.0]]), torch.tensor([[1.0]])
    expected = 1.0 + 0.3 * DiceCELoss(sigmoid=True, batch=True)(logits, soft).item()
    loss = LesionAuxiliaryLoss(torch.nn.L1Loss(), lesion_weight=0.3)
    assert loss((prediction, logits), (target, mask)).item() == pytest.approx(expected, rel=1e-6)


def test_a_mask_without_a_lesion_pathway_is_an_error() -> None:
    loss = LesionAuxiliaryLoss(torch.nn.L1Loss())
    with pytest.raises(ValueError, match="no lesion pathway"):
        loss((torch.zeros(1, 1), torch.zeros(0)), (torch.zeros(1, 1), torch.zeros(1, 1, 4, 4, 4)))
