"""Building blocks shared by the monai_ms networks: convolution block, global pooling, intensity
histogram, tissue features, MLP head.

Every layer type comes from MONAI's ``Act`` / ``Norm`` factories, so ``norm="instance"``,
``norm="batch"`` or ``norm=("group", {"num_groups": 8})`` is a configuration change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, ResidualUnit, UpSample
from monai.networks.layers.utils import get_act_layer

__all__ = [
    "Conv3DBlock",
    "UpBlock",
    "GlobalPool",
    "soft_histogram",
    "StandardisedFeatures",
    "IntensityHistogram",
    "TissueFeatures",
    "MLPHead",
    "POOLING_MODES",
]

POOLING_MODES = ("avg", "avgmax")


class Conv3DBlock(nn.Sequential):
    """One encoder stage: a (strided) convolution with normalisation, dropout and activation.

    A thin wrapper choosing between MONAI's :py:class:`~monai.networks.blocks.Convolution`
    (``num_res_units=0``) and :py:class:`~monai.networks.blocks.ResidualUnit` with ``num_res_units``
    sub-convolutions (``2`` adds a second, stride-1 convolution after the strided one), the same
    convention as ``monai.networks.nets.UNet``. The block is stored as the single child ``unit``.

    Args:
        spatial_dims: number of spatial dimensions (3 for volumes).
        in_channels: number of input channels.
        out_channels: number of output channels.
        strides: convolution stride (downsampling factor); 1 keeps the resolution.
        kernel_size: convolution kernel size (odd, so that padding keeps the size with stride 1).
        num_res_units: 0 for a plain convolution, n > 0 for a residual unit of n convolutions.
        act: activation name or (name, kwargs), e.g. ``"PRELU"``, ``("leakyrelu", {"negative_slope": 0.1})``.
        norm: normalisation name or (name, kwargs), e.g. ``"instance"``, ``("group", {"num_groups": 8})``.
        dropout: dropout probability after each convolution (0 for none).
        bias: whether the convolutions have a bias term.

    Shapes:
        input ``(B, in_channels, *S)`` -> output ``(B, out_channels, *ceil(S / strides))``.

    Examples::

        >>> block = Conv3DBlock(3, 1, 16, strides=2)
        >>> block(torch.zeros(2, 1, 32, 24, 20)).shape
        torch.Size([2, 16, 16, 12, 10])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        strides: int = 1,
        kernel_size: int = 3,
        num_res_units: int = 0,
        act: str | tuple = "PRELU",
        norm: str | tuple = "instance",
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if num_res_units < 0:
            raise ValueError(f"num_res_units must be >= 0, got {num_res_units}")
        common = dict(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            strides=strides,
            kernel_size=kernel_size,
            act=act,
            norm=norm,
            dropout=dropout,
            bias=bias,
        )
        unit: nn.Module
        if num_res_units > 0:
            unit = ResidualUnit(subunits=num_res_units, **common)
        else:
            unit = Convolution(**common)
        self.add_module("unit", unit)


class UpBlock(nn.Module):
    """One decoder stage: upsample, concatenate the encoder skip, then a stride-1 :class:`Conv3DBlock`.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels of the coarse input.
        skip_channels: channels of the encoder feature map at the target resolution.
        out_channels: channels of the output.
        scale_factor: upsampling factor (the stride of the matching encoder stage).
        kernel_size: kernel size of the convolution after concatenation.
        num_res_units: see :class:`Conv3DBlock`.
        act: activation, see :class:`Conv3DBlock`.
        norm: normalisation, see :class:`Conv3DBlock`.
        dropout: dropout probability.
        bias: whether the convolutions have a bias term.
        upsample: ``"deconv"`` (transposed convolution), ``"nontrainable"`` (interpolation after a
            1x1 convolution) or ``"pixelshuffle"``; see :py:class:`~monai.networks.blocks.UpSample`.

    Shapes:
        ``forward(x, skip)``: x ``(B, in_channels, *S)``, skip ``(B, skip_channels, *(S * scale_factor))``
        -> ``(B, out_channels, *(S * scale_factor))``.

    Examples::

        >>> up = UpBlock(3, 32, 16, 16, scale_factor=2)
        >>> up(torch.zeros(1, 32, 4, 4, 4), torch.zeros(1, 16, 8, 8, 8)).shape
        torch.Size([1, 16, 8, 8, 8])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        scale_factor: int = 2,
        kernel_size: int = 3,
        num_res_units: int = 0,
        act: str | tuple = "PRELU",
        norm: str | tuple = "instance",
        dropout: float = 0.0,
        bias: bool = True,
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        self.upsample = UpSample(
            spatial_dims, in_channels, out_channels, scale_factor=scale_factor, mode=upsample, bias=bias
        )
        self.conv = Conv3DBlock(
            spatial_dims,
            out_channels + skip_channels,
            out_channels,
            strides=1,
            kernel_size=kernel_size,
            num_res_units=num_res_units,
            act=act,
            norm=norm,
            dropout=dropout,
            bias=bias,
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.upsample(x), skip], dim=1))


class GlobalPool(nn.Module):
    """Global pooling over all spatial dimensions: average, or average and maximum concatenated.

    Works for any number of spatial dimensions and any input size, so heads built on it never depend
    on the volume size.

    Args:
        mode: ``"avg"`` -> ``(B, C)``; ``"avgmax"`` -> ``(B, 2 * C)`` (averages first, then maxima).

    Raises:
        ValueError: ``mode`` is not one of ``POOLING_MODES``.

    Examples::

        >>> GlobalPool("avgmax")(torch.zeros(2, 8, 3, 4, 5)).shape
        torch.Size([2, 16])
    """

    def __init__(self, mode: str = "avg") -> None:
        super().__init__()
        if mode not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")
        self.mode = mode
        self.use_max: bool = mode == "avgmax"

    def out_features(self, channels: int) -> int:
        """Number of output features for ``channels`` input channels."""
        return 2 * channels if self.use_max else channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = torch.flatten(x, start_dim=2)
        pooled = flat.mean(dim=-1)
        if self.use_max:
            pooled = torch.cat([pooled, flat.amax(dim=-1)], dim=1)
        return pooled


def soft_histogram(
    values: torch.Tensor, start: float, width: float, bins: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Triangular-kernel histogram: each value adds ``1 - frac`` to the centre below it and ``frac`` to the one above.

    Args:
        values: ``(B, C, N)``.
        start: the first of ``bins`` equally spaced centres; ``width``: their spacing. Values beyond the last
            centre count towards it only within one ``width``, and likewise below the first.
        weights: ``(B, C, N)`` voxel weights (e.g. a brain mask), or None for 1.

    Returns:
        ``(B, C, bins)`` summed weights (not normalised). Not differentiable where a value sits exactly on a
        centre; no gradient is needed, the image is an input.
    """
    position = (values - start) / width
    lower = torch.floor(position)
    frac = position - lower
    histogram = torch.zeros(values.shape[0], values.shape[1], bins, dtype=values.dtype, device=values.device)
    for index, weight in ((lower, 1.0 - frac), (lower + 1.0, frac)):
        inside = (index >= 0) & (index <= bins - 1)  # centres beyond the range get nothing
        if weights is not None:
            weight = weight * weights
        histogram.scatter_add_(2, index.clamp(0, bins - 1).long(), torch.where(inside, weight, 0.0))
    return histogram


class StandardisedFeatures(nn.Module):
    """Measured features of an image, standardised with training-split statistics stored as buffers.

    A subclass sets the number of features and implements ``counts`` (the raw features ``(B, out_features)``);
    :meth:`set_standardization` stores the training split's means and standard deviations, so checkpoints and
    TorchScript exports carry them, and ``forward`` returns the standardised features.
    """

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = int(out_features)
        self.register_buffer("feature_mean", torch.zeros(self.out_features))
        self.register_buffer("feature_std", torch.ones(self.out_features))

    def counts(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the training split's feature means and standard deviations (``out_features`` each, std > 0)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.numel() != self.out_features or std.numel() != self.out_features or not bool((std > 0).all()):
            raise ValueError(f"{type(self).__name__} standardisation needs {self.out_features} means and positive stds")
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.counts(x) - self.feature_mean) / self.feature_std


class IntensityHistogram(StandardisedFeatures):
    """Soft intensity histogram of every input channel over the whole volume, standardised.

    Each voxel adds a triangular weight (linear interpolation) to its two nearest of ``bins`` equally
    spaced centres on ``value_range``; values outside the range count towards the end bins' centres
    only as far as they are within one bin width. The counts are divided by the number of voxels, so a
    feature is the share of the input volume near one intensity. On z-scored brain images the dark
    bins measure CSF (atrophy) and the share of zero background measures brain size. The features are
    then standardised with buffers fitted on the training split (:meth:`set_standardization`), so
    checkpoints and TorchScript exports carry them.

    Args:
        in_channels: number of input channels.
        bins: number of bin centres per channel.
        value_range: first and last bin centre, in input units (z-scores for monai_ms images).

    Raises:
        ValueError: ``bins < 2`` or an empty ``value_range``.

    Shapes:
        ``(B, in_channels, *spatial)`` -> ``(B, in_channels * bins)``, channel-major (all bins of
        channel 0 first). Not differentiable where a voxel sits exactly on a bin centre; no gradient is
        needed, the image is an input.

    Examples::

        >>> histogram = IntensityHistogram(in_channels=1, bins=5, value_range=(-2.0, 2.0))
        >>> histogram.counts(torch.zeros(1, 1, 4, 4, 4)).tolist()
        [[0.0, 0.0, 1.0, 0.0, 0.0]]
    """

    def __init__(self, in_channels: int = 1, bins: int = 24, value_range: Sequence[float] = (-3.0, 3.0)) -> None:
        low, high = (float(v) for v in value_range)
        if int(bins) < 2 or not high > low:
            raise ValueError(
                f"IntensityHistogram needs bins >= 2 and value_range low < high, got {bins}, {value_range}"
            )
        super().__init__(int(in_channels) * int(bins))
        self.in_channels = int(in_channels)
        self.bins = int(bins)
        self.start = low
        self.width: float = (high - low) / (self.bins - 1)
        self.register_buffer("centres", torch.linspace(low, high, self.bins))  # kept: 0.2-0.3 checkpoints hold it

    def counts(self, x: torch.Tensor) -> torch.Tensor:
        """Unstandardised histogram ``(B, in_channels * bins)``: the share of voxels at each centre."""
        flat = torch.flatten(x, start_dim=2).float()  # (B, C, N)
        histogram = soft_histogram(flat, self.start, self.width, self.bins)
        return (histogram / flat.shape[-1]).flatten(1)


class TissueFeatures(StandardisedFeatures):
    """Brain size and three tissue-class fractions of one input channel, measured per image, standardised.

    The features a volumetry script gives (brain volume; CSF, grey and white matter shares), measured inside
    the network so that a checkpoint or an export carries them: the brain is the non-zero voxels of the
    skull-stripped input, and its intensities are split into three classes by a 1-D k-means started at
    ``mean - std``, ``mean`` and ``mean + std`` with a fixed number of updates (label-free and adaptive to
    the contrast, like the Gaussian mixture of :func:`monai_ms.engines.metrics.imaging_features.tissue_fractions`,
    which the evaluation's imaging-feature baseline uses). Unlike the bins of :class:`IntensityHistogram`,
    the class fractions do not move when a scanner renders the same tissues brighter or darker: that is
    what lets a linear path on them transfer to another site.

    With ``bins > 0`` it also measures the *shape* of the brain's intensity distribution on a scale the
    scan itself defines: each brain voxel is mapped piecewise linearly so that the dark, middle and bright
    class centres land on -1, 0 and +1 (landmark normalisation in the spirit of Nyul and Udupa, with the
    k-means centres as landmarks), and its soft histogram (:func:`soft_histogram`, ``bins`` centres on
    ``value_range``) is taken as shares of the brain. Partial-volume and lesion voxels between the classes
    keep their place on that scale when another scanner changes the contrast.

    Args:
        channel: the input channel measured (0: the T1 in every monai_ms bundle; the classes are then CSF,
            grey and white matter from dark to bright).
        iterations: k-means updates (1-D k-means on three well separated classes settles in about 10).
        bins: centres of the class-normalised histogram (0: none).
        value_range: its first and last centre, in class-normalised units (dark centre -1, bright +1).
        smoothing: with ``bins > 0``, the histogram is taken of the brain smoothed by a Gaussian of this
            standard deviation in voxels (inside the brain only: a normalised convolution, so the brain's edge
            does not darken), with its own class centres. Scans acquired at other voxel sizes then reach
            closer effective resolutions, at the cost of detail in the histogram; 0: none.

    Shapes:
        ``(B, C, *spatial)`` -> ``(B, 4 + bins)``: the brain's share of the input volume (the brain volume
        at the bundles' fixed ROI and spacing), the darkest, middle and brightest class's share of the
        brain, then the class-normalised histogram. Background must be exactly zero (no noise augmentation
        outside the brain).

    Examples::

        >>> x = torch.zeros(1, 1, 10, 10, 10)
        >>> x[0, 0, :2], x[0, 0, 2:5], x[0, 0, 5:9] = -2.0, 0.1, 1.0  # 20% dark, 30% mid, 40% bright; 10% background
        >>> [round(v, 2) for v in TissueFeatures().counts(x)[0].tolist()]
        [0.9, 0.22, 0.33, 0.44]
    """

    def __init__(
        self,
        channel: int = 0,
        iterations: int = 20,
        bins: int = 0,
        value_range: Sequence[float] = (-2.0, 2.0),
        smoothing: float = 0.0,
    ) -> None:
        low, high = (float(v) for v in value_range)
        if int(bins) == 1 or (int(bins) > 1 and not high > low):
            raise ValueError(f"TissueFeatures needs bins 0 or >= 2 and value_range low < high, got {bins}, {value_range}")
        if not float(smoothing) >= 0.0:
            raise ValueError(f"TissueFeatures needs smoothing >= 0 (voxels), got {smoothing}")
        super().__init__(4 + max(int(bins), 0))
        self.channel = int(channel)
        self.iterations = int(iterations)
        self.bins = max(int(bins), 0)
        self.start = low
        self.width: float = (high - low) / max(self.bins - 1, 1)
        self.smoothing = float(smoothing)
        radius = int(math.ceil(3.0 * self.smoothing)) if self.smoothing > 0 else 0
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-(offsets**2) / (2.0 * max(self.smoothing, 1e-6) ** 2))
        # not in the state dict: checkpoints of earlier versions load unchanged
        self.register_buffer("smoothing_kernel", kernel / kernel.sum(), persistent=False)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # checkpoints written before the features took one soft_histogram (brain_age 0.5.0 runs before f56d298)
        # hold the buffers of a nested IntensityHistogram: its bin centres, which ``start`` and ``width`` now
        # give, and a standardisation it never applied. Nothing reads them, so they are dropped, not refused.
        for key in [k for k in state_dict if k.startswith(prefix + "histogram.")]:
            del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _smooth(self, image: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """Gaussian smoothing of ``image`` inside ``brain`` (both ``(B, 1, D, H, W)``), background kept 0."""
        k = self.smoothing_kernel
        n, pad = k.numel(), k.numel() // 2
        numerator, denominator = image * brain, brain
        for weight, padding in (
            (k.view(1, 1, n, 1, 1), (pad, 0, 0)),
            (k.view(1, 1, 1, n, 1), (0, pad, 0)),
            (k.view(1, 1, 1, 1, n), (0, 0, pad)),
        ):
            numerator = torch.nn.functional.conv3d(numerator, weight, padding=padding)
            denominator = torch.nn.functional.conv3d(denominator, weight, padding=padding)
        return torch.where(brain > 0, numerator / denominator.clamp_min(1e-6), torch.zeros_like(image))

    def _classes(self, values: torch.Tensor, brain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """1-D k-means of the brain values ``(B, N)`` (``brain``: 0/1 weights): centres and voxel counts ``(B, 3)``."""
        voxels = brain.sum(dim=1).clamp_min(1.0)  # (B,)
        mean = (brain * values).sum(dim=1) / voxels
        std = torch.sqrt((brain * (values - mean[:, None]) ** 2).sum(dim=1) / voxels).clamp_min(1e-6)
        centres = mean[:, None] + std[:, None] * torch.tensor([-1.0, 0.0, 1.0], device=values.device)  # (B, 3)
        n_brain, total = brain.sum(dim=1), (brain * values).sum(dim=1)
        shares = torch.zeros_like(centres)
        for _ in range(self.iterations + 1):
            low = ((centres[:, 0] + centres[:, 1]) / 2)[:, None]
            high = ((centres[:, 1] + centres[:, 2]) / 2)[:, None]
            # two masks per update (the middle class is what is left): a third of the work of three
            dark = (values < low).float() * brain
            bright = (values >= high).float() * brain
            n_dark, n_bright = dark.sum(dim=1), bright.sum(dim=1)
            s_dark, s_bright = (dark * values).sum(dim=1), (bright * values).sum(dim=1)
            shares = torch.stack([n_dark, n_brain - n_dark - n_bright, n_bright], dim=1)  # (B, 3)
            sums = torch.stack([s_dark, total - s_dark - s_bright, s_bright], dim=1)
            centres = torch.where(shares > 0, sums / shares.clamp_min(1.0), centres)
        return centres, shares

    def counts(self, x: torch.Tensor) -> torch.Tensor:
        """Unstandardised features ``(B, 4 + bins)``: brain share of the volume, dark / middle / bright class
        shares, then the class-normalised histogram (shares of the brain)."""
        values = torch.flatten(x[:, self.channel], start_dim=1).float()  # (B, N)
        brain = (values != 0).float()
        voxels = brain.sum(dim=1).clamp_min(1.0)  # (B,)
        centres, shares = self._classes(values, brain)
        features = [(voxels / values.shape[1])[:, None], shares / voxels[:, None]]
        if self.bins > 0:
            if self.smoothing > 0:
                image = x[:, self.channel : self.channel + 1].float()
                smoothed = self._smooth(image, (image != 0).float())
                values = torch.flatten(smoothed, start_dim=1)
                centres, _ = self._classes(values, brain)
            # dark centre -> -1, middle -> 0, bright -> +1, linear in between and beyond; brain voxels only
            below = (centres[:, 1] - centres[:, 0]).clamp_min(1e-6)[:, None]
            above = (centres[:, 2] - centres[:, 1]).clamp_min(1e-6)[:, None]
            offset = values - centres[:, 1:2]
            scaled = torch.where(offset < 0, offset / below, offset / above)
            histogram = soft_histogram(scaled[:, None], self.start, self.width, self.bins, weights=brain[:, None])
            features.append(histogram[:, 0] / voxels[:, None])
        return torch.cat(features, dim=1)


class MLPHead(nn.Sequential):
    """Fully connected head: ``[Linear -> act -> Dropout] * len(hidden) -> Linear``, no output activation.

    Args:
        in_features: width of the input vector.
        out_features: width of the output (1 for a scalar or a binary logit).
        hidden: widths of the hidden layers; ``()`` gives a single linear layer.
        act: activation name or (name, kwargs) from MONAI's ``Act`` factory.
        dropout: dropout probability after each hidden layer.

    Raises:
        ValueError: a width is not positive or ``dropout`` is outside [0, 1).

    Shapes:
        ``(B, in_features)`` -> ``(B, out_features)``.

    Examples::

        >>> MLPHead(256, 1, hidden=(64,), dropout=0.2)(torch.zeros(4, 256)).shape
        torch.Size([4, 1])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 1,
        hidden: Sequence[int] = (64,),
        act: str | tuple = "PRELU",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [int(in_features), *(int(h) for h in hidden), int(out_features)]
        if min(widths) < 1:
            raise ValueError(
                f"MLP widths must be positive, got in={in_features}, hidden={tuple(hidden)}, out={out_features}"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        for i, (n_in, n_out) in enumerate(zip(widths[:-2], widths[1:-1])):
            self.add_module(f"linear_{i}", nn.Linear(n_in, n_out))
            self.add_module(f"act_{i}", get_act_layer(act))
            if dropout > 0:
                self.add_module(f"dropout_{i}", nn.Dropout(dropout))
        self.add_module("output", nn.Linear(widths[-2], widths[-1]))
