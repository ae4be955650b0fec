"""Losses for networks with an auxiliary lesion map (the EDSS model's lesion pathway)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceCELoss

__all__ = ["LesionAuxiliaryLoss"]


class LesionAuxiliaryLoss(nn.Module):
    """Regression loss plus ``lesion_weight`` times a Dice + BCE loss of the lesion logits.

    The lesion mask is average-pooled to the logits' resolution, so the target is the lesion fraction
    of each coarse voxel (soft labels; a lesion smaller than a coarse voxel still counts). Sessions
    without lesions contribute through the batch-level Dice and the BCE.

    Args:
        regression_loss: loss of ``(prediction, target)``, e.g. ``torch.nn.HuberLoss()``.
        lesion_weight: weight of the lesion term; 0 trains on the regression target alone.

    Shapes:
        ``pred``: ``(prediction (B, 1), lesion_logits (B, 1, *S_l))`` as returned by
        :class:`~monai_ms.networks.ForwardWithLesionMap`, or a plain prediction tensor.
        ``target``: ``(target (B, 1), lesion_mask (B, 1, *S))`` with ``S`` a multiple of ``S_l``, or
        ``(target,)`` / a plain tensor when no masks are used.

    Raises:
        ValueError: a lesion mask is given but the network returned no lesion logits.

    Examples::

        >>> loss = LesionAuxiliaryLoss(torch.nn.L1Loss(), lesion_weight=1.0)
        >>> pred = (torch.zeros(2, 1), torch.zeros(2, 1, 4, 4, 4))
        >>> target = (torch.ones(2, 1), torch.zeros(2, 1, 8, 8, 8))
        >>> float(loss(pred, target)) > 1.0
        True
    """

    def __init__(self, regression_loss: Callable, lesion_weight: float = 1.0) -> None:
        super().__init__()
        self.regression_loss = regression_loss
        self.lesion_weight = float(lesion_weight)
        self.lesion_loss = DiceCELoss(sigmoid=True, batch=True)

    def forward(self, pred: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        prediction, logits = (pred, None) if isinstance(pred, torch.Tensor) else (pred[0], pred[1])
        value, mask = (target, None) if isinstance(target, torch.Tensor) else (target[0], target[1] if len(target) > 1 else None)
        loss = self.regression_loss(prediction, value)
        if mask is None or self.lesion_weight == 0:
            return loss
        if logits is not None and logits.dim() == 5 and logits.numel() == 0:
            return loss  # a frozen pathway's per-session feature stood in for the segmenter (see ForwardWithLesionMap)
        if logits is None or logits.numel() == 0:
            raise ValueError(
                "LesionAuxiliaryLoss: lesion masks were given but the network has no lesion pathway (lesion_level or lesion_network)"
            )
        if prediction.requires_grad and not logits.requires_grad:
            return loss  # a frozen lesion pathway (pre-trained, see DualStreamRegressor.load_lesion_network)
        soft = F.adaptive_avg_pool3d(mask.to(logits.dtype), logits.shape[2:])
        return loss + self.lesion_weight * self.lesion_loss(logits, soft)
