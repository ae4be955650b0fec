"""The shared 3D encoder: a stack of :class:`~monai_ms.networks.blocks.Conv3DBlock` stages."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from monai_ms.networks.blocks import Conv3DBlock

__all__ = ["FeatureExtractor3D"]


def _check_levels(channels: Sequence[int], strides: Sequence[int]) -> None:
    if len(channels) == 0:
        raise ValueError("channels must name at least one level, got ()")
    if len(strides) != len(channels):
        raise ValueError(
            f"strides must have one entry per level of channels ({len(channels)}), "
            f"got channels={tuple(channels)} and strides={tuple(strides)}"
        )
    if any(int(c) < 1 for c in channels):
        raise ValueError(f"channels must be positive integers, got {tuple(channels)}")
    if any(int(s) < 1 for s in strides):
        raise ValueError(f"strides must be positive integers, got {tuple(strides)}")


class FeatureExtractor3D(nn.Module):
    """Convolutional encoder returning the feature map of every level, highest resolution first.

    Level ``i`` is one :class:`~monai_ms.networks.blocks.Conv3DBlock` with ``channels[i]`` output
    channels and stride ``strides[i]``. There is no separate stem: a full-resolution first level is
    ``strides[0] = 1`` (what :class:`~monai_ms.networks.segmenter.BrainSegmenter3D` uses, so that its
    decoder has a skip at the input resolution). The last map is the bottleneck that the pooled
    heads use.

    Args:
        spatial_dims: number of spatial dimensions (3 for volumes, 2 for slices).
        in_channels: number of input channels (1 for one modality, 2 for T1 + T2 stacked).
        channels: output channels of each level.
        strides: stride of each level (same length as ``channels``).
        kernel_size: convolution kernel size (odd).
        num_res_units: 0 for plain convolutions, n > 0 for residual units of n convolutions
            (2 adds a stride-1 convolution to every level).
        act: activation name or (name, kwargs), e.g. ``"PRELU"``, ``("leakyrelu", {"negative_slope": 0.1})``.
        norm: normalisation name or (name, kwargs), e.g. ``"instance"``, ``"batch"``,
            ``("group", {"num_groups": 8})`` (every entry of ``channels`` must then divide by 8).
        dropout: dropout probability after each convolution.
        bias: whether the convolutions have a bias term.

    Raises:
        ValueError: ``channels`` is empty, ``strides`` has a different length, or a value is not positive.

    Shapes:
        input ``(B, in_channels, D, H, W)``; output: a list of ``len(channels)`` tensors, the ``i``-th of
        shape ``(B, channels[i], ceil(D / p_i), ceil(H / p_i), ceil(W / p_i))`` with
        ``p_i = prod(strides[: i + 1])`` (exactly ``D / p_i`` when ``D`` divides by ``p_i``).
        With ``norm="instance"`` the last map must keep more than one voxel during training.

    Examples::

        >>> encoder = FeatureExtractor3D(in_channels=1, channels=(8, 16, 32, 64), strides=(2, 2, 2, 2))
        >>> [tuple(f.shape) for f in encoder(torch.zeros(1, 1, 32, 32, 48))]
        [(1, 8, 16, 16, 24), (1, 16, 8, 8, 12), (1, 32, 4, 4, 6), (1, 64, 2, 2, 3)]
        >>> encoder.out_channels
        64
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2, 2),
        kernel_size: int = 3,
        num_res_units: int = 1,
        act: str | tuple = "PRELU",
        norm: str | tuple = "instance",
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        _check_levels(channels, strides)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.channels = tuple(int(c) for c in channels)
        self.strides = tuple(int(s) for s in strides)
        self.blocks = nn.ModuleList()
        previous = in_channels
        for width, stride in zip(self.channels, self.strides):
            self.blocks.append(
                Conv3DBlock(
                    spatial_dims,
                    previous,
                    width,
                    strides=stride,
                    kernel_size=kernel_size,
                    num_res_units=num_res_units,
                    act=act,
                    norm=norm,
                    dropout=dropout,
                    bias=bias,
                )
            )
            previous = width

    @property
    def out_channels(self) -> int:
        """Channels of the last (bottleneck) feature map, ``channels[-1]``."""
        return self.channels[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the feature maps of all levels, highest resolution first (see the class docstring)."""
        features: list[torch.Tensor] = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features
