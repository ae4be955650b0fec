"""N4 bias-field correction (SimpleITK), a step of the deterministic transform chain.

A receive coil's smooth intensity inhomogeneity (the bias field) makes the same tissue brighter on one
side of the head than on the other. Features measured on intensities (tissue classes, histograms) and
networks trained on one scanner's field then read another scanner's field as anatomy. N4 (Tustison et
al., IEEE TMI 2010; SimpleITK's ``N4BiasFieldCorrectionImageFilter``, the implementation ANTs uses)
fits a smooth multiplicative field to the brain's intensities and divides it out: the standard first step
of MRI pipelines (nnU-Net expects it done, FreeSurfer and FAST do their own).

Here it runs on the skull-stripped images after they are resampled and cropped to the brain, so it fits
the brain voxels (the non-zero ones) of a small grid: about 1-2 s per 2 mm image on one core, once per
image, cached with the rest of the deterministic chain.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["n4_log_bias_field", "N4BiasCorrectiond"]


def n4_log_bias_field(
    image: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    grid_mm: float = 6.0,
    iterations: Sequence[int] = (50, 50, 50),
) -> np.ndarray:
    """The log of the multiplicative bias field N4 fits to the positive (brain) voxels of ``image``.

    Args:
        image: ``(X, Y, Z)`` skull-stripped intensities; the voxels ``> 0`` are the mask N4 fits.
        spacing: voxel size in mm along ``X, Y, Z``.
        grid_mm: the field is fitted on the image shrunk to about this voxel size (N4's shrink factor): a
            bias field is smooth over centimetres, so a coarse grid loses nothing and is much faster.
        iterations: the maximum iterations of each fitting level (one level per entry; each level doubles
            the B-spline control-point resolution).

    Returns:
        ``(X, Y, Z)`` float32 log field, mean 0 over the mask, so dividing by ``exp`` of it keeps the
        brain's mean log intensity. All zeros when the image has no positive voxel.
    """
    import SimpleITK as sitk

    values = np.asarray(image, dtype=np.float32)
    mask = values > 0
    if not mask.any():
        return np.zeros(values.shape, dtype=np.float32)
    # SimpleITK indexes arrays (z, y, x): hand it the transposed array and reversed spacing
    itk_image = sitk.GetImageFromArray(np.ascontiguousarray(values.T))
    itk_mask = sitk.GetImageFromArray(np.ascontiguousarray(mask.T).astype(np.uint8))
    for item in (itk_image, itk_mask):
        item.SetSpacing([float(s) for s in spacing])
    shrink = max(1, int(round(grid_mm / max(min(float(s) for s in spacing), 1e-6))))
    shrunk = [sitk.Shrink(item, [shrink] * 3) for item in (itk_image, itk_mask)] if shrink > 1 else [itk_image, itk_mask]
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    # one thread: the same field to the last bit (checked), no faster at 2 mm, and runs in DataLoader workers
    # (one per core already) without a second pool of threads per process
    corrector.SetNumberOfThreads(1)
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
    corrector.Execute(*shrunk)
    log_field = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(itk_image)).T.astype(np.float32)
    return log_field - np.float32(log_field[mask].mean())


class N4BiasCorrectiond(MapTransform):
    """Divide each image by the bias field N4 fits to its brain (:func:`n4_log_bias_field`).

    For skull-stripped images (zero background): the field is fitted on the positive voxels and the zero
    background stays 0. Intensity only, so the lesion mask and ``Invertd`` are untouched. The voxel size is
    read from the ``MetaTensor``'s affine (1 mm for a plain tensor).

    Args:
        keys: image keys, each ``(C, X, Y, Z)``; every channel gets its own field.
        grid_mm: see :func:`n4_log_bias_field`.
        iterations: see :func:`n4_log_bias_field`.
        allow_missing_keys: skip keys absent from the item.
    """

    def __init__(
        self,
        keys: KeysCollection,
        grid_mm: float = 6.0,
        iterations: Sequence[int] = (50, 50, 50),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.grid_mm = grid_mm
        self.iterations = tuple(iterations)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            spacing = [float(s) for s in image.pixdim] if isinstance(image, MetaTensor) else [1.0] * (image.ndim - 1)
            values = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
            try:
                fields = [n4_log_bias_field(c.numpy(), spacing, self.grid_mm, self.iterations) for c in values.detach().cpu().float()]
            except RuntimeError as error:  # SimpleITK's errors are multi-line ITK exception reports
                source = image.meta.get("filename_or_obj", key) if isinstance(image, MetaTensor) else key
                reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
                raise ValueError(
                    f"{source}: N4 bias-field correction failed ({reason}); check the image, or set bias_correction false"
                ) from None
            field = torch.from_numpy(np.exp(-np.stack(fields))).to(dtype=values.dtype, device=values.device)
            d[key] = image * field  # a MetaTensor keeps its affine and applied operations
        return d
