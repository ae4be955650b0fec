"""EDSS regression from T1, T2 and demographics: one encoder per modality, fused with age and sex."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from torch.jit import Final

from monai_ms.networks.blocks import Conv3DBlock, GlobalPool, MLPHead, TissueFeatures
from monai_ms.networks.encoder import FeatureExtractor3D
from monai_ms.networks.heads import _statistic

__all__ = ["DualStreamRegressor", "ForwardWithLesionMap", "stream_keys", "SECOND_STREAM_KEY"]

logger = logging.getLogger(__name__)


SECOND_STREAM_KEY = "contrasts"
"""The batch key of the EDSS network's second stream when it stacks several modalities (T2, FLAIR, ...)."""


def stream_keys(modalities: Sequence[str]) -> list[str]:
    """The batch keys of :class:`DualStreamRegressor`'s two image streams for a bundle's ``modalities``.

    The fusion: the first stream reads the T1 (anatomy, atrophy); the second the other modalities, the
    lesion-sensitive contrasts, as one image (two modalities: the second one's own key) or stacked as
    channels under :data:`SECOND_STREAM_KEY` (three or more). The lesion segmenter reads all of them as
    channels in ``modalities`` order, as the lesion_seg bundle does.

    Raises:
        ValueError: fewer than two modalities, or not T1 first (:func:`monai_ms.data.fields.check_modalities`).

    Examples:
        >>> stream_keys(["t1", "flair"]), stream_keys(["t1", "t2", "flair"])
        (['t1', 'flair'], ['t1', 'contrasts'])
    """
    from monai_ms.data.fields import check_modalities

    chosen = check_modalities(modalities)
    if len(chosen) < 2:
        raise ValueError(f"the EDSS network has two image streams: modalities needs T1 and at least one more, got {list(chosen)}")
    return [chosen[0], chosen[1] if len(chosen) == 2 else SECOND_STREAM_KEY]


def _unit(voxel_ml: float) -> str:
    return f"{voxel_ml:.6g} (mL per voxel)" if voxel_ml > 0 else "None (the ROI fraction)"


class DualStreamRegressor(nn.Module):
    """Dual-stream 3D CNN: separate T1 and T2 encoders, pooled features + demographics -> MLP -> EDSS.

    Each modality has its own :class:`~monai_ms.networks.encoder.FeatureExtractor3D` (weights are
    not shared: T1 and T2 contrasts differ). The last feature map of each stream is globally pooled;
    both vectors are concatenated with the standardised demographics vector and passed to an MLP. The
    covariates (demographics and, with a lesion pathway, the lesion load) also pass through a linear
    layer (``covariate_head``) whose output is added to the MLP's: a linear model of the covariates is
    learnt in a few steps, and the MLP learns what it does not explain.

    Optional lesion pathway (``lesion_level``): a small convolutional head on the concatenated T1 and T2
    feature maps of one encoder level predicts lesion logits at that level's resolution, and the head
    also receives ``log(1 + 1000 * lesion fraction)``, a lesion-load estimate (see below). A scalar EDSS
    label is too weak a teacher for small lesions on a few dozen scans (the network memorises the
    training set); training that map against the lesion masks (``forward_with_lesion_map`` and
    :class:`~monai_ms.engines.LesionAuxiliaryLoss`) gives the encoders voxel-level supervision.

    Segmenter lesion pathway (``lesion_network``, used by the EDSS bundle): a full-resolution lesion
    segmenter (e.g. :class:`~monai_ms.networks.BrainSegmenter3D`) on T1 and T2 as two channels replaces
    the small head. Initialised from a trained lesion-segmentation model (:meth:`load_lesion_network`),
    it gives the MLP a lesion load that is right from the first epoch; the shallow head is still guessing
    after the few hundred steps a small cohort affords, and the regressor memorises meanwhile.
    The lesion-load feature counts only voxels called lesion (probability > 0.5): the faint probability
    spread over the whole background would otherwise outweigh lesions of a few mL.

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
            the small lesion head, or ``None`` for no lesion head.
        lesion_network: a module mapping ``(B, in_channels + second_in_channels, D, H, W)`` (the T1 and the
            second stream's channels) to lesion logits ``(B, 1, D, H, W)``, or ``None``. Excludes ``lesion_level``.
        second_in_channels: channels of the second stream (default ``in_channels``): with the bundle's
            ``modalities`` ``["t1", "t2", "flair"]`` the second stream reads T2 and FLAIR as two channels
            (:func:`stream_keys`); the attribute keeps its name ``t2_encoder``.
        tissue_features: add the T1's brain share and three tissue-class fractions to the covariates
            (``measured_width`` grows by 4). The T1 background must be exactly zero.
        lesion_voxel_ml: with ``lesion_network`` only, the volume of one input voxel in mL
            (:func:`~monai_ms.data.transforms.voxel_volume_ml` of the spacing): the lesion load is then
            ``log(1 + lesion volume in mL)``, the clinical unit and the imaging-feature baseline's feature.
            ``None``: ``log(1 + 1000 * lesion fraction of the input)``, the feature of bundles before EDSS 0.5.0.

    Raises:
        ValueError: inconsistent ``channels`` / ``strides``, unknown ``pooling``, negative
            ``demographics``, ``lesion_level`` outside the encoder levels, both ``lesion_level`` and
            ``lesion_network``, ``lesion_voxel_ml`` <= 0 or without ``lesion_network``; on load, a checkpoint whose
            lesion load has another unit (``lesion_voxel_ml``; one from before EDSS 0.5.0 has none); in ``forward``, a
            demographics tensor that is not ``(B, demographics)``, inputs whose batch sizes differ, or
            (with the lesion pathway) T1 and T2 of different sizes.

    Shapes:
        ``forward(t1, t2, demographics)``: t1 ``(B, in_channels, D, H, W)``, t2
        ``(B, in_channels, D', H', W')`` (any sizes; usually the same ROI), demographics
        ``(B, demographics)`` in raw units -> ``(B, out_channels)`` in target units.
        ``forward_with_lesion_map``: the same inputs -> ``((B, out_channels), (B, 1, *S_l))`` with
        ``S_l`` the spatial size at ``lesion_level``, or the input size with ``lesion_network`` (an empty
        tensor without a lesion pathway).
        ``measured_covariates(t1, lesion_logits)`` -> ``(B, measured_width)``: the standardised tissue
        features, then the lesion load; ``forward_with_measured(t1, t2, demographics, measured)`` takes them
        precomputed.

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
        lesion_network: nn.Module | None = None,
        second_in_channels: int | None = None,
        tissue_features: bool = False,
        lesion_voxel_ml: float | None = None,
    ) -> None:
        super().__init__()
        if lesion_voxel_ml is not None and not float(lesion_voxel_ml) > 0:
            raise ValueError(f"lesion_voxel_ml must be None or > 0 (mL per voxel), got {lesion_voxel_ml}")
        if lesion_voxel_ml is not None and lesion_network is None:  # the small head's map is coarser than the input
            raise ValueError("lesion_voxel_ml counts input voxels: it needs lesion_network (a full-resolution segmenter)")
        self.lesion_voxel_ml: Final[float] = -1.0 if lesion_voxel_ml is None else float(lesion_voxel_ml)
        # the lesion load's unit travels with the weights: a checkpoint fitted on the other unit is refused on load
        self.register_buffer("lesion_load_unit_ml", torch.tensor([self.lesion_voxel_ml]))
        if lesion_level is not None and lesion_network is not None:
            raise ValueError("give lesion_level (small head on the encoders) or lesion_network (a segmenter), not both")
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
        # the second stream: T2, or any other modality, or several stacked as channels (see stream_keys)
        second = in_channels if second_in_channels is None else int(second_in_channels)
        self.t2_encoder = FeatureExtractor3D(**{**encoder_args, "in_channels": second})
        self.pool = GlobalPool(pooling)
        image_features = self.pool.out_features(self.t1_encoder.out_channels)
        self.has_lesion_map: Final[bool] = lesion_level is not None or lesion_network is not None
        self.lesion_from_images: Final[bool] = lesion_network is not None
        # stays empty without a segmenter (TorchScript needs a module)
        self.lesion_network = nn.Sequential() if lesion_network is None else lesion_network
        self.lesion_level: Final[int] = -1 if lesion_level is None else int(lesion_level)
        self.lesion_head = nn.Sequential()  # stays empty without the lesion pathway (TorchScript needs a module)
        if lesion_level is not None:
            width = 2 * int(channels[lesion_level])
            self.lesion_head.append(Conv3DBlock(spatial_dims, width, width, kernel_size=3, act=act, norm=norm, bias=bias))
            self.lesion_head.append(Convolution(spatial_dims, width, 1, kernel_size=1, conv_only=True))
        # atrophy covariates of the T1 (brain share, CSF / grey / white matter fractions), or none
        self.tissue: TissueFeatures | None = TissueFeatures(channel=0) if tissue_features else None
        tissue_width = 0 if self.tissue is None else self.tissue.out_features
        self.measured_width: Final[int] = tissue_width + int(self.has_lesion_map)
        head_in = 2 * image_features + demographics + self.measured_width
        self.head = MLPHead(head_in, out_channels, hidden=hidden, act=act, dropout=dropout)
        # covariates (demographics, tissue fractions, lesion load) also enter linearly: the MLP learns what
        # they do not explain
        self.covariate_head = nn.Linear(demographics + self.measured_width, out_channels)
        self.register_buffer("demographics_mean", torch.zeros(demographics))
        self.register_buffer("demographics_std", torch.ones(demographics))
        self.register_buffer("target_mean", torch.zeros(out_channels))
        self.register_buffer("target_std", torch.ones(out_channels))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        key = prefix + "lesion_load_unit_ml"
        if key not in state_dict:  # written before EDSS 0.5.0: the lesion load was log(1 + 1000 x ROI fraction)
            if self.lesion_voxel_ml > 0:
                raise ValueError(
                    "this checkpoint predates EDSS 0.5.0: its lesion load is log(1 + 1000 x lesion fraction), the network's "
                    "log(1 + lesion mL); retrain, or rebuild the old feature with network_def#lesion_voxel_ml null"
                )
            state_dict[key] = torch.tensor([-1.0])
        elif not math.isclose(float(state_dict[key].flatten()[0]), self.lesion_voxel_ml, rel_tol=1e-6):
            saved = float(state_dict[key].flatten()[0])
            raise ValueError(
                f"this checkpoint's lesion load was fitted with lesion_voxel_ml {_unit(saved)}, the network reads "
                f"{_unit(self.lesion_voxel_ml)}: build the network with the checkpoint's spacing and lesion_voxel_ml"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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

    def load_lesion_network(self, checkpoint: str | os.PathLike, freeze: bool = True) -> bool:
        """Initialise ``lesion_network`` from a trained segmenter's weights, e.g. the lesion_seg bundle's.

        Args:
            checkpoint: a ``model.pt`` holding the segmenter's ``state_dict`` (or ``{"model": state_dict}``).
            freeze: stop gradients into the segmenter, so the EDSS loss cannot unlearn lesions.

        Returns:
            True when loaded.

        Raises:
            ValueError: no ``lesion_network``, a missing or unreadable file, or weights that do not fit it
                (the file is named). Which checkpoint to use, and whether it is unseen by the run's
                held-out subjects, is decided by :func:`monai_ms.engines.init_lesion_pathway`.
        """
        if not self.lesion_from_images:
            raise ValueError("load_lesion_network: this network has no lesion_network")
        path = Path(checkpoint)
        if not path.is_file():
            raise ValueError(f"{path}: no lesion segmenter checkpoint there")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # truncated or not a checkpoint: name the file, not torch's internals
            raise ValueError(f"{path}: cannot read the lesion segmenter checkpoint: {error}") from None
        state = state.get("model", state) if isinstance(state, dict) else state
        try:
            self.lesion_network.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(f"{path} does not fit network_def#lesion_network (same channels and strides?): {error}") from None
        self.lesion_network.requires_grad_(not freeze)
        logger.info(f"lesion pathway initialised from {path}" + (" (frozen)" if freeze else ""))
        return True

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
        lesion_logits = torch.zeros(0, dtype=t1.dtype, device=t1.device)
        if self.lesion_from_images:
            lesion_logits = self.lesion_network(torch.cat([t1, t2], dim=1))
        elif self.has_lesion_map:
            lesion_logits = self.lesion_head(torch.cat([t1_maps[self.lesion_level], t2_maps[self.lesion_level]], dim=1))
        measured = self.measured_covariates(t1, lesion_logits)
        return self._predict(t1_maps[-1], t2_maps[-1], demographics, measured), lesion_logits

    def measured_covariates(self, t1: torch.Tensor, lesion_logits: torch.Tensor) -> torch.Tensor:
        """The covariates measured on the images: tissue features of ``t1`` ``(B, C, *S)``, then the lesion load.

        Args:
            t1: the first stream's input (its channel 0 is measured).
            lesion_logits: the lesion pathway's logits ``(B, 1, *S_l)`` (ignored without a pathway).

        Returns:
            ``(B, measured_width)``, empty columns for a network with neither.
        """
        columns = [torch.zeros(t1.shape[0], 0, dtype=t1.dtype, device=t1.device)]
        if self.tissue is not None:
            columns.append(self.tissue(t1).to(t1.dtype))
        if self.has_lesion_map:
            columns.append(self.lesion_load_feature(lesion_logits).to(t1.dtype))
        return torch.cat(columns, dim=1)

    def lesion_load_feature(self, lesion_logits: torch.Tensor) -> torch.Tensor:
        """The lesion load of lesion logits ``(B, 1, *S)`` -> ``(B, 1)``: ``log(1 + lesion mL)`` with
        ``lesion_voxel_ml``, else ``log(1 + 1000 * lesion fraction)``.

        Only voxels called lesion (probability > 0.5) count: the faint probability spread over the whole
        background would otherwise outweigh lesions of a few mL.
        """
        probability = torch.sigmoid(lesion_logits.float()).flatten(2)  # float32: a sum of 10^5 voxels under autocast
        called = probability * (probability > 0.5).to(probability.dtype)
        if self.lesion_voxel_ml > 0:
            return torch.log1p(called.sum(2) * self.lesion_voxel_ml)
        return torch.log1p(1000.0 * called.mean(2))  # (B, 1) lesion fraction, scaled

    def forward_with_measured(
        self, t1: torch.Tensor, t2: torch.Tensor, demographics: torch.Tensor, measured: torch.Tensor
    ) -> torch.Tensor:
        """Predict from the images with the measured covariates ``(B, measured_width)`` computed beforehand.

        What training uses: the tissue features and a frozen segmenter's lesion load depend only on a
        session's images, so they are computed once per session from the images without augmentation (see
        :func:`~monai_ms.engines.fit_covariate_head`) instead of at every step, where the segmenter's
        full-resolution forward pass cost more than both encoders together and noise augmentation would
        move the tissue features. :meth:`forward` (evaluation, inference, the exported model) still
        computes them from the images.
        """
        if self.measured_width == 0:
            raise ValueError("forward_with_measured: this network measures no covariate (no lesion pathway, no tissue features)")
        if measured.numel() != t1.shape[0] * self.measured_width:
            raise ValueError(
                f"forward_with_measured: expected {self.measured_width} measured covariates per scan, got shape {list(measured.shape)}"
            )
        measured = measured.reshape(t1.shape[0], self.measured_width)
        return self._predict(self.t1_encoder(t1)[-1], self.t2_encoder(t2)[-1], demographics, measured)

    def _predict(
        self, t1_features: torch.Tensor, t2_features: torch.Tensor, demographics: torch.Tensor, measured: torch.Tensor
    ) -> torch.Tensor:
        """Pooled last feature maps, raw demographics and the measured covariates ``(B, measured_width)`` -> target units."""
        demographics = (demographics.to(self.demographics_mean.dtype) - self.demographics_mean) / self.demographics_std
        features = [self.pool(t1_features), self.pool(t2_features), demographics.to(t1_features.dtype)]
        if self.measured_width > 0:
            features.append(measured.to(t1_features.dtype))
        covariates = torch.cat(features[2:], dim=1)
        output = self.head(torch.cat(features, dim=1)) + self.covariate_head(covariates)
        return self.target_mean + self.target_std * output


class ForwardWithLesionMap(nn.Module):
    """Training view of a :class:`DualStreamRegressor` whose ``forward`` also returns the lesion logits.

    The trainer calls this wrapper (so ``DistributedDataParallel`` can wrap it and still see every
    call), while evaluation, checkpoints and TorchScript use the wrapped network and its plain
    ``forward``. Both share the same parameters.

    With ``measured_features`` (session id -> the network's measured covariates, the tissue features and a
    frozen segmenter's lesion load, filled by :func:`~monai_ms.engines.fit_covariate_head`) and the batch's
    session ids as the fourth input, they are not measured again on the augmented images: the stored row is
    used, the segmenter is not run, and the lesion logits come back empty (a frozen pathway has no lesion
    loss; their shape ``(B, 1, 0, 0, 0)`` tells :class:`~monai_ms.engines.LesionAuxiliaryLoss` so). A batch
    with a session missing from the table is measured on its images.

    Args:
        network: a :class:`DualStreamRegressor` (with or without the lesion pathway).
        measured_features: the per-session table, or ``None`` (always measure on the images).

    Shapes:
        see :meth:`DualStreamRegressor.forward_with_lesion_map`.
    """

    def __init__(self, network: DualStreamRegressor, measured_features: dict[str, list[float]] | None = None) -> None:
        super().__init__()
        self.network = network
        self.measured_features = measured_features

    def forward(
        self, t1: torch.Tensor, t2: torch.Tensor, demographics: torch.Tensor, session: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        table = self.measured_features
        if table and session is not None and all(s in table for s in session):
            measured = torch.tensor([table[s] for s in session], dtype=t1.dtype, device=t1.device)
            prediction = self.network.forward_with_measured(t1, t2, demographics, measured)
            if not self.network.has_lesion_map:
                return prediction, torch.zeros(0, dtype=t1.dtype, device=t1.device)
            # a lesion map of no voxels, (B, 1, 0, 0, 0): the stored feature stood in for the segmenter (no lesion
            # loss), unlike the (0,) tensor of a network without a lesion pathway
            return prediction, torch.zeros(t1.shape[0], 1, 0, 0, 0, dtype=t1.dtype, device=t1.device)
        return self.network.forward_with_lesion_map(t1, t2, demographics)
