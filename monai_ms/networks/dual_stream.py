"""EDSS regression from T1, T2 and demographics: one encoder per modality, fused with age and sex."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from monai_ms.networks.blocks import GlobalPool, MLPHead
from monai_ms.networks.encoder import FeatureExtractor3D
from monai_ms.networks.heads import _statistic

__all__ = ["DualStreamRegressor"]


class DualStreamRegressor(nn.Module):
    """Dual-stream 3D CNN: separate T1 and T2 encoders, pooled features + demographics -> MLP -> EDSS.

    Each modality has its own :class:`~monai_ms.networks.encoder.FeatureExtractor3D` (weights are
    not shared: T1 and T2 contrasts differ). The last feature map of each stream is globally pooled;
    both vectors are concatenated with the standardised demographics vector and passed to an MLP.

    Normalisation travels with the model as buffers (saved in the ``state_dict`` and in TorchScript):
    ``demographics_mean`` / ``demographics_std`` (shape ``(demographics,)``) standardise the raw
    demographics inside ``forward``, and the head predicts a normalised target that ``forward`` maps
    back with ``target_mean + target_std * head`` (shape ``(out_channels,)``). They default to 0 and 1;
    set them from the training split with :meth:`set_normalization`. There is no output activation.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels of each stream's image (1 for one T1 / one T2 volume).
        demographics: number of demographic features (2 for age and sex coded 0/1).
        out_channels: number of predicted values (1 for EDSS).
        channels: encoder channels per level (both streams).
        strides: encoder strides per level (same length as ``channels``).
        kernel_size: convolution kernel size.
        num_res_units: 0 for plain convolutions, n > 0 for residual units of n convolutions.
        hidden: widths of the MLP hidden layers.
        pooling: ``"avg"`` (global average) or ``"avgmax"`` (average and maximum concatenated).
        act: activation name or (name, kwargs) for encoders and MLP.
        norm: encoder normalisation name or (name, kwargs).
        dropout: dropout probability in the MLP head.
        encoder_dropout: dropout probability after each encoder convolution.
        bias: whether the convolutions have a bias term.

    Raises:
        ValueError: inconsistent ``channels`` / ``strides``, unknown ``pooling``, negative
            ``demographics``; in ``forward``, a demographics tensor that is not ``(B, demographics)``
            or inputs whose batch sizes differ.

    Shapes:
        ``forward(t1, t2, demographics)``: t1 ``(B, in_channels, D, H, W)``, t2
        ``(B, in_channels, D', H', W')`` (any sizes; usually the same ROI), demographics
        ``(B, demographics)`` in raw units -> ``(B, out_channels)`` in target units.

    Examples::

        >>> net = DualStreamRegressor(channels=(8, 16, 32, 64), strides=(2, 2, 2, 2), hidden=(32,))
        >>> net.set_normalization([40.0, 0.3], [10.0, 0.46], target_mean=3.0, target_std=2.0)
        >>> t1 = t2 = torch.zeros(2, 1, 32, 32, 32)
        >>> net(t1, t2, torch.tensor([[32.0, 0.0], [51.0, 1.0]])).shape
        torch.Size([2, 1])
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        demographics: int = 2,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2, 2),
        kernel_size: int = 3,
        num_res_units: int = 1,
        hidden: Sequence[int] = (64,),
        pooling: str = "avg",
        act: str | tuple = "PRELU",
        norm: str | tuple = "instance",
        dropout: float = 0.0,
        encoder_dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if demographics < 0:
            raise ValueError(f"demographics must be >= 0, got {demographics}")
        self.demographics = demographics
        self.out_channels = out_channels
        encoder_args = dict(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            channels=channels,
            strides=strides,
            kernel_size=kernel_size,
            num_res_units=num_res_units,
            act=act,
            norm=norm,
            dropout=encoder_dropout,
            bias=bias,
        )
        self.t1_encoder = FeatureExtractor3D(**encoder_args)
        self.t2_encoder = FeatureExtractor3D(**encoder_args)
        self.pool = GlobalPool(pooling)
        image_features = self.pool.out_features(self.t1_encoder.out_channels)
        self.head = MLPHead(2 * image_features + demographics, out_channels, hidden=hidden, act=act, dropout=dropout)
        self.register_buffer("demographics_mean", torch.zeros(demographics))
        self.register_buffer("demographics_std", torch.ones(demographics))
        self.register_buffer("target_mean", torch.zeros(out_channels))
        self.register_buffer("target_std", torch.ones(out_channels))

    def set_normalization(
        self,
        demographics_mean: Any = None,
        demographics_std: Any = None,
        target_mean: Any = None,
        target_std: Any = None,
    ) -> None:
        """Store the training split's statistics in the model (``None`` keeps the current value).

        Args:
            demographics_mean: ``demographics`` values (or one scalar), e.g. ``[mean age, share male]``.
            demographics_std: ``demographics`` values (or one scalar), all > 0.
            target_mean: scalar or ``out_channels`` values, e.g. the mean EDSS.
            target_std: scalar or ``out_channels`` values, all > 0.

        Raises:
            ValueError: wrong number of values, a non-finite value, or a standard deviation <= 0.

        Examples::

            >>> net = DualStreamRegressor(channels=(8, 16), strides=(2, 2))
            >>> net.set_normalization([40.0, 0.5], [10.0, 0.5], 3.0, 2.0)
            >>> net.demographics_mean.tolist()
            [40.0, 0.5]
        """
        requested = {
            "demographics_mean": (demographics_mean, self.demographics, False),
            "demographics_std": (demographics_std, self.demographics, True),
            "target_mean": (target_mean, self.out_channels, False),
            "target_std": (target_std, self.out_channels, True),
        }
        # check every value before changing any, so a failed call leaves the model as it was
        checked = {
            name: _statistic(name, value, size, positive)
            for name, (value, size, positive) in requested.items()
            if value is not None
        }
        for name, tensor in checked.items():
            getattr(self, name).copy_(tensor)

    def forward(self, t1: torch.Tensor, t2: torch.Tensor, demographics: torch.Tensor) -> torch.Tensor:
        """Predict ``(B, out_channels)`` in target units; see the class docstring for shapes."""
        if demographics.dim() != 2 or demographics.shape[1] != self.demographics:
            raise ValueError(
                f"DualStreamRegressor: demographics must have shape (batch, {self.demographics}), "
                f"got {list(demographics.shape)}"
            )
        if t1.shape[0] != t2.shape[0] or t1.shape[0] != demographics.shape[0]:
            raise ValueError(
                f"DualStreamRegressor: t1, t2 and demographics must have the same batch size, got "
                f"{t1.shape[0]}, {t2.shape[0]} and {demographics.shape[0]}"
            )
        t1_features = self.pool(self.t1_encoder(t1)[-1])
        t2_features = self.pool(self.t2_encoder(t2)[-1])
        demographics = (demographics.to(self.demographics_mean.dtype) - self.demographics_mean) / self.demographics_std
        fused = torch.cat([t1_features, t2_features, demographics.to(t1_features.dtype)], dim=1)
        return self.target_mean + self.target_std * self.head(fused)
