"""EDSS regression from T1, T2 and demographics: one encoder per modality, fused with age and sex."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.jit import Final

from monai.networks.blocks import Convolution

from monai_ms.networks.blocks import Conv3DBlock, GlobalPool, MLPHead
from monai_ms.networks.encoder import FeatureExtractor3D
from monai_ms.networks.heads import _statistic

__all__ = ["DualStreamRegressor", "ForwardWithLesionMap"]


class DualStreamRegressor(nn.Module):
    """Dual-stream 3D CNN: separate T1 and T2 encoders, pooled features + demographics -> MLP -> EDSS.

    Each modality has its own :class:`~monai_ms.networks.encoder.FeatureExtractor3D` (weights are
    not shared: T1 and T2 contrasts differ). The last feature map of each stream is globally pooled;
    both vectors are concatenated with the standardised demographics vector and passed to an MLP.

    Optional lesion pathway (``lesion_level``): a small convolutional head on the concatenated T1 and T2
    feature maps of one encoder level predicts lesion logits at that level's resolution, and the head
    also receives ``log(1 + 1000 * mean lesion probability)``, a lesion-load estimate. A scalar EDSS
    label is too weak a teacher for small lesions on a few dozen scans (the network memorises the
    training set); training that map against the lesion masks (``forward_with_lesion_map`` and
    :class:`~monai_ms.engines.LesionAuxiliaryLoss`) gives the encoders voxel-level supervision.

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
        lesion_level: index of the encoder level (0 = first, stride ``strides[0]``) whose features feed
            the lesion pathway, or ``None`` for no lesion pathway.

    Raises:
        ValueError: inconsistent ``channels`` / ``strides``, unknown ``pooling``, negative
            ``demographics``, ``lesion_level`` outside the encoder levels; in ``forward``, a
            demographics tensor that is not ``(B, demographics)``, inputs whose batch sizes differ, or
            (with the lesion pathway) T1 and T2 of different sizes.

    Shapes:
        ``forward(t1, t2, demographics)``: t1 ``(B, in_channels, D, H, W)``, t2
        ``(B, in_channels, D', H', W')`` (any sizes; usually the same ROI), demographics
        ``(B, demographics)`` in raw units -> ``(B, out_channels)`` in target units.
        ``forward_with_lesion_map``: the same inputs -> ``((B, out_channels), (B, 1, *S_l))`` with
        ``S_l`` the spatial size at ``lesion_level`` (an empty tensor without the lesion pathway).

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
        lesion_level: int | None = None,
    ) -> None:
        super().__init__()
        if lesion_level is not None and not (isinstance(lesion_level, int) and 0 <= lesion_level < len(channels)):
            raise ValueError(f"lesion_level must be None or in [0, {len(channels) - 1}], got {lesion_level}")
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
        self.has_lesion_map: Final[bool] = lesion_level is not None
        self.lesion_level: Final[int] = -1 if lesion_level is None else int(lesion_level)
        self.lesion_head = nn.Sequential()  # stays empty without the lesion pathway (TorchScript needs a module)
        if lesion_level is not None:
            width = 2 * int(channels[lesion_level])
            self.lesion_head.append(Conv3DBlock(spatial_dims, width, width, kernel_size=3, act=act, norm=norm, bias=bias))
            self.lesion_head.append(Convolution(spatial_dims, width, 1, kernel_size=1, conv_only=True))
        head_in = 2 * image_features + demographics + int(self.has_lesion_map)
        self.head = MLPHead(head_in, out_channels, hidden=hidden, act=act, dropout=dropout)
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
        return self.forward_with_lesion_map(t1, t2, demographics)[0]

    def forward_with_lesion_map(
        self, t1: torch.Tensor, t2: torch.Tensor, demographics: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions and lesion logits (an empty tensor without the lesion pathway)."""
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
        if self.has_lesion_map and t1.shape[2:] != t2.shape[2:]:
            raise ValueError(
                f"DualStreamRegressor: the lesion pathway needs T1 and T2 of the same size, got "
                f"{list(t1.shape[2:])} and {list(t2.shape[2:])}"
            )
        t1_maps = self.t1_encoder(t1)
        t2_maps = self.t2_encoder(t2)
        demographics = (demographics.to(self.demographics_mean.dtype) - self.demographics_mean) / self.demographics_std
        features = [self.pool(t1_maps[-1]), self.pool(t2_maps[-1]), demographics.to(t1_maps[-1].dtype)]
        lesion_logits = torch.zeros(0, dtype=t1.dtype, device=t1.device)
        if self.has_lesion_map:
            lesion_features = torch.cat([t1_maps[self.lesion_level], t2_maps[self.lesion_level]], dim=1)
            lesion_logits = self.lesion_head(lesion_features)
            load = torch.sigmoid(lesion_logits).flatten(2).mean(2)  # (B, 1) lesion fraction of the ROI
            features.append(torch.log1p(1000.0 * load))
        prediction = self.target_mean + self.target_std * self.head(torch.cat(features, dim=1))
        return prediction, lesion_logits


class ForwardWithLesionMap(nn.Module):
    """Training view of a :class:`DualStreamRegressor` whose ``forward`` also returns the lesion logits.

    The trainer calls this wrapper (so ``DistributedDataParallel`` can wrap it and still see every
    call), while evaluation, checkpoints and TorchScript use the wrapped network and its plain
    ``forward``. Both share the same parameters.

    Args:
        network: a :class:`DualStreamRegressor` (with or without the lesion pathway).

    Shapes:
        see :meth:`DualStreamRegressor.forward_with_lesion_map`.
    """

    def __init__(self, network: DualStreamRegressor) -> None:
        super().__init__()
        self.network = network

    def forward(self, t1: torch.Tensor, t2: torch.Tensor, demographics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.network.forward_with_lesion_map(t1, t2, demographics)
