"""Whole-volume prediction networks: encoder -> global pooling -> MLP (brain age, sex, any scalar).

:class:`BrainRegressor3D` and :class:`BrainClassifier3D` differ only in their output: the regressor
maps the head's normalised value back to target units with buffers stored in the model, the
classifier returns the raw logit (sigmoid belongs to post-processing, the loss is
``BCEWithLogitsLoss``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from monai_ms.networks.blocks import GlobalPool, IntensityHistogram, MLPHead, TissueFeatures
from monai_ms.networks.encoder import FeatureExtractor3D

__all__ = ["PooledHeadNetwork3D", "BrainRegressor3D", "BrainClassifier3D"]


def _statistic(name: str, value: Any, size: int, positive: bool = False) -> torch.Tensor:
    """Turn a user-given mean or standard deviation into a float32 vector of ``size`` entries.

    A scalar is broadcast; anything else must have exactly ``size`` entries, all finite (and > 0 when
    ``positive``).
    """
    tensor = torch.as_tensor(value, dtype=torch.float32).detach().flatten().cpu()
    if tensor.numel() == 1:
        tensor = tensor.expand(size).clone()
    if tensor.numel() != size:
        raise ValueError(f"{name} must be a scalar or have {size} entries, got {tensor.numel()}: {tensor.tolist()}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must be finite, got {tensor.tolist()}")
    if positive and not bool((tensor > 0).all()):
        raise ValueError(f"{name} must be > 0 (a constant column cannot be standardised), got {tensor.tolist()}")
    return tensor


class PooledHeadNetwork3D(nn.Module):
    """Base of the whole-volume networks: FeatureExtractor3D -> GlobalPool -> MLPHead.

    Subclasses define ``forward``; :meth:`head_output` gives the raw head output ``(B, out_channels)``.
    Arguments are those of :class:`BrainRegressor3D`.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
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
        histogram_bins: int = 0,
        histogram_range: Sequence[float] = (-3.0, 3.0),
        tissue_features: bool = False,
        tissue_bins: int = 0,
        tissue_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.encoder = FeatureExtractor3D(
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
        self.pool = GlobalPool(pooling)
        self.head = MLPHead(
            self.pool.out_features(self.encoder.out_channels), out_channels, hidden=hidden, act=act, dropout=dropout
        )
        # optional linear path on the input's intensity histogram, added to the MLP output (see BrainRegressor3D)
        self.histogram: IntensityHistogram | None = None
        self.histogram_head: nn.Linear | None = None
        if histogram_bins > 0:
            self.histogram = IntensityHistogram(in_channels, histogram_bins, histogram_range)
            self.histogram_head = nn.Linear(self.histogram.out_features, out_channels)
        # optional linear path on brain size and tissue-class fractions of channel 0 (the T1), also added
        self.tissue: TissueFeatures | None = None
        self.tissue_head: nn.Linear | None = None
        if tissue_features:
            self.tissue = TissueFeatures(channel=0, bins=tissue_bins, smoothing=tissue_smoothing)
            self.tissue_head = nn.Linear(self.tissue.out_features, out_channels)

    def head_output(self, x: torch.Tensor) -> torch.Tensor:
        """Raw head output ``(B, out_channels)`` for an image ``(B, in_channels, *spatial)``."""
        output = self.head(self.pool(self.encoder(x)[-1]))
        if self.histogram is not None and self.histogram_head is not None:
            output = output + self.histogram_head(self.histogram(x))
        if self.tissue is not None and self.tissue_head is not None:
            output = output + self.tissue_head(self.tissue(x))
        return output


class BrainRegressor3D(PooledHeadNetwork3D):
    """Predict a continuous value (e.g. brain age) from a volume: encoder -> global pooling -> MLP.

    The MLP predicts a normalised target; ``forward`` returns ``target_mean + target_std * head``, so the
    output is in target units (years) while the head trains on a unit-scale value. ``target_mean`` and
    ``target_std`` are buffers (shape ``(out_channels,)``, default 0 and 1): they are saved in the
    ``state_dict`` and in TorchScript exports. Set them from the training split with
    :meth:`set_normalization`. There is no output activation.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: image channels (1 for T1, 2 for T1 + T2 stacked).
        out_channels: number of predicted values.
        channels: encoder channels per level, see :class:`~monai_ms.networks.encoder.FeatureExtractor3D`.
        strides: encoder strides per level (same length as ``channels``).
        kernel_size: convolution kernel size.
        num_res_units: 0 for plain convolutions, n > 0 for residual units of n convolutions.
        hidden: widths of the MLP hidden layers (``()`` for a linear head).
        pooling: ``"avg"`` (global average) or ``"avgmax"`` (average and maximum concatenated).
        act: activation name or (name, kwargs) for encoder and MLP.
        norm: encoder normalisation name or (name, kwargs): ``"instance"``, ``"batch"``,
            ``("group", {"num_groups": 8})``.
        dropout: dropout probability in the MLP head.
        encoder_dropout: dropout probability after each encoder convolution.
        bias: whether the convolutions have a bias term.
        histogram_bins: ``> 0`` adds a linear path on the input's intensity histogram
            (:class:`~monai_ms.networks.blocks.IntensityHistogram`, ``histogram_bins`` per channel) to the
            MLP output; start it with :func:`monai_ms.engines.fit_histogram_head`. Its features are shares
            of the input volume, so train and predict at one input size (the bundles' fixed ROI).
        histogram_range: first and last bin centre (z-scores).
        tissue_features: adds a linear path on the T1's brain size and CSF / grey / white matter class
            fractions (:class:`~monai_ms.networks.blocks.TissueFeatures`, 4 features) to the MLP output; start
            it with :func:`monai_ms.engines.fit_feature_paths` (with the histogram path, if any). Unlike the
            histogram bins, these features keep their meaning on another scanner's contrast. Needs a zero
            background (no noise augmentation outside the brain) and one input size, like the histogram.
        tissue_bins: ``> 0`` adds to the tissue path a histogram of the T1's brain intensities on the scale
            its own class centres define (dark -1, middle 0, bright +1; ``TissueFeatures(bins=...)``).
        tissue_smoothing: the histogram of ``tissue_bins`` is taken of the T1 smoothed by a Gaussian of this
            standard deviation in voxels (``TissueFeatures(smoothing=...)``); 0: none.

    Raises:
        ValueError: inconsistent ``channels`` / ``strides``, unknown ``pooling``, bad ``dropout``.

    Shapes:
        input ``(B, in_channels, D, H, W)`` of any size (global pooling) -> output ``(B, out_channels)``.

    Examples::

        >>> net = BrainRegressor3D(in_channels=1, channels=(8, 16, 32, 64), strides=(2, 2, 2, 2))
        >>> net.set_normalization(target_mean=45.0, target_std=12.0)
        >>> net(torch.zeros(2, 1, 32, 40, 32)).shape
        torch.Size([2, 1])
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
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
        histogram_bins: int = 0,
        histogram_range: Sequence[float] = (-3.0, 3.0),
        tissue_features: bool = False,
        tissue_bins: int = 0,
        tissue_smoothing: float = 0.0,
    ) -> None:
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=channels,
            strides=strides,
            kernel_size=kernel_size,
            num_res_units=num_res_units,
            hidden=hidden,
            pooling=pooling,
            act=act,
            norm=norm,
            dropout=dropout,
            encoder_dropout=encoder_dropout,
            bias=bias,
            histogram_bins=histogram_bins,
            histogram_range=histogram_range,
            tissue_features=tissue_features,
            tissue_bins=tissue_bins,
            tissue_smoothing=tissue_smoothing,
        )
        self.register_buffer("target_mean", torch.zeros(out_channels))
        self.register_buffer("target_std", torch.ones(out_channels))

    def set_normalization(self, target_mean: Any = None, target_std: Any = None) -> None:
        """Store the target statistics of the training split in the model (``None`` keeps the current value).

        Args:
            target_mean: scalar or ``out_channels`` values.
            target_std: scalar or ``out_channels`` values, all > 0.

        Raises:
            ValueError: wrong number of values, a non-finite value, or a standard deviation <= 0.

        Examples::

            >>> net = BrainRegressor3D(channels=(8, 16), strides=(2, 2))
            >>> net.set_normalization(target_mean=45.0, target_std=12.0)
            >>> float(net.target_std)
            12.0
        """
        # check both values before changing either, so a failed call leaves the model as it was
        mean = None if target_mean is None else _statistic("target_mean", target_mean, self.out_channels)
        std = None if target_std is None else _statistic("target_std", target_std, self.out_channels, positive=True)
        if mean is not None:
            self.target_mean.copy_(mean)
        if std is not None:
            self.target_std.copy_(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict ``(B, out_channels)`` values in target units from ``x`` of shape ``(B, in_channels, *spatial)``."""
        return self.target_mean + self.target_std * self.head_output(x)


class BrainClassifier3D(PooledHeadNetwork3D):
    """Classify a volume (e.g. sex): encoder -> global pooling -> MLP -> logits.

    Returns logits, never probabilities: train with ``torch.nn.BCEWithLogitsLoss`` (one output) or
    ``CrossEntropyLoss`` (several) and apply the sigmoid / softmax in post-processing
    (``monai.transforms.Activations(sigmoid=True)``).

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: image channels (1 for T1, 2 for T1 + T2 stacked).
        out_channels: number of logits (1 for a binary task such as P(male)).
        channels: encoder channels per level.
        strides: encoder strides per level (same length as ``channels``).
        kernel_size: convolution kernel size.
        num_res_units: 0 for plain convolutions, n > 0 for residual units of n convolutions.
        hidden: widths of the MLP hidden layers.
        pooling: ``"avg"`` or ``"avgmax"``.
        act: activation name or (name, kwargs).
        norm: encoder normalisation name or (name, kwargs).
        dropout: dropout probability in the MLP head.
        encoder_dropout: dropout probability after each encoder convolution.
        bias: whether the convolutions have a bias term.
        histogram_bins: ``> 0`` adds a linear path on the input's intensity histogram
            (:class:`~monai_ms.networks.blocks.IntensityHistogram`, ``histogram_bins`` per channel) to the
            MLP output; start it with :func:`monai_ms.engines.fit_histogram_head`. Its features are shares
            of the input volume, so train and predict at one input size (the bundles' fixed ROI).
        histogram_range: first and last bin centre (z-scores).
        tissue_features: adds a linear path on the T1's brain size and CSF / grey / white matter class
            fractions (:class:`~monai_ms.networks.blocks.TissueFeatures`, 4 features) to the MLP output; start
            it with :func:`monai_ms.engines.fit_feature_paths` (with the histogram path, if any). Unlike the
            histogram bins, these features keep their meaning on another scanner's contrast. Needs a zero
            background (no noise augmentation outside the brain) and one input size, like the histogram.
        tissue_bins: ``> 0`` adds to the tissue path a histogram of the T1's brain intensities on the scale
            its own class centres define (dark -1, middle 0, bright +1; ``TissueFeatures(bins=...)``).
        tissue_smoothing: the histogram of ``tissue_bins`` is taken of the T1 smoothed by a Gaussian of this
            standard deviation in voxels (``TissueFeatures(smoothing=...)``); 0: none.

    Raises:
        ValueError: inconsistent ``channels`` / ``strides``, unknown ``pooling``, bad ``dropout``.

    Shapes:
        input ``(B, in_channels, D, H, W)`` of any size -> logits ``(B, out_channels)``.

    Examples::

        >>> net = BrainClassifier3D(in_channels=1, channels=(8, 16, 32, 64), strides=(2, 2, 2, 2))
        >>> probability_male = torch.sigmoid(net(torch.zeros(2, 1, 32, 32, 32)))
        >>> probability_male.shape
        torch.Size([2, 1])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels)`` for ``x`` of shape ``(B, in_channels, *spatial)``."""
        return self.head_output(x)
