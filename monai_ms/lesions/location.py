"""Location class of each lesion (McDonald 2017 topography) from the MNI ICBM152 2009c template and CerebrA.

The template T1 (skull-stripped with its brain mask) is registered *affinely* to the scan's T1
(:func:`monai_ms.lesions.registration.affine_register`, Mattes mutual information); the CerebrA labels are
carried onto the scan grid (nearest neighbour) and give three masks: the ventricles (lateral, inferior
lateral and third ventricle), the cerebral cortex (the 62 cortical CerebrA parcels) and the infratentorial
brain (brainstem, cerebellum, vermis, fourth ventricle). Each lesion (3D connected component) then gets:

- ``ventricle_distance_mm``: smallest distance from a lesion voxel centre to a ventricle voxel centre
  (0 when the lesion overlaps the ventricle mask);
- ``cortex_distance_mm``: the same to the cortex mask;
- ``infratentorial_fraction``: the share of its voxels in the infratentorial mask;

and one class, by the first rule that holds:

1. ``infratentorial``: at least half of its voxels are infratentorial;
2. ``periventricular``: ``ventricle_distance_mm <= PERIVENTRICULAR_MM`` (3 mm: touching the ventricle
   with at most about one voxel of white matter between);
3. ``juxtacortical``: ``cortex_distance_mm <= JUXTACORTICAL_MM`` (3 mm; juxtacortical and cortical
   lesions are one class, as in McDonald 2017);
4. ``deep_white_matter``: the rest.

Limits: an affine registration does not follow the subject's own ventricle shape (enlarged ventricles of an
atrophied brain are larger than the atlas's) nor the folding of the cortex, so lesions within a few mm of
either boundary are the ones most often misclassified; the generator's truth
(:mod:`monai_ms.data.synthetic`, ``lesion_truth.csv``) applies the same rules in template space.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "LOCATION_CLASSES",
    "LOCATION_COLUMNS",
    "PERIVENTRICULAR_MM",
    "JUXTACORTICAL_MM",
    "INFRATENTORIAL_LABELS",
    "AtlasMaps",
    "classify_location",
    "template_maps",
    "atlas_on_scan",
    "lesion_locations",
    "locate_lesions",
    "template_lesion_location",
]

logger = logging.getLogger(__name__)

LOCATION_CLASSES = ("infratentorial", "periventricular", "juxtacortical", "deep_white_matter")
LOCATION_COLUMNS = ["location", "ventricle_distance_mm", "cortex_distance_mm", "infratentorial_fraction"]
PERIVENTRICULAR_MM = 3.0
JUXTACORTICAL_MM = 3.0
INFRATENTORIAL_FRACTION = 0.5
# CerebrA (RH, LH) values: brainstem, cerebellum GM and WM, vermis I-V, VI-VII, VIII-X, fourth ventricle
INFRATENTORIAL_LABELS = (11, 62, 46, 97, 39, 90, 50, 101, 2, 53, 20, 71, 37, 88)
_PERIVENTRICULAR_PARTS = ("lateral", "inferior_lateral", "third")


@dataclass(frozen=True)
class AtlasMaps:
    """Ventricle, cortex and infratentorial masks on one grid (bool arrays of one shape).

    Attributes:
        ventricles: lateral, inferior lateral and third ventricles.
        cortex: cerebral cortex (CerebrA cortical parcels).
        infratentorial: brainstem, cerebellum, vermis and fourth ventricle.
        affine: voxel -> world (RAS mm) matrix of the grid, ``(4, 4)``.
    """

    ventricles: np.ndarray
    cortex: np.ndarray
    infratentorial: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm, ``(3,)``."""
        return np.sqrt((np.asarray(self.affine)[:3, :3] ** 2).sum(axis=0))

    @functools.cached_property
    def distances(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ventricle_mm, cortex_mm)``: Euclidean distance of every voxel to each mask (float32)."""
        from scipy import ndimage

        spacing = self.spacing
        out = []
        for mask in (self.ventricles, self.cortex):
            if mask.any():
                out.append(ndimage.distance_transform_edt(~mask, sampling=spacing).astype(np.float32))
            else:
                out.append(np.full(mask.shape, np.inf, dtype=np.float32))
        return out[0], out[1]


def classify_location(ventricle_distance_mm: float, cortex_distance_mm: float, infratentorial_fraction: float) -> str:
    """The location class of one lesion (module docstring: the rules in order).

    Args:
        ventricle_distance_mm: smallest lesion-to-ventricle distance.
        cortex_distance_mm: smallest lesion-to-cortex distance.
        infratentorial_fraction: share of the lesion's voxels in the infratentorial brain, in [0, 1].

    Returns:
        one of :data:`LOCATION_CLASSES`.

    Examples:
        >>> classify_location(1.0, 10.0, 0.0)
        'periventricular'
        >>> classify_location(12.0, 9.0, 0.0)
        'deep_white_matter'
    """
    if infratentorial_fraction >= INFRATENTORIAL_FRACTION:
        return "infratentorial"
    if ventricle_distance_mm <= PERIVENTRICULAR_MM:
        return "periventricular"
    if cortex_distance_mm <= JUXTACORTICAL_MM:
        return "juxtacortical"
    return "deep_white_matter"


def _cortical_labels() -> np.ndarray:
    from monai_ms.data.templates import template_files

    table = pd.read_csv(template_files()["cerebra_labels"])
    cortical = table[table["Mindboggle ID"] >= 2000]
    return np.concatenate([cortical["RH Label"].to_numpy(), cortical["LH Labels"].to_numpy()]).astype(int)


@functools.lru_cache(maxsize=1)
def _template_regions() -> np.ndarray:
    """One uint8 map on the template grid: 1 ventricles, 2 cortex, 3 infratentorial, 0 elsewhere."""
    from monai_ms.data.templates import VENTRICLE_LABELS, load_template

    template = load_template()
    labels = np.asarray(template.labels)
    ventricle_values = [v for part in _PERIVENTRICULAR_PARTS for v in VENTRICLE_LABELS[part]]
    regions = np.zeros(labels.shape, dtype=np.uint8)
    regions[np.isin(labels, INFRATENTORIAL_LABELS)] = 3
    # cortex: the cortical parcels where the template is grey matter (the parcels reach into the white matter)
    regions[np.isin(labels, _cortical_labels()) & (np.asarray(template.gm) >= 0.5)] = 2
    regions[np.isin(labels, ventricle_values)] = 1
    return regions


def _masks(regions: np.ndarray, affine: np.ndarray) -> AtlasMaps:
    return AtlasMaps(regions == 1, regions == 2, regions == 3, np.asarray(affine, dtype=np.float64))


@functools.lru_cache(maxsize=1)
def template_maps() -> AtlasMaps:
    """The three masks on the template's own 1 mm grid (cached; what the generator's truth uses).

    The cortex is the CerebrA cortical parcels where the template's grey-matter probability is at least
    0.5; the ventricles and the infratentorial brain are CerebrA labels.

    Returns:
        :class:`AtlasMaps` of shape ``(193, 229, 193)``.

    Examples:
        >>> template_maps().ventricles.shape  # doctest: +SKIP
        (193, 229, 193)
    """
    from monai_ms.data.templates import load_template

    return _masks(_template_regions(), np.asarray(load_template().affine))


@functools.lru_cache(maxsize=1)
def _registration_template() -> tuple[np.ndarray, np.ndarray]:
    """The skull-stripped template T1 averaged over 2x2x2 blocks (2 mm): ``(array, affine)``.

    Registering the 1 mm template costs ~8x more for no measurable gain at the scans' 1-2 mm.
    """
    from monai_ms.data.templates import load_template

    template = load_template()
    brain = np.asarray(template.t1) * (np.asarray(template.brain_mask) > 0.5)
    even = tuple(slice(0, n - n % 2) for n in brain.shape)
    blocks = brain[even].reshape(brain.shape[0] // 2, 2, brain.shape[1] // 2, 2, brain.shape[2] // 2, 2)
    affine = np.asarray(template.affine, dtype=np.float64).copy()
    affine[:3, 3] += affine[:3, :3] @ np.full(3, 0.5)  # centre of the first block
    affine[:3, :3] *= 2.0
    return blocks.mean(axis=(1, 3, 5)).astype(np.float32), affine


def atlas_on_scan(t1: Any, seed: int = 0) -> tuple[AtlasMaps, Any]:
    """Register the template affinely to a scan's T1 and carry the CerebrA masks onto the T1 grid.

    Args:
        t1: the scan's T1 (``nibabel`` image, 3D).
        seed: seed of the registration's random metric sampling (results are reproducible).

    Returns:
        ``(maps, registration)``: :class:`AtlasMaps` on the T1 grid and the
        :class:`~monai_ms.lesions.registration.Registration` (template -> scan).

    Raises:
        ValueError: the T1 is not 3D or is empty.
    """
    from monai_ms.data.templates import load_template
    from monai_ms.lesions.registration import affine_register, resample_labels

    template = load_template()
    registration = affine_register(t1, _registration_template(), seed=seed)
    regions = resample_labels(_template_regions(), np.asarray(template.affine), t1, registration.matrix)
    return _masks(regions, t1.affine), registration


def lesion_locations(labels: np.ndarray, count: int, maps: AtlasMaps) -> pd.DataFrame:
    """Distances and class of each labelled lesion on the grid of ``maps``.

    Args:
        labels: int lesion labels ``(D, H, W)``, lesions ``1..count`` (e.g. from
            :func:`monai_ms.engines.metrics.segmentation.label_lesions`).
        count: number of lesions.
        maps: :class:`AtlasMaps` on the same grid.

    Returns:
        one row per lesion, in label order: ``lesion_label`` and :data:`LOCATION_COLUMNS`.

    Raises:
        ValueError: ``labels`` and ``maps`` have different shapes.

    Examples:
        >>> maps = AtlasMaps(*(np.zeros((6, 6, 6), bool),) * 3, np.eye(4))
        >>> labels = np.zeros((6, 6, 6), int); labels[2, 2, 2] = 1
        >>> lesion_locations(labels, 1, maps)["location"].tolist()
        ['deep_white_matter']
    """
    labels = np.asarray(labels)
    if labels.shape != maps.ventricles.shape:
        raise ValueError(f"lesion labels of shape {labels.shape} are not on the atlas grid {maps.ventricles.shape}")
    columns = ["lesion_label", *LOCATION_COLUMNS]
    if count == 0:
        return pd.DataFrame(columns=columns)
    ventricle_mm, cortex_mm = maps.distances
    where = labels > 0
    ids = labels[where]
    ventricle = np.full(count + 1, np.inf)
    cortex = np.full(count + 1, np.inf)
    np.minimum.at(ventricle, ids, ventricle_mm[where])
    np.minimum.at(cortex, ids, cortex_mm[where])
    voxels = np.bincount(ids, minlength=count + 1).astype(float)
    infra = np.bincount(ids, weights=maps.infratentorial[where].astype(float), minlength=count + 1)
    infra = np.divide(infra, voxels, out=np.zeros_like(infra), where=voxels > 0)
    rows = [
        {
            "lesion_label": i,
            "location": classify_location(ventricle[i], cortex[i], infra[i]),
            "ventricle_distance_mm": round(float(ventricle[i]), 2),
            "cortex_distance_mm": round(float(cortex[i]), 2),
            "infratentorial_fraction": round(float(infra[i]), 3),
        }
        for i in range(1, count + 1)
    ]
    return pd.DataFrame(rows, columns=columns)


def locate_lesions(
    mask: Any, t1: Any, maps: AtlasMaps | None = None, session: str = "", **table_kwargs: Any
) -> pd.DataFrame:
    """``lesion_table`` of a mask with the location columns (registers the atlas unless ``maps`` is given).

    Args:
        mask: binary lesion mask on the T1 grid (array ``(D, H, W)`` or ``nibabel`` image).
        t1: the scan's T1 (``nibabel`` image).
        maps: atlas masks already on the T1 grid (skips the registration).
        session: written in the ``session`` column.
        table_kwargs: ``min_volume_mm3`` / ``connectivity`` of :func:`~monai_ms.engines.metrics.segmentation.lesion_table`.

    Returns:
        the lesion table with ``location, ventricle_distance_mm, cortex_distance_mm, infratentorial_fraction``.

    Examples:
        >>> table = locate_lesions(mask_image, t1_image, session="sub-01-01")  # doctest: +SKIP
        >>> table["location"].value_counts()  # doctest: +SKIP
    """
    from monai_ms.engines.metrics.segmentation import lesion_table

    data = np.asanyarray(mask.dataobj) if hasattr(mask, "dataobj") else np.asarray(mask)
    if maps is None:
        maps, _ = atlas_on_scan(t1)
    return lesion_table(data, np.asarray(t1.affine), session, location=maps, **table_kwargs)


def template_lesion_location(fraction_box: np.ndarray, box: Sequence[slice], scale: float = 1.0) -> dict[str, Any]:
    """Location of one lesion drawn in template space (the generator's truth).

    Args:
        fraction_box: lesion fraction in its bounding box of the template grid (voxels ``>= 0.5`` are lesion).
        box: the box (three slices of the template grid).
        scale: subject head scale; distances are reported in subject mm (template mm times ``scale``).

    Returns:
        ``{"location", "ventricle_distance_mm", "cortex_distance_mm", "infratentorial_fraction"}``;
        a lesion with no voxel at 0.5 uses its voxel of largest fraction.
    """
    maps = template_maps()
    inside = fraction_box >= 0.5
    if not inside.any():
        inside = fraction_box >= fraction_box.max()
    ventricle_mm, cortex_mm = maps.distances
    box = tuple(box)
    ventricle = float(ventricle_mm[box][inside].min()) * scale
    cortex = float(cortex_mm[box][inside].min()) * scale
    infra = float(maps.infratentorial[box][inside].mean())
    return {
        "location": classify_location(ventricle, cortex, infra),
        "ventricle_distance_mm": round(ventricle, 2),
        "cortex_distance_mm": round(cortex, 2),
        "infratentorial_fraction": round(infra, 3),
    }
