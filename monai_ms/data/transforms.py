"""The paired T1/T2 dictionary transform chains shared by every monai_ms bundle.

One definition, three stages:

- ``"train"``: deterministic preprocessing (cached by ``CacheDataset``), then random augmentation
  applied identically to every image key and the lesion mask, then per-modality normalisation;
- ``"eval"``: the same deterministic preprocessing and normalisation, no augmentation;
- ``"infer"``: as ``"eval"``, for scans without labels (every spatial step stays invertible, so a
  prediction can be mapped back onto the input T1 grid with ``monai.transforms.Invertd``).

Deterministic preprocessing: load -> channel first -> RAS -> reference image (T1) resampled to the
target spacing -> crop to the brain (inputs are skull-stripped, as the seed layout's ``*_preprocessed``
files) -> other modalities (T2) resampled onto the cropped T1 grid (one interpolation) -> optional N4
bias-field correction -> pad/crop to the ROI.
Normalisation is a z-score of each modality over its non-zero (brain) voxels.

The chain is described once, as :class:`Step` s (a transform class and its arguments) by
:func:`paired_steps`. Bundle configs build it with :func:`paired_transforms` (by ``_target_``); the bundle
export writes the same steps as a MONAI-only config (:meth:`Step.monai_config`). Nothing else builds a chain.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    ConcatItemsd,
    CopyItemsd,
    CropForegroundd,
    DeleteItemsd,
    DivisiblePadd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    MaskIntensityd,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoise,
    RandGaussianNoised,
    RandomizableTransform,
    RandSimulateLowResolutiond,
    ResampleToMatchd,
    ResizeWithPadOrCropd,
    Spacingd,
    SpatialPadd,
    Transform,
)

from monai_ms.data.bias_correction import N4BiasCorrectiond
from monai_ms.data.fields import DEFAULT_MODALITIES, parse_sex  # parse_sex: re-exported, its home was here

__all__ = [
    "STAGES",
    "voxel_volume_ml",
    "parse_sex",
    "EncodeDemographics",
    "EncodeDemographicsd",
    "Step",
    "build",
    "preprocessing_steps",
    "preprocessing",
    "augmentation_steps",
    "augmentation",
    "is_nonzero",
    "paired_steps",
    "paired_transforms",
    "AfterCacheFloat32",
    "ZeroResampleResidued",
    "zscore_nonzero",
    "ZScoreNonzerod",
    "RandGaussianNoise32d",
]

STAGES = ("train", "eval", "infer")
RESAMPLE_RESIDUE_TOL = 1e-5  # |x| <= this * max|x| after resampling is a rounding residue, i.e. background


class EncodeDemographics(Transform):
    """Stack age (years) and sex (1 = male) into a float vector of shape ``(2,)``.

    Scaling is not done here: the networks hold the training split's statistics as buffers, so a
    saved or exported model carries its own normalisation.

    Examples:
        >>> EncodeDemographics()(34.0, "F")
        tensor([34.,  0.])
    """

    def __call__(self, age: Any, sex: Any) -> torch.Tensor:
        return torch.tensor([float(age), parse_sex(sex)], dtype=torch.float32)


class EncodeDemographicsd(MapTransform):
    """Dictionary wrapper of :class:`EncodeDemographics`: writes ``output_key`` of shape ``(2,)``.

    Args:
        age_key: key of the age in years.
        sex_key: key of the sex (F/M/female/male).
        output_key: key to write the demographics vector to.
    """

    def __init__(self, age_key: str = "age", sex_key: str = "sex", output_key: str = "demographics") -> None:
        super().__init__(keys=[age_key, sex_key])
        self.age_key, self.sex_key, self.output_key = age_key, sex_key, output_key
        self.encoder = EncodeDemographics()

    @staticmethod
    def monai_equivalent(age_key: str = "age", sex_key: str = "sex", output_key: str = "demographics") -> list[dict[str, Any]]:
        """This transform as MONAI-only config entries (see :meth:`Step.monai_config`).

        The sex lookup reads ``@sex_codes``: the config that holds the entries defines ``"sex_codes"`` as
        :data:`monai_ms.data.fields.SEX_CONFIG_CODES`.
        """
        return [
            {"_target_": "Lambdad", "keys": age_key, "func": "$lambda age: torch.tensor([float(age)])"},
            {"_target_": "Lambdad", "keys": sex_key, "func": "$lambda s: torch.tensor([@sex_codes[str(s).strip().lower()]])"},
            {"_target_": "ConcatItemsd", "keys": [age_key, sex_key], "name": output_key, "dim": 0},
        ]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d[self.output_key] = self.encoder(d[self.age_key], d[self.sex_key])
        return d


class _ScalarTargetd(MapTransform):
    """Turn a scalar label (EDSS, age, sex) into a float tensor of shape ``(1,)``, matching a
    network output of shape ``(B, 1)`` once batched (a ``(B,)`` label would silently broadcast)."""

    def __init__(self, keys: KeysCollection, encode_sex: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.encode_sex = encode_sex

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = parse_sex(d[key]) if self.encode_sex else float(d[key])
            d[key] = torch.tensor([value], dtype=torch.float32)
        return d


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"cache_dtype must be a torch dtype name such as 'float16', got {dtype!r}")
    return resolved


class AfterCacheFloat32:
    """Cast the cached images back to float32: the first step after ``CacheDataset``'s cache.

    Deliberately not a ``monai.transforms.Transform``: ``CacheDataset`` and ``PersistentDataset`` cache
    the chain up to the first random transform *or the first callable that is not a Transform*, so this
    class marks where the cache ends even in the ``"eval"`` chain, which has no random transform.

    Args:
        keys: image (and label) keys to cast.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            d[key] = d[key].float()
        return d


class ZeroResampleResidued(MapTransform):
    """Set to exactly 0 the voxels whose magnitude is a rounding residue of resampling.

    ``Spacingd`` leaves values of ~1e-13..1e-9 just outside a skull-stripped brain (interpolation weights
    that are zero up to float rounding). The brain crop and the brain-only z-score (:class:`ZScoreNonzerod`)
    count any non-zero voxel as brain, so without this ~1% of a 2 mm T1's "brain" voxels would be
    background and z-score to about -4, a dark rim that also shifts the mean and std of the real brain voxels.

    Args:
        keys: image keys.
        rel_tol: voxels with ``|x| <= rel_tol * max|x|`` of their image become 0 (1e-5 of the brightest
            voxel is far below any tissue intensity of a real scan).
    """

    def __init__(self, keys: KeysCollection, rel_tol: float = RESAMPLE_RESIDUE_TOL) -> None:
        super().__init__(keys)
        self.rel_tol = rel_tol

    @staticmethod
    def monai_equivalent(keys: KeysCollection, rel_tol: float = RESAMPLE_RESIDUE_TOL) -> list[dict[str, Any]]:
        """This transform as MONAI-only config entries (see :meth:`Step.monai_config`)."""
        func = f"$lambda x: x.masked_fill(x.abs() <= {rel_tol!r} * x.abs().max(), 0)"
        return [{"_target_": "Lambdad", "keys": _config_value(keys), "func": func}]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            low, high = torch.aminmax(image.as_tensor() if isinstance(image, MetaTensor) else image)
            limit = self.rel_tol * max(-float(low), float(high))  # rel_tol * max|x|, without an |x| copy
            d[key] = image.masked_fill((image <= limit) & (image >= -limit), 0)
        return d


def zscore_nonzero(image: torch.Tensor) -> torch.Tensor:
    """Z-score each channel over its non-zero (brain) voxels; zero voxels stay 0.

    The values of ``monai.transforms.NormalizeIntensity(nonzero=True, channel_wise=True)`` (equal to float32
    rounding), 2.4x faster on CPU on brain volumes: background voxels add nothing to the sums, so the mean and variance
    come from whole-volume sums in float64 instead of a boolean gather and scatter. A channel without
    non-zero voxels is returned unchanged; a constant one becomes 0 (its std counts as 1, as in MONAI).

    Args:
        image: ``(C, *spatial)`` float tensor (a ``MetaTensor`` keeps its metadata).

    Returns:
        a new tensor of the same shape and type; ``image`` is not modified.
    """
    values = image.as_tensor() if isinstance(image, MetaTensor) else image
    flat = values.reshape(values.shape[0], -1)
    brain = values != 0
    count = brain.reshape(values.shape[0], -1).sum(1).clamp_min(1)
    mean = flat.sum(1, dtype=torch.float64) / count
    square_mean = torch.linalg.vector_norm(flat, dim=1, dtype=torch.float64) ** 2 / count
    std = (square_mean - mean**2).clamp_min(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    shape = (-1,) + (1,) * (values.ndim - 1)
    out = torch.where(brain, (values - mean.to(values.dtype).view(shape)) / std.to(values.dtype).view(shape), values)
    if isinstance(image, MetaTensor):
        return MetaTensor(out, meta=image.meta, applied_operations=image.applied_operations)
    return out


class ZScoreNonzerod(MapTransform):
    """Dictionary wrapper of :func:`zscore_nonzero`: the per-modality normalisation of every stage.

    Replaces ``NormalizeIntensityd(nonzero=True, channel_wise=True)``, which took a quarter of a cached
    training epoch's time (``benchmarks/data_pipeline.py``, ``tail_profile`` times both). Bundles exported for plain MONAI
    (``monai_ms.bundle.export``) keep ``NormalizeIntensityd``: the numbers are the same.

    Args:
        keys: image keys, each ``(C, *spatial)``.
        allow_missing_keys: skip keys absent from the item.
    """

    @staticmethod
    def monai_equivalent(keys: KeysCollection, allow_missing_keys: bool = False) -> list[dict[str, Any]]:
        """This transform as MONAI-only config entries (see :meth:`Step.monai_config`)."""
        keys = _config_value(keys)
        return [{"_target_": "NormalizeIntensityd", "keys": keys, "nonzero": True, "channel_wise": True,
                 "allow_missing_keys": allow_missing_keys}]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = zscore_nonzero(d[key])
        return d


class _GaussianNoise32(RandGaussianNoise):
    """``RandGaussianNoise`` drawing float32 noise with torch, seeded from the transform's own ``R``."""

    def randomize(self, img: Any, mean: float | None = None) -> None:
        RandomizableTransform.randomize(self, None)  # the prob draw, as MONAI's
        if not self._do_transform:
            return
        std = self.R.uniform(0, self.std) if self.sample_std else self.std
        generator = torch.Generator().manual_seed(int(self.R.randint(0, 2**31)))
        noise = torch.randn(tuple(img.shape), generator=generator, dtype=torch.float32)
        self.noise = noise.mul_(float(std)).add_(float(self.mean if mean is None else mean))


class RandGaussianNoise32d(RandGaussianNoised):
    """``RandGaussianNoised`` whose noise is drawn in float32 by torch instead of float64 by numpy.

    The same distribution (mean, std, ``sample_std``, one draw shared by the keys), about 4x cheaper: MONAI's
    float64 draw is a fifth of a cached training epoch (``benchmarks/data_pipeline.py``, ``tail_profile``).
    The torch generator is seeded from the transform's own ``R``, so ``set_random_state`` still makes a
    run reproducible.

    Args:
        keys, prob, mean, std, allow_missing_keys, sample_std: as ``monai.transforms.RandGaussianNoised``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        mean: float = 0.0,
        std: float = 0.1,
        allow_missing_keys: bool = False,
        sample_std: bool = True,
    ) -> None:
        super().__init__(
            keys, prob=prob, mean=mean, std=std, dtype=np.float32, allow_missing_keys=allow_missing_keys, sample_std=sample_std
        )
        self.rand_gaussian_noise = _GaussianNoise32(mean=mean, std=std, prob=1.0, dtype=np.float32, sample_std=sample_std)


@dataclass(frozen=True)
class Step:
    """One transform of a chain, described: its class and keyword arguments.

    The chain builders (:func:`preprocessing_steps`, :func:`augmentation_steps`, :func:`paired_steps`)
    return steps, so one description makes both the ``Compose`` a bundle runs (:meth:`build`) and the
    MONAI-only config an exported bundle ships (:meth:`monai_config`).

    Args:
        target: the transform class.
        kwargs: its keyword arguments.
    """

    target: type
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        """The transform."""
        return self.target(**self.kwargs)

    def monai_config(self) -> list[dict[str, Any]]:
        """Config entries (``{"_target_": ..., ...}``) that need MONAI alone and do what this step does.

        A MONAI transform is written as itself; a monai_ms transform as its ``monai_equivalent(**kwargs)``.

        Raises:
            ValueError: a monai_ms transform without a MONAI equivalent, or an argument a JSON config
                cannot hold.
        """
        if self.target.__module__.split(".")[0] == "monai":
            return [{"_target_": self.target.__name__, **{k: _config_value(v) for k, v in self.kwargs.items()}}]
        equivalent = getattr(self.target, "monai_equivalent", None)
        if equivalent is None:
            raise ValueError(f"{self.target.__name__} has no MONAI-only equivalent (it has no monai_equivalent)")
        return list(equivalent(**self.kwargs))


def _config_value(value: Any) -> Any:
    """A transform argument as a bundle config writes it (dtypes as ``$`` expressions)."""
    if isinstance(value, torch.dtype):
        return f"$torch.{str(value).removeprefix('torch.')}"
    if isinstance(value, type) and issubclass(value, np.generic):
        return f"$numpy.{value.__name__}"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_config_value(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise ValueError(f"a transform argument a JSON config cannot hold: {value!r}")


def build(steps: Sequence[Step]) -> list[Any]:
    """The transforms of ``steps``, in order."""
    return [step.build() for step in steps]


def preprocessing_steps(
    image_keys: Sequence[str] = DEFAULT_MODALITIES,
    label_key: str | None = None,
    spacing: Sequence[float] | float = 2.0,
    roi_size: Sequence[int] | None = (80, 96, 80),
    divisible_by: int | None = None,
    margin: int = 2,
    track_meta: bool = True,
    bias_correction: bool = False,
) -> list[Step]:
    """Deterministic spatial preprocessing, the part ``CacheDataset`` caches.

    Args:
        image_keys: image keys; the first is the reference grid (T1) the others are resampled onto.
        label_key: optional voxel label key on the reference grid (lesion mask), resampled with nearest.
        spacing: target voxel size in mm.
        roi_size: pad/crop the brain crop to this size (whole-volume networks); ``None`` keeps the crop.
        divisible_by: with ``roi_size=None``, pad each side to a multiple of this (sliding window
            inference and the segmenter's strides).
        margin: voxels kept around the brain when cropping.
        track_meta: return MetaTensors (affine and applied operations: what ``Invertd`` needs); ``False``
            returns plain tensors, e.g. for training, where nothing reads them and caching, copying and
            collating them costs time.
        bias_correction: divide each image by the bias field N4 fits to its brain (:class:`N4BiasCorrectiond`),
            on the cropped target grid, before any intensity is read.

    Returns:
        steps producing float32 tensors of shape ``(1, *roi_size)`` per image key.
    """
    image_keys = list(image_keys)
    reference, others = image_keys[0], image_keys[1:]
    ref_keys = [reference] + ([label_key] if label_key else [])
    all_keys = image_keys + ([label_key] if label_key else [])
    # MONAI's Spacing/ResampleToMatch default to float64: twice the memory and time for nothing
    spacing_mode = ["bilinear"] + (["nearest"] if label_key else [])
    chain = [
        Step(LoadImaged, dict(keys=all_keys, image_only=True, ensure_channel_first=False)),
        Step(EnsureChannelFirstd, dict(keys=all_keys)),
        Step(Orientationd, dict(keys=all_keys, axcodes="RAS")),
        Step(Spacingd, dict(keys=ref_keys, pixdim=spacing, mode=spacing_mode, padding_mode="zeros", dtype=np.float32)),
        # before the brain crop and the brain-only z-score, both of which treat any non-zero voxel as brain
        Step(ZeroResampleResidued, dict(keys=reference)),
        Step(CropForegroundd, dict(keys=ref_keys, source_key=reference, margin=margin, allow_smaller=True)),
    ]
    if others:
        # one interpolation of T2, straight onto the cropped T1 grid: the same values as resampling onto
        # the whole grid and cropping, for the brain box's voxels only (at 1 mm 2.4x fewer, 0.35 s a scan)
        chain.append(Step(ResampleToMatchd, dict(keys=others, key_dst=reference, padding_mode="zeros", dtype=np.float32)))
        chain.append(Step(ZeroResampleResidued, dict(keys=others)))
    if bias_correction:
        chain.append(Step(N4BiasCorrectiond, dict(keys=image_keys)))
    if roi_size is not None:
        chain.append(Step(ResizeWithPadOrCropd, dict(keys=all_keys, spatial_size=roi_size)))
    elif divisible_by:
        chain.append(Step(DivisiblePadd, dict(keys=all_keys, k=divisible_by)))
    chain.append(Step(EnsureTyped, dict(keys=all_keys, dtype=torch.float32, track_meta=track_meta)))
    return chain


def preprocessing(*args: Any, **kwargs: Any) -> list[Transform]:
    """The transforms of :func:`preprocessing_steps` (same arguments)."""
    return build(preprocessing_steps(*args, **kwargs))


def is_nonzero(x: torch.Tensor) -> torch.Tensor:
    """``x != 0``: the voxels of a skull-stripped image that belong to the brain (a ``select_fn``)."""
    return x != 0


def augmentation_steps(
    image_keys: Sequence[str] = DEFAULT_MODALITIES,
    label_key: str | None = None,
    prob: float = 0.5,
    rotate_degrees: float = 10.0,
    scale: float = 0.1,
    flip: bool = True,
    spatial_size: Sequence[int] | None = None,
    keep_extent: bool = False,
    low_resolution: float = 0.0,
) -> list[Step]:
    """Random augmentation in raw intensity units (before normalisation).

    Spatial transforms act on all image keys and the label together (one random draw); intensity
    transforms draw independently per modality, as bias and contrast differ between sequences.

    Args:
        image_keys: image keys.
        label_key: optional lesion mask key (nearest interpolation).
        prob: probability of each transform.
        rotate_degrees: maximum rotation about each axis.
        scale: maximum relative scaling (0.1 = +-10%).
        flip: also flip left-right (axis 0 in RAS).
        spatial_size: the inputs' spatial size when every item has the same one (whole-volume ROI):
            ``RandAffined`` then builds its identity grid once instead of per item (about 5% of its time).
            ``None``: any size.
        keep_extent: keep each image's brain (its non-zero voxels) the size it was through the random affine:
            the image's outline is warped by the same draw with nearest-neighbour interpolation, and the
            bilinear-warped image is set to 0 outside it. Without it, a rotation blends the brain's edge with
            the zero background into a shell of dim non-zero voxels (7% more "brain" on the demo cohort's
            2 mm scans), which features measured on the non-zero voxels (``TissueFeatures``: brain share, darkest
            class share) read as brain and CSF in training but never see in evaluation.
        low_resolution: probability of simulating a coarser acquisition (``RandSimulateLowResolutiond``, nnU-Net's
            augmentation: down to 0.5-1x the resolution and back, per image), so that scans acquired at
            larger voxels than the training cohort's look familiar; 0: none.
    """
    image_keys = list(image_keys)
    extent_keys = [f"{key}_extent" for key in image_keys] if keep_extent else []
    all_keys = image_keys + ([label_key] if label_key else [])
    modes = ["bilinear"] * len(image_keys) + (["nearest"] if label_key else [])
    angle = float(np.deg2rad(rotate_degrees))
    affine = dict(
        keys=all_keys + extent_keys,
        prob=prob,
        rotate_range=(angle, angle, angle),
        scale_range=(scale, scale, scale),
        mode=modes + ["nearest"] * len(extent_keys),
        padding_mode="zeros",
        spatial_size=spatial_size,
        cache_grid=spatial_size is not None,
    )
    chain = [Step(RandAffined, affine)]
    if keep_extent:
        chain.insert(0, Step(CopyItemsd, dict(keys=image_keys, names=extent_keys)))
        chain += [Step(MaskIntensityd, dict(keys=k, mask_key=m, select_fn=is_nonzero)) for k, m in zip(image_keys, extent_keys)]
        chain.append(Step(DeleteItemsd, dict(keys=extent_keys)))
    if low_resolution > 0:
        chain.append(Step(RandSimulateLowResolutiond, dict(keys=image_keys, prob=low_resolution, zoom_range=(0.5, 1.0))))
    if flip:
        chain.append(Step(RandFlipd, dict(keys=all_keys, prob=prob, spatial_axis=0)))
    for key in image_keys:
        chain.append(Step(RandBiasFieldd, dict(keys=key, prob=prob, coeff_range=(0.0, 0.2))))
        chain.append(Step(RandAdjustContrastd, dict(keys=key, prob=prob, gamma=(0.7, 1.5))))
    return chain


def augmentation(*args: Any, **kwargs: Any) -> list[Transform]:
    """The transforms of :func:`augmentation_steps` (same arguments)."""
    return build(augmentation_steps(*args, **kwargs))


def paired_steps(
    stage: str = "train",
    image_keys: Sequence[str] = DEFAULT_MODALITIES,
    label_key: str | None = None,
    target_key: str | None = None,
    demographics: bool = False,
    spacing: Sequence[float] | float = 2.0,
    roi_size: Sequence[int] | None = (80, 96, 80),
    patch_size: Sequence[int] | None = None,
    patches_per_volume: int = 4,
    divisible_by: int | None = None,
    augment: bool = True,
    augment_prob: float = 0.5,
    augment_scale: float = 0.1,
    augment_keep_extent: bool = False,
    augment_low_resolution: float = 0.0,
    noise_std: float = 0.05,
    concat_key: str | None = None,
    cache_dtype: str | torch.dtype | None = None,
    concat_keys: Sequence[str] | None = None,
    bias_correction: bool = False,
) -> list[Step]:
    """The steps of a bundle stage's dictionary transform chain (:func:`paired_transforms` builds them).

    Args:
        stage: ``"train"``, ``"eval"`` or ``"infer"`` (see module docstring).
        image_keys: image keys, reference (T1) first; each becomes a ``(1, *spatial)`` float tensor.
        label_key: lesion mask key (voxel labels on the T1 grid), or ``None``; ignored for ``"infer"``.
        target_key: scalar target key (``"edss"``, ``"age"`` or ``"sex"``) made a ``(1,)`` tensor, or
            ``None``; ``"sex"`` is encoded 1 = male; ignored for ``"infer"``.
        demographics: add ``"demographics"``, shape ``(2,)``: age in years and sex (1 = male).
        spacing: target voxel size in mm.
        roi_size: whole-volume size after cropping to the brain; ``None`` for patch-based stages.
        patch_size: with a ``label_key`` and ``stage="train"``, sample ``patches_per_volume`` patches of
            this size, centred on lesion and background voxels alike (``RandCropByPosNegLabeld``).
        patches_per_volume: patches per volume and epoch.
        divisible_by: with ``roi_size=None``, pad whole volumes to a multiple of this.
        augment: random augmentation at ``stage="train"``.
        augment_prob: probability of each random transform.
        augment_scale: maximum relative scaling of the random affine (0.1 = +-10% per axis; 0: none). For a
            task whose signal is the brain's physical size (sex; brain age through atrophy), +-10% per axis is
            as large as the signal itself: men's heads are about 6% larger per dimension than women's.
        augment_keep_extent: keep each brain's extent through the random affine (``keep_extent`` of
            :func:`augmentation_steps`): for networks that measure the non-zero voxels (``tissue_features``).
        augment_low_resolution: probability of a simulated coarser acquisition (``low_resolution`` of
            :func:`augmentation_steps`).
        noise_std: std of the Gaussian noise added after normalisation (``stage="train"``).
        concat_key: also stack the image keys as channels of one tensor under this key, shape
            ``(len(image_keys), *spatial)`` (the input of a multi-channel network such as
            ``BrainSegmenter3D(in_channels=2)``); the per-modality keys stay, so ``Invertd`` can still use
            ``orig_keys="t1"``. ``None``: no stacked key.
        concat_keys: the image keys stacked under ``concat_key`` (default: all ``image_keys``), e.g. the EDSS
            network's second stream ``["t2", "flair"]``.
        cache_dtype: store the cached (deterministic) images in this dtype, e.g. ``"float16"`` for half
            the cache memory, and cast back to float32 right after the cache; ``None``: float32 throughout.
            Stages ``"train"`` and ``"eval"`` only (``"infer"`` is never cached).
        bias_correction: N4 bias-field correction of every image (``bias_correction`` of
            :func:`preprocessing_steps`); a bundle's stages must all agree.

    Raises:
        ValueError: an unknown stage.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    image_keys = list(image_keys)
    if stage == "infer":
        label_key, target_key = None, None
    patch_based = stage == "train" and label_key is not None and patch_size is not None
    roi = None if patch_based else roi_size
    # training reads no metadata: plain tensors are cached, and stripped again after augmentation (MONAI's
    # spatial transforms re-wrap them); together about 15% of a cached epoch and 3% of the first
    chain = preprocessing_steps(
        image_keys, label_key, spacing, roi, divisible_by, track_meta=stage != "train", bias_correction=bias_correction
    )
    if patch_based:
        chain.append(Step(SpatialPadd, dict(keys=image_keys + [label_key], spatial_size=patch_size)))
    if cache_dtype is not None and stage != "infer":
        cached_keys = image_keys + ([label_key] if label_key else [])
        chain.append(Step(EnsureTyped, dict(keys=cached_keys, dtype=_torch_dtype(cache_dtype))))
        chain.append(Step(AfterCacheFloat32, dict(keys=cached_keys)))
    if stage == "train" and augment:
        chain += augmentation_steps(
            image_keys, label_key, augment_prob, scale=augment_scale, spatial_size=roi, keep_extent=augment_keep_extent,
            low_resolution=augment_low_resolution,
        )
    chain.append(Step(ZScoreNonzerod, dict(keys=image_keys)))
    if patch_based:
        # a lesion-free session gives background patches only; MONAI warns about it at every draw
        warnings.filterwarnings("ignore", message="Num foregrounds 0, Num backgrounds", category=UserWarning)
        crop = dict(
            keys=image_keys + [label_key],
            label_key=label_key,
            spatial_size=patch_size,
            pos=1.0,
            neg=1.0,
            num_samples=patches_per_volume,
            image_key=image_keys[0],
            image_threshold=0.0,
        )
        chain.append(Step(RandCropByPosNegLabeld, crop))
    if stage == "train" and augment and noise_std > 0:
        chain += [Step(RandGaussianNoise32d, dict(keys=key, prob=augment_prob, std=noise_std)) for key in image_keys]
    if concat_key is not None:
        chain.append(Step(ConcatItemsd, dict(keys=list(concat_keys or image_keys), name=concat_key, dim=0)))
    if stage == "train":
        tensor_keys = image_keys + ([label_key] if label_key else []) + ([concat_key] if concat_key else [])
        chain.append(Step(EnsureTyped, dict(keys=tensor_keys, track_meta=False)))
    if demographics:
        chain.append(Step(EncodeDemographicsd))
    if target_key is not None:
        chain.append(Step(_ScalarTargetd, dict(keys=target_key, encode_sex=target_key == "sex")))
    return chain


def voxel_volume_ml(spacing: Sequence[float] | float) -> float:
    """The volume in mL of one voxel of ``spacing`` (mm; one number for isotropic voxels).

    Examples:
        >>> voxel_volume_ml([2.0, 2.0, 2.0]), voxel_volume_ml(1.0)
        (0.008, 0.001)
    """
    sides = [float(spacing)] * 3 if isinstance(spacing, (int, float)) else [float(s) for s in spacing]
    if len(sides) != 3 or not all(s > 0 for s in sides):
        raise ValueError(f"spacing must be one number or three, all > 0 (mm), got {spacing}")
    return sides[0] * sides[1] * sides[2] / 1000.0


def paired_transforms(stage: str = "train", **kwargs: Any) -> Compose:
    """The dictionary transform chain of a bundle stage: the steps of :func:`paired_steps`, built.

    Args:
        stage: ``"train"``, ``"eval"`` or ``"infer"`` (see module docstring).
        kwargs: the other arguments of :func:`paired_steps` (image keys, label and target keys, spacing,
            ROI or patch size, augmentation, concatenation, cache dtype).

    Raises:
        ValueError: an unknown stage.

    Examples:
        >>> chain = paired_transforms("eval", target_key="edss", demographics=True)  # doctest: +SKIP
        >>> item = chain({"t1": "T1.nii.gz", "t2": "T2.nii.gz", "age": 40, "sex": "F", "edss": 3.0})
        >>> item["t1"].shape, item["demographics"].shape, item["edss"].shape
        (torch.Size([1, 80, 96, 80]), torch.Size([2]), torch.Size([1]))
    """
    return Compose(build(paired_steps(stage, **kwargs)))
