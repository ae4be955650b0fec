"""Lesion segmentation: the shared encoder plus a skip-connected decoder back to full resolution."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution

from monai_ms.networks.blocks import UpBlock
from monai_ms.networks.encoder import FeatureExtractor3D

__all__ = ["BrainSegmenter3D"]


class BrainSegmenter3D(nn.Module):
    """UNet-style segmenter built on :class:`~monai_ms.networks.encoder.FeatureExtractor3D`.

    The encoder's first level runs at full resolution (stride 1) and each further level downsamples
    by ``strides[i]``. The decoder upsamples level by level (:class:`~monai_ms.networks.blocks.UpBlock`:
    transposed convolution, concatenation with the encoder map of the same resolution, convolution)
    back to the input resolution, and a final 1x1x1 convolution gives the logits. No activation is
    applied: use ``DiceCELoss(sigmoid=True)`` / ``BCEWithLogitsLoss`` for training and a sigmoid (or
    softmax for several classes) in post-processing.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: image channels (2 for T1 + T2 stacked as channels).
        out_channels: output channels (1 for a binary lesion mask).
        channels: channels per level, full resolution first; the last is the bottleneck.
        strides: downsampling factor between consecutive levels (``len(channels) - 1`` entries).
        kernel_size: convolution kernel size (odd).
        num_res_units: 0 for plain convolutions, n > 0 for residual units of n convolutions
            (encoder and decoder).
        act: activation name or (name, kwargs).
        norm: normalisation name or (name, kwargs): ``"instance"``, ``"batch"``, ``("group", {"num_groups": 8})``.
        dropout: dropout probability after each convolution.
        bias: whether the convolutions have a bias term.
        upsample: ``"deconv"``, ``"nontrainable"`` or ``"pixelshuffle"``
            (see :py:class:`~monai.networks.blocks.UpSample`).
        prior_probability: start the output bias at ``logit(prior_probability)`` (as MONAI's RetinaNet
            classification head does), so the untrained network predicts the rare foreground class with
            that probability instead of 0.5; ``None`` keeps PyTorch's default bias. Lesions are about 1% of
            the brain: from 0.5 the first epochs are spent learning that the background is background.

    Raises:
        ValueError: ``strides`` does not have ``len(channels) - 1`` entries or a value is not positive, a
            ``prior_probability`` outside (0, 1);
            in ``forward``, a spatial size that is not a multiple of :attr:`divisible_by`.

    Shapes:
        input ``(B, in_channels, D, H, W)`` with every spatial size a multiple of
        ``divisible_by = prod(strides)`` -> logits ``(B, out_channels, D, H, W)``. Pad other sizes first
        (``monai.transforms.DivisiblePadd(k=net.divisible_by)``) or use ``sliding_window_inference``
        with a ``roi_size`` that divides by ``divisible_by``.

    Examples::

        >>> net = BrainSegmenter3D(in_channels=2, out_channels=1, channels=(8, 16, 32, 64), strides=(2, 2, 2))
        >>> net.divisible_by
        8
        >>> net(torch.zeros(1, 2, 32, 24, 40)).shape
        torch.Size([1, 1, 32, 24, 40])
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 2,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        kernel_size: int = 3,
        num_res_units: int = 1,
        act: str | tuple = "PRELU",
        norm: str | tuple = "instance",
        dropout: float = 0.0,
        bias: bool = True,
        upsample: str = "deconv",
        prior_probability: float | None = None,
    ) -> None:
        super().__init__()
        if prior_probability is not None and not 0.0 < prior_probability < 1.0:
            raise ValueError(f"prior_probability must be in (0, 1) or None, got {prior_probability}")
        if len(strides) != len(channels) - 1:
            raise ValueError(
                f"strides must have len(channels) - 1 = {len(channels) - 1} entries (one per downsampling), "
                f"got channels={tuple(channels)} and strides={tuple(strides)}"
            )
        self.channels = tuple(int(c) for c in channels)
        self.strides = tuple(int(s) for s in strides)
        self.encoder = FeatureExtractor3D(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            channels=self.channels,
            strides=(1, *self.strides),
            kernel_size=kernel_size,
            num_res_units=num_res_units,
            act=act,
            norm=norm,
            dropout=dropout,
            bias=bias,
        )
        # deepest stage first, matching the order forward walks the skips in
        self.decoder = nn.ModuleList(
            UpBlock(
                spatial_dims,
                in_channels=self.channels[level + 1],
                skip_channels=self.channels[level],
                out_channels=self.channels[level],
                scale_factor=self.strides[level],
                kernel_size=kernel_size,
                num_res_units=num_res_units,
                act=act,
                norm=norm,
                dropout=dropout,
                bias=bias,
                upsample=upsample,
            )
            for level in reversed(range(len(self.strides)))
        )
        self.final_conv = Convolution(
            spatial_dims, self.channels[0], out_channels, kernel_size=1, conv_only=True, bias=True
        )
        if prior_probability is not None:
            with torch.no_grad():
                self.final_conv.conv.bias.fill_(math.log(prior_probability / (1.0 - prior_probability)))
        self._divisible_by: int = math.prod(self.strides)

    @property
    def divisible_by(self) -> int:
        """Every spatial input size must be a multiple of this number, ``prod(strides)``."""
        return self._divisible_by

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, D, H, W)`` for ``x`` of shape ``(B, in_channels, D, H, W)``."""
        spatial = x.shape[2:]
        for size in spatial:
            if size % self._divisible_by != 0:
                raise ValueError(
                    f"BrainSegmenter3D: every spatial size must be a multiple of {self._divisible_by} "
                    f"(prod(strides)), got input shape {list(x.shape)}; pad it (DivisiblePadd) or use "
                    f"sliding_window_inference with a roi_size divisible by {self._divisible_by}"
                )
        features = self.encoder(x)
        y = features[-1]
        for i, up in enumerate(self.decoder):
            y = up(y, features[-2 - i])
        return self.final_conv(y)
