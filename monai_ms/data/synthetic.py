"""A synthetic multiple-sclerosis cohort built by deforming the real MNI ICBM152 2009c template.

Each subject is the template warped into a new head (size, smooth nonlinear shape, pose), aged and
diseased (enlarged ventricles, thinner cortex, white-matter lesions), and imaged twice per session: a T1
on an isotropic RAS grid and a T2 on a different grid (thicker slices, LPS orientation, another field of
view), both sampled from the same head through world coordinates, with bias fields, Rician noise and
scanner-dependent intensity scales. EDSS comes from a documented generative model driven mostly by
lesion load and atrophy. Every number of the model is a field of :class:`SynthSettings` (defaults: the
reference profile; ``SHIFTS`` model other scanners); they are listed in ``docs/synthetic_cohort.md``.

Everything is deterministic from the seed: subject ``i`` draws from ``numpy.random.SeedSequence((seed,
i))``, so a subject does not change when the cohort grows, and the number of worker processes does not
change a single voxel.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_ms.data.synthetic_settings import REFERENCE_AGE, SHIFTS, LesionSettings, SynthSettings
from monai_ms.data.templates import Template, load_template, mni_copying_text, template_files
from monai_ms.io import save_figure, save_nifti, write_csv, write_json, write_text

__all__ = [
    "LAYOUTS",
    "METADATA_COLUMNS",
    "GROUND_TRUTH_COLUMNS",
    "LESION_TRUTH_COLUMNS",
    "TISSUE_LABELS",
    "CohortSummary",
    "SynthSettings",
    "SHIFTS",
    "generate_cohort",
    "sample_latents",
    "edss_model",
]

logger = logging.getLogger(__name__)

LAYOUTS = ("seed", "bids")
SYNTH_MODALITIES = ("t1", "t2", "flair")  # what the generator can write; T1 and T2 are always rendered
METADATA_COLUMNS = [
    "Patient_ID",
    "MRI_ID",
    "MR_System",
    "Number_of_Lesions",
    "Scan_Date",
    "Sex",
    "Date_of_Birth",
    "EDSS",
    "Age_at_Scan",
]
GROUND_TRUTH_COLUMNS = [
    "MRI_ID",
    "Patient_ID",
    "participant_id",
    "session_id",
    "session",
    "sex",
    "age",
    "scanner",
    "disease",
    "head_scale",
    "atrophy",
    "image_atrophy",
    "ventricle_expansion_mm",
    "cortical_thinning",
    "lesion_load_ml",
    "lesion_volume_ml",
    "lesion_mask_volume_ml",
    "number_of_lesions",
    "lesions_generated",
    "ventricle_volume_ml",
    "brain_volume_ml",
    "intracranial_volume_ml",
    "brain_parenchymal_fraction",
    "edss_continuous",
    "edss",
    "t1_noise_fraction",
    "t2_noise_fraction",
]
LESION_TRUTH_COLUMNS = [
    "MRI_ID",
    "Patient_ID",
    "session",
    "lesion_id",
    "status",
    "volume_ratio",
    "volume_ml",
    "mask_voxels",
    "mask_volume_ml",
    "centre_x_mm",
    "centre_y_mm",
    "centre_z_mm",
    "baseline_x_mm",
    "baseline_y_mm",
    "baseline_z_mm",
    "periventricular_site",
    "location",
    "ventricle_distance_mm",
    "cortex_distance_mm",
    "infratentorial_fraction",
]
TISSUE_LABELS = {0: "background", 1: "CSF", 2: "grey matter", 3: "white matter", 4: "lesion"}
COHORT_MARKER = "cohort.json"
LICENCE_NAME = "LICENSE_MNI_ICBM152.txt"

# ---------------------------------------------------------------------------------------------------
# bumped whenever a given seed gives other images or labels, so cached demo cohorts are not reused
GENERATOR_VERSION = 2

# Every number of the generative model lives in SynthSettings (monai_ms/data/synthetic_settings.py, documented
# field by field there and in docs/synthetic_cohort.md); SynthSettings() is the reference profile.
SUPPORT_MARGIN_MM = 12.0  # > largest displacement, so voxels outside it are skipped safely


# ---------------------------------------------------------------------------------------------------
# Template-derived maps, computed once per process
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Anatomy:
    template: Template
    inverse_affine: np.ndarray  # world -> template voxel
    support: np.ndarray  # uint8, brain mask dilated by SUPPORT_MARGIN_MM
    support_box: tuple[tuple[float, float], ...]  # its bounding box, template voxels (per axis lo, hi)
    cortex_proximity: np.ndarray  # float32, exp(-distance to sulcal CSF / atrophy.cortex_depth_mm)
    flow: np.ndarray  # (3, ...) float32 on a 2 mm grid: ventricle-ward unit field
    coarse_index: np.ndarray  # flat indices of the support on the 2 mm grid (where warps are computed)
    coarse_points: np.ndarray  # (3, m) float64 template voxel coordinates of those points
    coarse_flowing: np.ndarray  # (m,) bool: the ventricle flow is not negligible there
    site_index: np.ndarray  # flat template indices of possible lesion centres
    site_cdf: np.ndarray
    site_ventricle_mm: np.ndarray
    site_radial: np.ndarray  # (n, 3) unit vectors pointing away from the ventricles
    reference: dict[str, dict[str, float]]  # modality -> tissue -> mean intensity
    brain_centre: np.ndarray  # world mm


_INFRATENTORIAL_LABELS = (11, 62, 46, 97, 39, 90, 50, 101, 2, 53, 20, 71)


def _bounding_box(mask: np.ndarray) -> list[tuple[int, int]]:
    """First and last index of the non-zero voxels along each axis."""
    box = []
    for axis in range(mask.ndim):
        along = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append((int(along[0]), int(along[-1])))
    return box


def _anatomy(settings: SynthSettings | None = None) -> _Anatomy:
    """The template-derived maps for ``settings`` (computed once per process and per map-shaping settings)."""
    return _template_maps(*(settings or _DEFAULT).template_map_key())


_DEFAULT = SynthSettings()


@functools.lru_cache(maxsize=2)
def _template_maps(
    cortex_depth_mm: float,
    flow_sigma_mm: float,
    site_min_wm: float,
    site_floor: float,
    site_decay_mm: float,
    infratentorial_weight: float,
) -> _Anatomy:
    from scipy import ndimage

    template = load_template()
    mask = template.brain_mask > 0.5
    # distance maps only where they matter: the brain's bounding box plus a margin
    margin = int(SUPPORT_MARGIN_MM) + 4
    brain_box = _bounding_box(mask)
    lo = [max(first - margin, 0) for first, _ in brain_box]
    hi = [min(last + margin + 1, n) for (_, last), n in zip(brain_box, mask.shape)]
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    mask_c = mask[crop]
    ventricles_c = template.ventricles[crop]

    support = np.zeros(mask.shape, dtype=np.uint8)
    support[crop] = ndimage.distance_transform_edt(~mask_c) <= SUPPORT_MARGIN_MM

    sulcal = (~mask_c) | ((template.csf[crop] > 0.5) & ~ventricles_c)
    proximity = np.zeros(mask.shape, dtype=np.float32)
    proximity[crop] = np.exp(-ndimage.distance_transform_edt(~sulcal) / cortex_depth_mm)

    ventricle_mm = ndimage.distance_transform_edt(~ventricles_c).astype(np.float32)

    smooth = ndimage.gaussian_filter(template.ventricles.astype(np.float32), flow_sigma_mm)[::2, ::2, ::2]
    flow = np.stack(np.gradient(smooth, 2.0)).astype(np.float32)
    flow_norm = np.sqrt((flow**2).sum(axis=0))
    flow /= flow_norm.max()
    # the warps are computed once per session on the 2 mm grid (inside the support) and interpolated
    coarse_support = support[::2, ::2, ::2] > 0
    coarse_index = np.flatnonzero(coarse_support)
    coarse_points = 2.0 * np.stack(np.unravel_index(coarse_index, coarse_support.shape)).astype(np.float64)
    coarse_flowing = flow_norm.ravel()[coarse_index] > 1e-3 * flow_norm.max()

    wm = template.wm
    labels = template.labels
    candidates = (wm >= site_min_wm) & mask
    site_index = np.flatnonzero(candidates)
    site_ijk = np.stack(np.unravel_index(site_index, mask.shape))
    local = site_ijk - np.asarray(lo)[:, None]
    site_vent = ventricle_mm[tuple(local)]
    weight = wm.ravel()[site_index] * (site_floor + np.exp(-site_vent / site_decay_mm))
    weight *= np.where(np.isin(labels.ravel()[site_index], _INFRATENTORIAL_LABELS), infratentorial_weight, 1.0)
    cdf = np.cumsum(weight, dtype=np.float64)
    cdf /= cdf[-1]
    radial = np.zeros((3, site_index.size), dtype=np.float32)
    for axis in range(3):
        step = np.zeros((3, 1), dtype=np.int64)
        step[axis] = 1
        upper = np.minimum(local + step, np.asarray(ventricle_mm.shape)[:, None] - 1)
        lower = np.maximum(local - step, 0)
        radial[axis] = ventricle_mm[tuple(upper)] - ventricle_mm[tuple(lower)]
    radial /= np.maximum(np.linalg.norm(radial, axis=0), 1e-6)

    pure = {
        "wm": (template.wm > 0.95) & mask,
        "gm": (template.gm > 0.9) & mask,
        "csf": template.ventricles & (template.csf > 0.95),
    }
    reference = {
        modality: {tissue: float(getattr(template, modality)[sel].mean()) for tissue, sel in pure.items()}
        for modality in ("t1", "t2")
    }
    centre_voxel = np.array([(first + last) / 2.0 for first, last in brain_box])
    brain_centre = template.affine[:3, :3] @ centre_voxel + template.affine[:3, 3]
    logger.debug("template-derived maps ready: %d lesion sites", site_index.size)
    return _Anatomy(
        template=template,
        inverse_affine=np.linalg.inv(template.affine),
        support=support,
        support_box=tuple((float(first), float(last)) for first, last in _bounding_box(support > 0)),
        cortex_proximity=proximity,
        flow=flow,
        coarse_index=coarse_index,
        coarse_points=coarse_points,
        coarse_flowing=coarse_flowing,
        site_index=site_index,
        site_cdf=cdf,
        site_ventricle_mm=site_vent.astype(np.float32),
        site_radial=radial.T.copy(),
        reference=reference,
        brain_centre=brain_centre,
    )


# ---------------------------------------------------------------------------------------------------
# Latent plan of a subject (no images): demographics, disease, sessions, lesions, EDSS
# ---------------------------------------------------------------------------------------------------
@dataclass
class _Lesion:
    centre: np.ndarray  # template voxel (= mm) coordinates
    axes: np.ndarray  # semi-axes, mm
    rotation: np.ndarray  # (3, 3), columns are the axis directions
    roughness: float
    border_mm: float
    t1_contrast: float  # 0 = white-matter intensity, 1 = CSF intensity
    t2_contrast: float
    shape_seed: int
    periventricular: bool

    @property
    def volume_mm3(self) -> float:
        return float(4.0 / 3.0 * math.pi * np.prod(self.axes))


@dataclass
class _Session:
    number: int
    scan_date: datetime.date
    age: float
    scanner: str
    atrophy: float
    lesions: list[_Lesion]
    image_atrophy: float  # disease atrophy plus normal ageing: what the ventricles and cortex show, in [0, 1]
    edss_continuous: float = 0.0
    edss: float = 0.0


@dataclass
class _SubjectPlan:
    index: int
    sex: str
    date_of_birth: datetime.date
    disease: float
    head_scale: float
    lesion_free: bool
    sessions: list[_Session] = field(default_factory=list)


def edss_model(
    lesion_load_ml: float, atrophy: float, age: float, noise: float = 0.0, settings: SynthSettings | None = None
) -> tuple[float, float]:
    """The EDSS of the generative model: continuous score and its value rounded to the EDSS scale.

    ``EDSS = 0.9 + 1.0 ln(1 + lesion mL) + 3.0 atrophy + 0.015 (age - 40) + noise`` with the default
    coefficients (``settings.edss``), then rounded to the nearest 0.5 and clipped to [0, 10].

    Args:
        lesion_load_ml: total white-matter lesion volume of the session in mL (subject space).
        atrophy: latent atrophy in [0, 1] (0: template-like ventricles and cortex).
        age: age at scan in years.
        noise: subject + session noise (drawn by the generator; 0 gives the model's mean).
        settings: generator settings (``None``: the defaults); only ``settings.edss`` is read.

    Returns:
        ``(edss_continuous, edss)``.

    Examples:
        >>> edss_model(0.0, 0.0, 40.0)
        (0.9, 1.0)
    """
    m = (settings or _DEFAULT).edss
    continuous = m.intercept + m.lesion * math.log1p(lesion_load_ml) + m.atrophy * atrophy
    continuous += m.age * (age - REFERENCE_AGE) + noise
    # "+ 0.0" turns a rounded -0.0 into 0.0
    return round(continuous, 4), float(np.clip(np.round(continuous * 2.0) / 2.0, 0.0, 10.0)) + 0.0


def _streams(seed: int, index: int) -> list[np.random.Generator]:
    # separate streams, so e.g. tiny mode (other lesion sizes) keeps each subject's demographics
    children = np.random.SeedSequence((int(seed), int(index))).spawn(3)
    return [np.random.default_rng(child) for child in children]


def _sample_lesion(rng: np.random.Generator, anatomy: _Anatomy, sizes: tuple, config: LesionSettings) -> _Lesion:
    probabilities = np.array([s[0] for s in sizes])
    _, median, log_sd, low, high = sizes[int(rng.choice(len(sizes), p=probabilities / probabilities.sum()))]
    volume = float(np.clip(median * math.exp(log_sd * rng.standard_normal()), low, high))
    site = int(np.searchsorted(anatomy.site_cdf, rng.random()))
    site = min(site, anatomy.site_index.size - 1)
    centre = np.array(np.unravel_index(anatomy.site_index[site], anatomy.template.shape), dtype=np.float64)
    centre += rng.uniform(-0.5, 0.5, 3)
    periventricular = bool(anatomy.site_ventricle_mm[site] <= config.periventricular_mm)
    if periventricular:
        # Dawson's fingers: elongated along the direction away from the ventricle wall
        elongation = rng.uniform(*config.periventricular_elongation)
        ratios = np.array([elongation, elongation**-0.5, elongation**-0.5])
        first = anatomy.site_radial[site].astype(np.float64)
        helper = np.eye(3)[int(np.argmin(np.abs(first)))]
        second = np.cross(first, helper)
        second /= np.linalg.norm(second)
        third = np.cross(first, second)
        angle = rng.uniform(0, 2 * math.pi)
        cos, sin = math.cos(angle), math.sin(angle)
        second, third = cos * second + sin * third, -sin * second + cos * third
        rotation = np.stack([first, second, third], axis=1)
    else:
        ratios = np.exp(rng.normal(0.0, config.axis_log_sd, 3))
        ratios /= np.prod(ratios) ** (1 / 3)
        q, r = np.linalg.qr(rng.standard_normal((3, 3)))
        rotation = q * np.sign(np.diag(r))
    radius = (3.0 * volume / (4.0 * math.pi)) ** (1 / 3)
    t1_contrast = rng.uniform(*config.t1_contrast)
    t2_contrast = config.t2_contrast_intercept + config.t2_contrast_per_t1 * t1_contrast
    t2_contrast = float(np.clip(t2_contrast + rng.normal(0, config.t2_contrast_sd), *config.t2_contrast_range))
    return _Lesion(
        centre=centre,
        axes=radius * ratios,
        rotation=rotation,
        roughness=rng.uniform(*config.roughness),
        border_mm=rng.uniform(*config.border_mm),
        t1_contrast=t1_contrast,
        t2_contrast=t2_contrast,
        shape_seed=int(rng.integers(2**31)),
        periventricular=periventricular,
    )


def _subject_plan(
    seed: int, index: int, tiny: bool, settings: SynthSettings
) -> tuple[_SubjectPlan, np.random.Generator]:
    """Draw one subject's latent plan; returns it and the subject's imaging random stream."""
    anatomy = _anatomy(settings)
    people, body, ageing, disease_model, edss = (
        settings.demographics,
        settings.anatomy,
        settings.atrophy,
        settings.lesions,
        settings.edss,
    )
    demo, lesion_rng, imaging = _streams(seed, index)
    sex = "F" if demo.random() < people.female_fraction else "M"
    age = people.age_range[0] + (people.age_range[1] - people.age_range[0]) * demo.beta(*people.age_beta)
    disease = float(demo.standard_normal())
    head_scale = float(np.clip(demo.normal(body.head_scale_mean(sex), body.head_scale_sd), *body.head_scale_range))
    logit = disease_model.lesion_free_logit_intercept + disease_model.lesion_free_logit_per_disease * disease
    lesion_free = bool(demo.random() < 1.0 / (1.0 + math.exp(-logit)))
    a, b, c, sd = (
        disease_model.load_log_ml_intercept,
        disease_model.load_log_ml_per_disease,
        disease_model.load_log_ml_per_year_of_age,
        disease_model.load_log_ml_sd,
    )
    load_ml = math.exp(a + b * disease + c * (age - REFERENCE_AGE) + sd * demo.standard_normal())
    load_ml = float(np.clip(load_ml, *disease_model.load_range_ml))
    a, b, c, sd = ageing.intercept, ageing.per_disease, ageing.per_year_of_age, ageing.sd
    atrophy = float(np.clip(a + b * disease + c * (age - REFERENCE_AGE) + sd * demo.standard_normal(), 0.0, 1.0))
    first_possible, last_possible = people.scan_dates
    span = (last_possible - first_possible).days
    first_date = first_possible + datetime.timedelta(days=int(demo.integers(span + 1)))
    date_of_birth = first_date - datetime.timedelta(days=int(round(age * 365.25)))
    scanner = "3T" if demo.random() < people.scanner_3t_fraction else "1.5T"
    subject_noise = edss.subject_sd * demo.standard_normal()
    second = demo.random() < people.second_session_fraction
    interval = demo.uniform(*people.interval_years)
    switch_scanner = demo.random() < people.scanner_change_fraction
    session_noise = edss.session_sd * demo.standard_normal(2)

    sizes = disease_model.sizes_tiny if tiny else disease_model.sizes
    cap = disease_model.max_lesions_tiny if tiny else disease_model.max_lesions
    lesions: list[_Lesion] = []
    if not lesion_free:
        total = 0.0
        target_mm3 = load_ml * 1000.0 / head_scale**3
        while total < target_mm3 and len(lesions) < cap:
            lesions.append(_sample_lesion(lesion_rng, anatomy, sizes, disease_model))
            total += lesions[-1].volume_mm3

    plan = _SubjectPlan(index, sex, date_of_birth, disease, head_scale, lesion_free)
    dates = [first_date]
    if second:
        dates.append(first_date + datetime.timedelta(days=int(round(interval * 365.25))))
    for number, scan_date in enumerate(dates, start=1):
        if number == 2:
            years = (dates[1] - dates[0]).days / 365.25
            progression = ageing.rate_per_year + ageing.rate_per_disease * max(disease + 1.0, 0.0)
            atrophy = float(min(1.0, atrophy + years * progression))
            rate = (
                disease_model.new_per_year_lesion_free
                if lesion_free
                else math.exp(
                    disease_model.new_per_year_log_intercept + disease_model.new_per_year_log_per_disease * disease
                )
            )
            grown = []
            for lesion in lesions:
                if lesion_rng.random() < disease_model.growth_probability:
                    factor = lesion_rng.uniform(*disease_model.growth_volume_factor) ** (1 / 3)
                    lesion = _Lesion(**{**lesion.__dict__, "axes": lesion.axes * factor})
                grown.append(lesion)
            new = int(lesion_rng.poisson(rate * years))
            lesions = grown + [_sample_lesion(lesion_rng, anatomy, sizes, disease_model) for _ in range(min(new, cap))]
            if switch_scanner:
                scanner = "1.5T" if scanner == "3T" else "3T"
        session_age = (scan_date - date_of_birth).days / 365.25
        image_atrophy = float(
            min(1.0, atrophy + ageing.ageing_per_year * max(session_age - ageing.ageing_from_age, 0.0))
        )
        session = _Session(number, scan_date, session_age, scanner, atrophy, list(lesions), image_atrophy)
        session.edss_continuous, session.edss = edss_model(
            _lesion_load_ml(session, plan), atrophy, session_age, subject_noise + session_noise[number - 1], settings
        )
        plan.sessions.append(session)
    return plan, imaging


def _lesion_load_ml(session: _Session, plan: _SubjectPlan) -> float:
    return sum(lesion.volume_mm3 for lesion in session.lesions) * plan.head_scale**3 / 1000.0


def _latent_row(plan: _SubjectPlan, session: _Session) -> dict[str, Any]:
    """The session's latent values, as in ``sample_latents`` and ``ground_truth.csv``."""
    return {
        "age": round(session.age, 2),
        "scanner": session.scanner,
        "disease": round(plan.disease, 4),
        "head_scale": round(plan.head_scale, 4),
        "atrophy": round(session.atrophy, 4),
        "image_atrophy": round(session.image_atrophy, 4),
        "lesion_load_ml": round(_lesion_load_ml(session, plan), 4),
        "lesions_generated": len(session.lesions),
        "edss_continuous": session.edss_continuous,
        "edss": session.edss,
    }


def _ids(plan: _SubjectPlan, session: _Session, width: int) -> dict[str, str]:
    number = f"{plan.index + 1:0{width}d}"
    return {
        "Patient_ID": f"P{number}",
        "MRI_ID": f"sub-{number}-{session.number:02d}",
        "participant_id": f"sub-P{number}",
        "session_id": f"ses-{session.number:02d}",
    }


def sample_latents(subjects: int, seed: int = 0, tiny: bool = False, settings: SynthSettings | None = None) -> Any:
    """Draw the latent table of a cohort without making images (fast; for model checks and docs).

    Args:
        subjects: number of subjects.
        seed: random seed (the same seed gives the same subjects as :func:`generate_cohort`).
        tiny: use the lesion sizes of the tiny test cohort.
        settings: generator settings (:class:`SynthSettings`); ``None`` means ``SynthSettings()``.

    Returns:
        ``pandas.DataFrame``, one row per session: ``MRI_ID, Patient_ID, sex, age, scanner, disease,
        head_scale, atrophy, lesion_load_ml, lesions_generated, edss_continuous, edss``.

    Raises:
        ValueError: ``subjects`` is not a positive integer, or ``settings`` is not a :class:`SynthSettings`.

    Examples:
        >>> table = sample_latents(20, seed=1)  # doctest: +SKIP
        >>> set(table["sex"]) <= {"F", "M"}  # doctest: +SKIP
        True
    """
    import pandas as pd

    subjects = _check_positive_int("subjects", subjects)
    seed = _check_seed(seed)
    settings = _check_settings(settings)
    width = max(2, len(str(subjects)))
    rows = []
    for index in range(subjects):
        plan, _ = _subject_plan(seed, index, tiny, settings)
        for session in plan.sessions:
            ids = _ids(plan, session, width)
            rows.append(
                {
                    "MRI_ID": ids["MRI_ID"],
                    "Patient_ID": ids["Patient_ID"],
                    "sex": plan.sex,
                    **_latent_row(plan, session),
                }
            )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------
# Rendering: lesions in template space, images on scanner grids
# ---------------------------------------------------------------------------------------------------
def _sample(volume: np.ndarray, coordinates: np.ndarray, order: int = 1, mode: str = "constant") -> np.ndarray:
    from scipy import ndimage

    return ndimage.map_coordinates(
        volume, coordinates, order=order, mode=mode, cval=0.0, output=np.float32, prefilter=False
    )


def _lesion_fraction(lesion: _Lesion, anatomy: _Anatomy) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """One lesion's fraction in its bounding box of the template grid: ``(box, fraction)``, or None outside."""
    from scipy import ndimage

    shape = anatomy.template.shape
    reach = float(lesion.axes.max()) * (1.0 + 2.0 * lesion.roughness) + 2.0 * lesion.border_mm + 1.0
    lo = np.maximum(np.floor(lesion.centre - reach).astype(int), 0)
    hi = np.minimum(np.ceil(lesion.centre + reach).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grid = np.stack(np.meshgrid(*[np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)], indexing="ij"))
    offset = grid.reshape(3, -1) - lesion.centre[:, None].astype(np.float32)
    # coordinates in the unit-ellipsoid frame: the same shape at any size (growth keeps the shape)
    unit = (lesion.rotation.T.astype(np.float32) @ offset) / lesion.axes[:, None].astype(np.float32)
    rough = np.random.default_rng(lesion.shape_seed).standard_normal((9, 9, 9)).astype(np.float32)
    rough = ndimage.gaussian_filter(rough, 1.2)
    rough /= rough.std() + 1e-6
    bumps = _sample(rough, (unit + 2.0) * 2.0, order=1, mode="nearest")
    radius = np.linalg.norm(unit, axis=0) * (1.0 + lesion.roughness * bumps)
    mean_axis = float(np.prod(lesion.axes) ** (1 / 3))
    inside = np.clip(0.5 + (1.0 - radius) * mean_axis / lesion.border_mm, 0.0, 1.0).reshape(grid.shape[1:])
    # white matter only: stops at the ventricle wall and the cortex
    inside *= np.clip(anatomy.template.wm[box] / 0.5, 0.0, 1.0)
    return box, inside


def _render_lesions(
    lesions: Sequence[_Lesion], anatomy: _Anatomy, scale: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Lesion fraction and contrast maps on the template grid, each lesion built in its bounding box.

    Args:
        scale: the subject's head scale; when given, each lesion's location class (the rules of
            :mod:`monai_ms.lesions.location`, distances in subject mm) is computed in template space.

    Returns:
        ``(fraction, t1_contrast, t2_contrast, owner, locations)``: float32 ``(193, 229, 193)`` maps (the
        contrast maps are fraction-weighted: ``fraction * contrast`` of the lesion that owns the voxel),
        ``owner`` int16 (1-based index of the lesion that owns the voxel, 0 elsewhere), and one location
        dict per lesion (empty list without ``scale``).
    """
    shape = anatomy.template.shape
    fraction = np.zeros(shape, dtype=np.float32)
    contrast_t1 = np.zeros(shape, dtype=np.float32)
    contrast_t2 = np.zeros(shape, dtype=np.float32)
    owner = np.zeros(shape, dtype=np.int16)
    locations: list[dict[str, Any]] = []
    if scale is not None:
        from monai_ms.lesions.location import template_lesion_location
    for number, lesion in enumerate(lesions, start=1):
        drawn = _lesion_fraction(lesion, anatomy)
        if drawn is None:
            if scale is not None:
                locations.append({"location": ""})
            continue
        box, inside = drawn
        if scale is not None:
            locations.append(template_lesion_location(inside, box, scale))
        current = fraction[box]
        update = inside > current
        current[update] = inside[update]
        contrast_t1[box][update] = inside[update] * lesion.t1_contrast
        contrast_t2[box][update] = inside[update] * lesion.t2_contrast
        owner[box][update] = number
    return fraction, contrast_t1, contrast_t2, owner, locations


def _template_to_world(head: "_Head", anatomy: _Anatomy, points: np.ndarray) -> np.ndarray:
    """World mm of template voxel points ``(3, n)`` in a session's head: inverts ``p + displacement(p)``."""
    target = np.asarray(points, dtype=np.float64).reshape(3, -1)
    p = target.copy()
    for _ in range(20):  # fixed point p = target - d(p); the warp is smooth and small (a few mm)
        p = target - np.stack([_sample(c, p / 2.0, mode="nearest") for c in head.displacement]).astype(np.float64)
    voxel_to_world = np.linalg.inv(head.world_to_template_voxel(anatomy))
    return voxel_to_world[:3, :3] @ p + voxel_to_world[:3, 3:4]


@dataclass(frozen=True)
class _Grid:
    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


@dataclass(frozen=True)
class _Head:
    """Subject head in scanner space: ``world = rotation @ (scale * head) + translation``.

    ``head`` is in template millimetres; what the scanner sees at head point ``h`` is the template at
    ``h + displacement(h)``, the session's whole nonlinear warp (subject shape + ventricle expansion)
    stored on the 2 mm template grid.
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    displacement: np.ndarray  # (3, 97, 115, 97) float32, template voxels (mm)
    thinning: float

    def world_to_template_voxel(self, anatomy: _Anatomy) -> np.ndarray:
        world_to_head = np.eye(4)
        world_to_head[:3, :3] = self.rotation.T / self.scale
        world_to_head[:3, 3] = -(self.rotation.T @ self.translation) / self.scale
        return anatomy.inverse_affine @ world_to_head


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    x, y, z = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(x), -math.sin(x)], [0, math.sin(x), math.cos(x)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(z), -math.sin(z), 0], [math.sin(z), math.cos(z), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _deformation_field(rng: np.random.Generator, shape: tuple[int, int, int], settings: SynthSettings) -> np.ndarray:
    from scipy import ndimage

    body = settings.anatomy
    control = tuple(int(math.ceil(n / body.deformation_control_mm)) + 1 for n in shape)
    target = tuple(int(math.ceil(n / 8.0)) + 1 for n in shape)
    coarse = rng.normal(0.0, body.deformation_sd_mm, (3, *control))
    zoom = np.divide(target, control)
    fine = np.stack([ndimage.zoom(c, zoom, order=3, mode="nearest", grid_mode=False) for c in coarse])
    return np.clip(fine, -body.deformation_max_mm, body.deformation_max_mm).astype(np.float32)


def _session_displacement(anatomy: _Anatomy, warped: np.ndarray, expansion_mm: float, steps: int) -> np.ndarray:
    """Subject deformation then ventricle expansion, as one displacement field on the 2 mm template grid.

    Args:
        warped: ``(3, m)`` the subject-deformed positions of ``anatomy.coarse_points``.
    """
    start = anatomy.coarse_points
    coords = warped.copy()
    if expansion_mm > 0:
        # integrate the ventricle-ward flow in small steps (a diffeomorphism, so nothing folds); sampling
        # the template further in makes the ventricles look larger
        moving = coords[:, anatomy.coarse_flowing]
        step = expansion_mm / steps
        for _ in range(steps):
            moving += step * np.stack([_sample(c, moving / 2.0, mode="nearest") for c in anatomy.flow])
        coords[:, anatomy.coarse_flowing] = moving
    displacement = np.zeros((3, *anatomy.flow.shape[1:]), dtype=np.float32)
    displacement.reshape(3, -1)[:, anatomy.coarse_index] = coords - start
    return displacement


def _fov_grid(centre: np.ndarray, fov_mm: np.ndarray, voxel_mm: np.ndarray, flip: tuple[bool, bool, bool]) -> _Grid:
    shape = tuple(int(math.ceil(f / v)) for f, v in zip(fov_mm, voxel_mm))
    affine = np.eye(4)
    affine[:3, :3] = np.diag(np.where(flip, -1.0, 1.0) * voxel_mm)
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return _Grid(shape, affine)  # type: ignore[arg-type]


def _head_points(grid: _Grid, head: _Head, anatomy: _Anatomy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Output voxels inside the brain, their template voxel coordinates and brain-mask values.

    Returns:
        ``(flat_indices (n,), template_coordinates (3, n), brain_mask (n,))``.
    """
    matrix = head.world_to_template_voxel(anatomy) @ grid.affine
    # only the output box that can reach the support (brain + margin) is looked at
    corners = np.array(np.meshgrid(*anatomy.support_box, indexing="ij")).reshape(3, -1)
    inverse = np.linalg.inv(matrix)
    reach = inverse[:3, :3] @ corners + inverse[:3, 3:4]
    lo = np.clip(np.floor(reach.min(axis=1)).astype(int) - 1, 0, grid.shape)
    hi = np.clip(np.ceil(reach.max(axis=1)).astype(int) + 2, 0, grid.shape)
    box = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")).reshape(3, -1)
    coords = matrix[:3, :3].astype(np.float32) @ box.astype(np.float32) + matrix[:3, 3:4].astype(np.float32)
    # cheap rejection of voxels far from the brain before the nonlinear warps
    inside_support = np.flatnonzero(_sample(anatomy.support, coords, order=0) > 0)
    keep = np.ravel_multi_index(tuple(box[:, inside_support]), grid.shape)
    coords = coords[:, inside_support]
    coords = coords.astype(np.float64)
    coords += np.stack([_sample(c, coords / 2.0, mode="nearest") for c in head.displacement])
    brain = _sample(anatomy.template.brain_mask, coords)
    inside = brain >= 0.5
    return keep[inside], coords[:, inside], brain[inside]


def _bias_field(rng: np.random.Generator, world: np.ndarray, sd: float) -> np.ndarray:
    """Smooth multiplicative field: exp of a random quadratic in world coordinates (per image)."""
    x, y, z = (world - world.mean(axis=1, keepdims=True)) / 100.0
    terms = np.stack([x, y, z, x * x, y * y, z * z, x * y, x * z, y * z])
    return np.exp(rng.normal(0.0, sd, terms.shape[0]) @ terms).astype(np.float32)


def _contrast_profile(value: np.ndarray, reference: dict[str, float], ratios: tuple[float, float]) -> np.ndarray:
    """Map template intensities through the monotone piecewise-linear curve that sends the template's CSF, GM
    and WM means to ``(csf / wm, gm / wm)`` times the WM mean (0 stays 0; slope 1 above the brightest tissue)."""
    wm = reference["wm"]
    knots = sorted([(0.0, 0.0), (reference["csf"], ratios[0] * wm), (reference["gm"], ratios[1] * wm), (wm, wm)])
    x = np.array([k[0] for k in knots])
    y = np.array([k[1] for k in knots])
    if np.any(np.diff(y) <= 0):  # SynthSettings checks the order; the template's tissue order is fixed
        raise ValueError(f"the tissue intensity ratios {ratios} do not keep the template's tissue order")
    mapped = np.interp(value, x, y).astype(np.float32)
    above = value > x[-1]
    mapped[above] = (y[-1] + (value[above] - x[-1])).astype(np.float32)
    return mapped


def _intensity(
    modality: str,
    base: np.ndarray,
    gm: np.ndarray,
    proximity: np.ndarray,
    lesion: np.ndarray,
    contrast: np.ndarray,
    thinning: float,
    anatomy: _Anatomy,
    ref: dict[str, float] | None = None,
) -> np.ndarray:
    ref = ref or anatomy.reference[modality]
    # cortical thinning: part of the GM next to sulcal CSF becomes CSF (partial-volume mix)
    value = base + (thinning * proximity * gm) * (ref["csf"] - ref["gm"])
    # lesions replace tissue by a mix of WM and CSF intensity (FLAIR: of WM and its brightest lesion), one
    # contrast per lesion
    bright = ref.get("lesion", ref["csf"])
    return value * (1.0 - lesion) + lesion * ref["wm"] + contrast * (bright - ref["wm"])


def _reference(anatomy: _Anatomy, modality: str, settings: SynthSettings) -> dict[str, float]:
    """Mean intensity per tissue of ``modality``: the template's for T1/T2; the FLAIR's from its settings (on the
    T2's white-matter scale), with ``lesion`` its brightest lesion."""
    if modality != "flair":
        return anatomy.reference[modality]
    wm, scan = anatomy.reference["t2"]["wm"], settings.acquisition
    ratios = {"gm": scan.flair_gm_wm_ratio, "csf": scan.flair_csf_wm_ratio, "lesion": scan.flair_lesion_wm_ratio}
    return {"wm": wm, **{tissue: ratio * wm for tissue, ratio in ratios.items()}}


def _acquire(
    rng: np.random.Generator,
    value: np.ndarray,
    world: np.ndarray,
    modality: str,
    scanner: str,
    anatomy: _Anatomy,
    settings: SynthSettings,
) -> tuple[np.ndarray, float]:
    """Scanner effects on the clean intensities: tissue contrast profile, gamma, bias field, Rician noise, scale."""
    scan = settings.acquisition
    wm = _reference(anatomy, modality, settings)["wm"]
    ratios = scan.tissue_ratios(modality)
    if ratios is not None:
        value = _contrast_profile(value, anatomy.reference[modality], ratios)
    gamma = rng.uniform(*scan.gamma_range)
    value = wm * np.power(np.maximum(value, 0.0) / wm, gamma)
    value = value * _bias_field(rng, world, scan.bias_sd)
    noise_fraction = float(rng.uniform(*scan.noise_fraction(scanner)))
    sigma = noise_fraction * wm
    real = value + sigma * rng.standard_normal(value.size, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(value.size, dtype=np.float32)
    scale = math.exp(rng.uniform(*np.log(scan.intensity_scale_range)))
    return (np.hypot(real, imaginary) * scale).astype(np.float32), noise_fraction


def _world(grid: _Grid, flat: np.ndarray) -> np.ndarray:
    ijk = np.stack(np.unravel_index(flat, grid.shape)).astype(np.float64)
    return grid.affine[:3, :3] @ ijk + grid.affine[:3, 3:4]


def _nifti(array: np.ndarray, grid: _Grid, description: str) -> Any:
    import nibabel as nib

    image = nib.Nifti1Image(array, grid.affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_qform(grid.affine, code=1)
    image.header.set_sform(grid.affine, code=1)
    image.header["descrip"] = description[:79].encode()
    return image


# ---------------------------------------------------------------------------------------------------
# One subject (worker task)
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Task:
    seed: int
    index: int
    tiny: bool
    spacing: float
    layout: str
    root: str
    width: int
    settings: SynthSettings
    modalities: tuple[str, ...] = ("t1", "t2")


def _paths(layout: str, ids: dict[str, str], modalities: Sequence[str] = ("t1", "t2")) -> dict[str, str]:
    if layout == "seed":
        mri = ids["MRI_ID"]
        paths = {
            "t1": f"T1/{mri}_T1_preprocessed.nii.gz",
            "t2": f"T2/{mri}_T2_preprocessed.nii.gz",
            "flair": f"FLAIR/{mri}_FLAIR_preprocessed.nii.gz",
            "lesion": f"masks/{mri}_lesion.nii.gz",
            "tissue": f"tissue/{mri}_tissue.nii.gz",
        }
    else:
        stem = f"{ids['participant_id']}_{ids['session_id']}"
        anat = f"{ids['participant_id']}/{ids['session_id']}/anat"
        paths = {
            "t1": f"{anat}/{stem}_T1w.nii.gz",
            "t2": f"{anat}/{stem}_T2w.nii.gz",
            "flair": f"{anat}/{stem}_FLAIR.nii.gz",
            "lesion": f"derivatives/lesions/{anat}/{stem}_label-lesion_mask.nii.gz",
            "tissue": f"derivatives/lesions/{anat}/{stem}_dseg.nii.gz",
        }
    return {key: path for key, path in paths.items() if key in modalities or key in ("lesion", "tissue")}


def _lesion_samples(
    fraction: np.ndarray, contrast: np.ndarray, coords: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    lesion = _sample(fraction, coords)
    weighted = np.zeros_like(lesion)
    touched = np.flatnonzero(lesion > 0)  # a few percent of the brain at most
    weighted[touched] = _sample(contrast, coords[:, touched])
    return lesion, weighted


@dataclass(frozen=True)
class _SessionImages:
    t1: np.ndarray
    t2: np.ndarray
    lesion_mask: np.ndarray
    tissue: np.ndarray
    t1_grid: _Grid
    t2_grid: _Grid
    measures: dict[str, float]
    head: _Head | None = None
    lesion_locations: tuple[dict[str, Any], ...] = ()
    lesion_mask_voxels: tuple[int, ...] = ()
    flair: np.ndarray | None = None
    flair_grid: _Grid | None = None


def _image_session(
    rng: np.random.Generator,
    plan: _SubjectPlan,
    session: _Session,
    warped: np.ndarray,
    spacing: float,
    anatomy: _Anatomy,
    settings: SynthSettings,
    flair_rng: np.random.Generator | None = None,
) -> _SessionImages:
    """Pose the subject's head in the scanner, render T1/T2/mask/tissue, and measure volumes.

    With ``flair_rng``, also a FLAIR on its own thick-slice grid, drawn from that generator only, so the T1,
    T2, masks and measures are the same with or without it.
    """
    from scipy import ndimage

    template = anatomy.template
    scan = settings.acquisition
    rotation = _rotation(np.clip(rng.normal(0, scan.rotation_sd_deg, 3), -scan.rotation_max_deg, scan.rotation_max_deg))
    translation = np.clip(
        rng.normal(0, scan.translation_sd_mm, 3), -scan.translation_max_mm, scan.translation_max_mm
    )
    expansion = settings.atrophy.ventricle_expansion_mm * session.image_atrophy
    thinning = settings.atrophy.cortical_thinning * session.image_atrophy
    displacement = _session_displacement(anatomy, warped, expansion, settings.atrophy.ventricle_flow_steps)
    head = _Head(plan.head_scale, rotation, translation, displacement, thinning)
    # the technologist centres each field of view on the head, give or take a few mm
    head_centre = rotation @ (plan.head_scale * anatomy.brain_centre) + translation
    offsets = np.clip(rng.normal(0, scan.fov_offset_sd_mm, (2, 3)), -scan.fov_offset_max_mm, scan.fov_offset_max_mm)
    t1_voxel = np.full(3, scan.t1_voxel_factor * spacing)
    t1_fov = np.asarray(scan.t1_fov_mm)
    t1_grid = _fov_grid(head_centre + offsets[0], t1_fov, t1_voxel, scan.flips(scan.t1_orientation))
    t2_fov = t1_fov + rng.uniform(*scan.t2_fov_extra_mm, 3)
    inplane = scan.t2_inplane_factor * spacing
    t2_voxel = np.array([inplane, inplane, scan.t2_slice_factor * spacing])
    t2_grid = _fov_grid(head_centre + offsets[1], t2_fov, t2_voxel, scan.flips(scan.t2_orientation))

    fraction, contrast_t1, contrast_t2, owner, locations = _render_lesions(session.lesions, anatomy, plan.head_scale)

    flat, coords, brain = _head_points(t1_grid, head, anatomy)
    gm = _sample(template.gm, coords)
    wm = _sample(template.wm, coords)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    proximity = _sample(anatomy.cortex_proximity, coords)
    lesion, weighted = _lesion_samples(fraction, contrast_t1, coords)
    clean = _intensity("t1", _sample(template.t1, coords), gm, proximity, lesion, weighted, thinning, anatomy)
    t1_values, t1_noise = _acquire(rng, clean, _world(t1_grid, flat), "t1", session.scanner, anatomy, settings)
    ventricles = _sample(template.ventricles.astype(np.float32), coords)
    # tissue fractions after thinning and lesions -> hard labels
    thinned = thinning * proximity * gm
    fractions = np.stack([csf + thinned, gm - thinned, wm]) * (1.0 - lesion)
    tissue_values = (np.argmax(fractions, axis=0) + 1).astype(np.uint8)
    lesion_values = lesion >= 0.5
    tissue_values[lesion_values] = 4
    # the truth table's mask voxels per lesion: the lesion that owns the template point each voxel samples
    owners = np.rint(_sample(owner, coords[:, lesion_values], order=0)).astype(np.int64)
    mask_voxels = np.bincount(owners, minlength=len(session.lesions) + 1)[1:]

    def clean_t2(grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
        where, points, _ = _head_points(grid, head, anatomy)
        lesion2, weighted2 = _lesion_samples(fraction, contrast_t2, points)
        values = _intensity(
            "t2",
            _sample(template.t2, points),
            _sample(template.gm, points),
            _sample(anatomy.cortex_proximity, points),
            lesion2,
            weighted2,
            thinning,
            anatomy,
        )
        return where, values

    if scan.t2_slice_samples == 1:
        flat2, clean = clean_t2(t2_grid)
    else:
        flat2, clean = _slice_profile(t2_grid, scan.t2_slice_samples, clean_t2)
    t2_values, t2_noise = _acquire(rng, clean, _world(t2_grid, flat2), "t2", session.scanner, anatomy, settings)
    flair = None
    if flair_rng is not None:
        flair = _render_flair(
            flair_rng, head, head_centre, t1_fov, fraction, contrast_t2, thinning, session.scanner, spacing, anatomy, settings
        )

    def scatter(grid: _Grid, where: np.ndarray, values: np.ndarray, dtype: type) -> np.ndarray:
        volume = np.zeros(grid.shape, dtype=dtype)
        volume.flat[where] = values
        return volume

    for name, grid, where in (("T1", t1_grid, flat), ("T2", t2_grid, flat2)):
        ijk = np.stack(np.unravel_index(where, grid.shape))
        if (ijk == 0).any() or (ijk == np.asarray(grid.shape)[:, None] - 1).any():
            logger.warning(
                "subject %d session %d: the brain touches the %s field of view", plan.index, session.number, name
            )
    lesion_mask = scatter(t1_grid, flat, lesion_values, np.uint8)
    _, components = ndimage.label(lesion_mask, structure=np.ones((3, 3, 3)))
    voxel_ml = t1_grid.voxel_volume_ml
    intracranial = flat.size * voxel_ml
    parenchyma = float((1.0 - csf - thinned).sum()) * voxel_ml
    measures = {
        "ventricle_expansion_mm": round(expansion, 3),
        "cortical_thinning": round(thinning, 4),
        "lesion_volume_ml": round(float(lesion.sum()) * voxel_ml, 4),
        "lesion_mask_volume_ml": round(float(lesion_values.sum()) * voxel_ml, 4),
        "number_of_lesions": int(components),
        "ventricle_volume_ml": round(float(ventricles.sum()) * voxel_ml, 3),
        "brain_volume_ml": round(parenchyma, 2),
        "intracranial_volume_ml": round(intracranial, 2),
        "brain_parenchymal_fraction": round(parenchyma / intracranial, 4),
        "t1_noise_fraction": round(t1_noise, 4),
        "t2_noise_fraction": round(t2_noise, 4),
    }
    return _SessionImages(
        t1=scatter(t1_grid, flat, t1_values, np.float32),
        t2=scatter(t2_grid, flat2, t2_values, np.float32),
        lesion_mask=lesion_mask,
        tissue=scatter(t1_grid, flat, tissue_values, np.uint8),
        t1_grid=t1_grid,
        t2_grid=t2_grid,
        measures=measures,
        head=head,
        lesion_locations=tuple(locations),
        lesion_mask_voxels=tuple(int(v) for v in mask_voxels),
        flair=None if flair is None else scatter(flair[0], flair[1], flair[2], np.float32),
        flair_grid=None if flair is None else flair[0],
    )


def _render_flair(
    rng: np.random.Generator,
    head: _Head,
    head_centre: np.ndarray,
    t1_fov: np.ndarray,
    fraction: np.ndarray,
    contrast_t2: np.ndarray,
    thinning: float,
    scanner: str,
    spacing: float,
    anatomy: _Anatomy,
    settings: SynthSettings,
) -> tuple[_Grid, np.ndarray, np.ndarray]:
    """A FLAIR of the session's head: CSF suppressed, grey above white matter, lesions bright (their T2
    contrast), on its own thick-slice grid and orientation; the scanner effects of :func:`_acquire`.

    Returns:
        ``(grid, flat brain voxel indices, values)``.
    """
    scan = settings.acquisition
    offset = np.clip(rng.normal(0, scan.fov_offset_sd_mm, 3), -scan.fov_offset_max_mm, scan.fov_offset_max_mm)
    fov = t1_fov + rng.uniform(*scan.t2_fov_extra_mm, 3)
    inplane = scan.flair_inplane_factor * spacing
    voxel = np.array([inplane, inplane, scan.flair_slice_factor * spacing])
    grid = _fov_grid(head_centre + offset, fov, voxel, scan.flips(scan.flair_orientation))
    template = anatomy.template
    ref = _reference(anatomy, "flair", settings)

    def clean_flair(target: _Grid) -> tuple[np.ndarray, np.ndarray]:
        where, points, brain = _head_points(target, head, anatomy)
        gm, wm = _sample(template.gm, points), _sample(template.wm, points)
        csf = np.clip(brain - gm - wm, 0.0, 1.0)
        base = (wm * ref["wm"] + gm * ref["gm"] + csf * ref["csf"]).astype(np.float32)
        lesion, weighted = _lesion_samples(fraction, contrast_t2, points)
        proximity = _sample(anatomy.cortex_proximity, points)
        return where, _intensity("flair", base, gm, proximity, lesion, weighted, thinning, anatomy, ref)

    if scan.flair_slice_samples == 1:
        flat, clean = clean_flair(grid)
    else:
        flat, clean = _slice_profile(grid, scan.flair_slice_samples, clean_flair)
    values, _ = _acquire(rng, clean, _world(grid, flat), "flair", scanner, anatomy, settings)
    return grid, flat, values


def _slice_profile(
    grid: _Grid, samples: int, render: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Thick-slice sampling: the mean of ``samples`` sub-slices evenly spread across each slice (third axis).

    A voxel belongs to the brain when most of its sub-slices do; its value is the mean over those inside.

    Args:
        render: ``grid -> (flat indices, clean values)`` of the brain voxels of a grid.
    """
    total = np.zeros(int(np.prod(grid.shape)), dtype=np.float64)
    count = np.zeros(total.size, dtype=np.int32)
    for j in range(samples):
        shift = np.eye(4)
        shift[2, 3] = (j + 0.5) / samples - 0.5  # voxel units along the slice axis
        where, values = render(_Grid(grid.shape, grid.affine @ shift))
        total[where] += values
        count[where] += 1
    flat = np.flatnonzero(2 * count > samples)
    return flat, (total[flat] / count[flat]).astype(np.float32)


def _generate_subject(task: _Task) -> list[dict[str, Any]]:
    anatomy = _anatomy(task.settings)
    plan, rng = _subject_plan(task.seed, task.index, task.tiny, task.settings)
    deformation = _deformation_field(rng, anatomy.template.shape, task.settings)
    # the subject's shape, on the 2 mm template grid; shared by its sessions
    warped = anatomy.coarse_points + np.stack(
        [_sample(c, anatomy.coarse_points / 8.0, mode="nearest") for c in deformation]
    )
    root = Path(task.root)
    note = "monai-ms synthetic; derived from MNI ICBM152 2009c"
    records = []
    baseline: tuple[_Session, _SessionImages] | None = None
    for session in plan.sessions:
        # the FLAIR has its own stream, so adding it leaves every other file of the cohort unchanged
        flair_rng = np.random.default_rng([task.seed, task.index, session.number, 0xF1A1]) if "flair" in task.modalities else None
        images = _image_session(rng, plan, session, warped, task.spacing, anatomy, task.settings, flair_rng)
        ids = _ids(plan, session, task.width)
        baseline = baseline or (session, images)
        paths = _paths(task.layout, ids, task.modalities)
        save_nifti(_nifti(images.t1, images.t1_grid, note), root / paths["t1"])
        if "t2" in paths:
            save_nifti(_nifti(images.t2, images.t2_grid, note), root / paths["t2"])
        if images.flair is not None and images.flair_grid is not None:
            save_nifti(_nifti(images.flair, images.flair_grid, note), root / paths["flair"])
        save_nifti(_nifti(images.lesion_mask, images.t1_grid, note + " lesion mask"), root / paths["lesion"])
        save_nifti(_nifti(images.tissue, images.t1_grid, note + " tissue labels"), root / paths["tissue"])
        records.append(
            {
                **ids,
                "session": session.number,
                "sex": plan.sex,
                "date_of_birth": plan.date_of_birth.isoformat(),
                "scan_date": session.scan_date.isoformat(),
                **_latent_row(plan, session),
                **images.measures,
                "paths": paths,
                "lesions": _lesion_truth_rows(plan, session, images, ids, baseline, anatomy),
            }
        )
    return records


def _lesion_truth_rows(
    plan: _SubjectPlan,
    session: _Session,
    images: _SessionImages,
    ids: dict[str, str],
    baseline: tuple[_Session, _SessionImages],
    anatomy: _Anatomy,
) -> list[dict[str, Any]]:
    """One ``lesion_truth.csv`` row per lesion of the session (ids stable across the subject's sessions).

    A follow-up session's list is the baseline's lesions in the same order (the grown ones replaced by a
    larger copy, see ``_subject_plan``) followed by the new ones, so the list index is the lesion id.
    """
    first_session, first_images = baseline
    previous = plan.sessions[session.number - 2].lesions if session.number > 1 else []
    if not session.lesions:
        return []
    centres = np.stack([lesion.centre for lesion in session.lesions], axis=1)
    world = _template_to_world(images.head, anatomy, centres)
    in_baseline = _template_to_world(first_images.head, anatomy, centres)
    voxel_ml = images.t1_grid.voxel_volume_ml
    rows = []
    for index, lesion in enumerate(session.lesions):
        if session.number == 1:
            status, ratio = "baseline", float("nan")
        elif index >= len(previous):
            status, ratio = "new", float("nan")
        else:
            ratio = lesion.volume_mm3 / previous[index].volume_mm3
            status = "unchanged" if lesion is previous[index] else "enlarged"
        location = images.lesion_locations[index] if index < len(images.lesion_locations) else {}
        rows.append(
            {
                "MRI_ID": ids["MRI_ID"],
                "Patient_ID": ids["Patient_ID"],
                "session": session.number,
                "lesion_id": index + 1,
                "status": status,
                "volume_ratio": round(ratio, 4),
                "volume_ml": round(lesion.volume_mm3 * plan.head_scale**3 / 1000.0, 5),
                "mask_voxels": images.lesion_mask_voxels[index],
                "mask_volume_ml": round(images.lesion_mask_voxels[index] * voxel_ml, 5),
                "centre_x_mm": round(float(world[0, index]), 2),
                "centre_y_mm": round(float(world[1, index]), 2),
                "centre_z_mm": round(float(world[2, index]), 2),
                "baseline_x_mm": round(float(in_baseline[0, index]), 2),
                "baseline_y_mm": round(float(in_baseline[1, index]), 2),
                "baseline_z_mm": round(float(in_baseline[2, index]), 2),
                "periventricular_site": lesion.periventricular,
                **location,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------------
# Cohort
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CohortSummary:
    """What :func:`generate_cohort` wrote.

    Attributes:
        out_dir: the cohort folder.
        layout: ``"seed"`` or ``"bids"``.
        seed: random seed.
        spacing: T1 voxel size in mm (``spacing x settings.acquisition.t1_voxel_factor``; the default T2 has
            ``spacing x spacing x 1.5 spacing``).
        tiny: whether the tiny test settings were used.
        subjects: number of subjects (patients).
        sessions: number of scan sessions.
        lesion_free_sessions: sessions whose lesion mask is empty.
        edss_min: lowest EDSS.
        edss_max: highest EDSS.
        edss_median: median EDSS.
        r2_age_sex: in-sample R^2 of a linear model of EDSS on (age, sex).
        r2_lesion_atrophy: in-sample R^2 of EDSS on (ln(1 + lesion volume mL), atrophy).
        r2_lesion_ventricles: in-sample R^2 of EDSS on (ln(1 + lesion volume mL), ventricle volume /
            intracranial volume), i.e. from quantities measurable in the images.
        seconds: wall time.
        workers: worker processes used.
    """

    out_dir: Path
    layout: str
    seed: int
    spacing: float
    tiny: bool
    subjects: int
    sessions: int
    lesion_free_sessions: int
    edss_min: float
    edss_max: float
    edss_median: float
    r2_age_sex: float
    r2_lesion_atrophy: float
    r2_lesion_ventricles: float
    seconds: float
    workers: int

    def lines(self) -> list[str]:
        """Human-readable summary lines (what the CLI prints)."""
        return [
            f"wrote {self.sessions} sessions of {self.subjects} subjects to {self.out_dir} (layout {self.layout}, "
            f"seed {self.seed}, T1 {self.spacing:g} mm{', tiny' if self.tiny else ''})",
            f"lesion-free sessions: {self.lesion_free_sessions}; EDSS {self.edss_min:g}-{self.edss_max:g} "
            f"(median {self.edss_median:g})",
            f"R^2 of EDSS on age+sex {_format_r2(self.r2_age_sex)}; "
            f"on lesion load+atrophy {_format_r2(self.r2_lesion_atrophy)}; "
            f"on lesion load+ventricle fraction {_format_r2(self.r2_lesion_ventricles)}",
            f"time {self.seconds:.1f} s with {self.workers} worker(s)",
        ]


def _format_r2(value: float) -> str:
    return "n/a (too few sessions)" if math.isnan(value) else f"{value:.2f}"


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_settings(settings: Any) -> SynthSettings:
    if settings is None:
        return _DEFAULT
    if not isinstance(settings, SynthSettings):
        raise ValueError(
            f"settings must be a SynthSettings (see SynthSettings.from_dict for a dict), got {type(settings).__name__}"
        )
    return settings


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _r2(table: Any, columns: Sequence[str]) -> float:
    from sklearn.linear_model import LinearRegression

    if len(table) < len(columns) + 2 or table["edss"].nunique() < 2:
        return float("nan")
    x = table[list(columns)].to_numpy(dtype=float)
    y = table["edss"].to_numpy(dtype=float)
    return float(LinearRegression().fit(x, y).score(x, y))


def _looks_like_cohort(path: Path) -> bool:
    return (path / COHORT_MARKER).is_file() and (path / LICENCE_NAME).is_file()


def _prepare_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: output path exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out}: output folder is not empty; choose a new folder or pass overwrite=True (--overwrite)"
            )
        if not _looks_like_cohort(out):
            raise FileExistsError(
                f"{out}: refusing to replace a non-empty folder that is not a monai-ms synthetic cohort "
                f"(no {COHORT_MARKER} and {LICENCE_NAME}); remove it yourself or choose a new folder"
            )


def _commit(tmp: Path, out: Path) -> None:
    """Move the finished cohort into place; an old cohort is removed only after the new one is there."""
    trash = None
    if out.is_dir():
        if any(out.iterdir()):
            trash = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, trash)
        else:
            out.rmdir()
    os.replace(tmp, out)
    if trash is not None:
        shutil.rmtree(trash)


def _mp_context() -> multiprocessing.context.BaseContext:
    # forkserver/spawn: workers start clean (no inherited threads); each loads the template once
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def generate_cohort(
    out_dir: str | os.PathLike,
    subjects: int,
    seed: int = 0,
    spacing: float | None = None,
    layout: str = "seed",
    tiny: bool = False,
    workers: int | None = None,
    preview: bool = False,
    overwrite: bool = False,
    settings: SynthSettings | None = None,
    modalities: Sequence[str] = ("t1", "t2"),
) -> CohortSummary:
    """Write a synthetic MS cohort (T1, T2, lesion masks, tissue labels, metadata) built on MNI ICBM152 2009c.

    With the default settings: about 30% of subjects get a second session 1-3 years later. Per session: T1
    ``float32`` on an isotropic RAS grid of ``spacing`` mm (``216 x 248 x 224`` mm field of view), T2
    ``float32`` on a ``spacing x spacing x 1.5 spacing`` mm LPS grid with another field of view (align them
    through the affines), lesion mask and tissue labels (``uint8``; 0 background, 1 CSF, 2 GM, 3 WM, 4
    lesion) on the T1 grid. The cohort is built in a hidden sibling folder and renamed into place at the end;
    its ``cohort.json`` records the settings (``settings``) and what differs from the defaults
    (``settings_changes``).

    Args:
        out_dir: output folder; must not exist or be empty (see ``overwrite``).
        subjects: number of subjects (patients).
        seed: random seed; subject ``i`` depends only on ``(seed, i)``.
        spacing: T1 voxel size in mm, in [0.5, 8]; default 2.0 (4.0 with ``tiny``).
        layout: ``"seed"`` (``T1/``, ``T2/``, ``masks/``, ``tissue/``, ``metadata.csv``) or ``"bids"``.
        tiny: fast test cohort: 4 mm voxels (unless ``spacing`` is given) and fewer, larger lesions.
        workers: worker processes; default ``min(2, cpu count)``. Results do not depend on it.
        preview: also write ``preview.png`` (T1, T2 on the T1 grid, T1 with the mask outlined).
        overwrite: replace ``out_dir`` if it holds a previous synthetic cohort (never another folder).
        settings: every parameter of the generative model (:class:`SynthSettings`; ``None``: the defaults).
            ``SynthSettings().shifted("noise")`` etc. model another scanner (see ``SHIFTS``).
        modalities: the intensity images written, T1 first: any of ``t1``, ``t2``, ``flair``
            (``FLAIR/{MRI_ID}_FLAIR_preprocessed.nii.gz``; BIDS ``*_FLAIR.nii.gz``). The FLAIR suppresses CSF,
            shows lesions bright and lies on its own thick-slice grid (``settings.acquisition.flair_*``); the
            other files are the same bytes whatever the list.

    Returns:
        :class:`CohortSummary`.

    Raises:
        ValueError: an argument is out of range, or ``settings`` is not a :class:`SynthSettings`.
        FileExistsError: ``out_dir`` is not empty (and not an older cohort with ``overwrite=True``).
        NotADirectoryError: ``out_dir`` is a file.
        monai_ms.data.templates.TemplateNotFoundError: the template data packages are missing.

    Examples:
        >>> summary = generate_cohort("demo_cohort", subjects=4, tiny=True)  # doctest: +SKIP
        >>> summary.sessions >= 4  # doctest: +SKIP
        True
    """
    import pandas as pd

    start = time.perf_counter()
    subjects = _check_positive_int("subjects", subjects)
    seed = _check_seed(seed)
    spacing = (4.0 if tiny else 2.0) if spacing is None else spacing
    if not isinstance(spacing, (int, float, np.floating)) or not 0.5 <= float(spacing) <= 8.0:
        raise ValueError(f"spacing must be a voxel size in mm in [0.5, 8], got {spacing!r}")
    spacing = float(spacing)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    settings = _check_settings(settings)
    modalities = _check_synth_modalities(modalities)
    workers = min(2, os.cpu_count() or 1) if workers is None else _check_positive_int("workers", workers)
    workers = min(workers, subjects)
    out = Path(out_dir).expanduser().absolute()
    _prepare_output(out, overwrite)
    template_files()  # fail early, before any folder appears, if the template is not installed

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        width = max(2, len(str(subjects)))
        tasks = [_Task(int(seed), i, bool(tiny), spacing, layout, str(tmp), width, settings, modalities) for i in range(subjects)]
        if workers == 1:
            per_subject = [_generate_subject(task) for task in tasks]
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context()) as pool:
                per_subject = list(pool.map(_generate_subject, tasks))
        records = [record for subject in per_subject for record in subject]
        lesion_rows = [row for record in records for row in record.pop("lesions")]
        truth = pd.DataFrame(records)
        _write_tables(tmp, truth, layout)
        write_csv(pd.DataFrame(lesion_rows, columns=LESION_TRUTH_COLUMNS), tmp / "lesion_truth.csv")
        _write_docs(tmp, truth, layout, int(seed), spacing, bool(tiny), settings)
        if preview:
            _write_preview(tmp, truth)
        truth["log_lesion"] = np.log1p(truth["lesion_volume_ml"])
        truth["male"] = (truth["sex"] == "M").astype(float)
        truth["ventricle_fraction"] = truth["ventricle_volume_ml"] / truth["intracranial_volume_ml"]
        summary = CohortSummary(
            out_dir=out,
            layout=layout,
            seed=int(seed),
            spacing=settings.acquisition.t1_voxel_factor * spacing,
            tiny=bool(tiny),
            subjects=subjects,
            sessions=len(truth),
            lesion_free_sessions=int((truth["lesion_mask_volume_ml"] == 0).sum()),
            edss_min=float(truth["edss"].min()),
            edss_max=float(truth["edss"].max()),
            edss_median=float(truth["edss"].median()),
            r2_age_sex=_r2(truth, ["age", "male"]),
            r2_lesion_atrophy=_r2(truth, ["log_lesion", "atrophy"]),
            r2_lesion_ventricles=_r2(truth, ["log_lesion", "ventricle_fraction"]),
            seconds=round(time.perf_counter() - start, 2),
            workers=workers,
        )
        marker = {
            "generator": "monai_ms.data.synthetic.generate_cohort",
            "parameters": {
                "subjects": subjects,
                "seed": int(seed),
                "spacing": spacing,
                "layout": layout,
                "tiny": bool(tiny),
                # only when not the default, so a T1 + T2 cohort keeps the bytes of generator version 2
                **({"modalities": list(modalities)} if modalities != ("t1", "t2") else {}),
            },
            # strict JSON: an undefined R^2 (too few sessions) is null, not NaN
            "summary": {
                key: None if isinstance(value, float) and math.isnan(value) else value
                for key, value in asdict(summary).items()
                if key not in ("out_dir", "seconds", "workers")
            },
            "settings": settings.to_dict(),
            "settings_changes": settings.changes(),
        }
        write_json(marker, tmp / COHORT_MARKER)
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = CohortSummary(**{**asdict(summary), "seconds": round(time.perf_counter() - start, 2)})
    logger.info("synthetic cohort: %s", " | ".join(summary.lines()))
    return summary


def _check_synth_modalities(modalities: Any) -> tuple[str, ...]:
    """``fields.check_modalities`` (T1 first, known, distinct), then only what the generator can write."""
    from monai_ms.data.fields import check_modalities

    chosen = check_modalities(modalities)
    unknown = [m for m in chosen if m not in SYNTH_MODALITIES]
    if unknown:
        raise ValueError(f"the synthetic generator writes {', '.join(SYNTH_MODALITIES)}, not {', '.join(unknown)}")
    return chosen


def _write_tables(root: Path, truth: Any, layout: str) -> None:
    import pandas as pd

    write_csv(truth[GROUND_TRUTH_COLUMNS], root / "ground_truth.csv")
    if layout == "seed":
        metadata = pd.DataFrame(
            {
                "Patient_ID": truth["Patient_ID"],
                "MRI_ID": truth["MRI_ID"],
                "MR_System": truth["scanner"],
                "Number_of_Lesions": truth["number_of_lesions"],
                "Scan_Date": truth["scan_date"],
                "Sex": truth["sex"],
                "Date_of_Birth": truth["date_of_birth"],
                "EDSS": truth["edss"],
                "Age_at_Scan": truth["age"].round(1),
            }
        )
        write_csv(metadata[METADATA_COLUMNS], root / "metadata.csv")
        return
    participants = truth.drop_duplicates("participant_id")[["participant_id", "sex", "date_of_birth"]]
    write_csv(participants, root / "participants.tsv", sep="\t")
    write_json(
        {
            "participant_id": {"Description": "subject identifier"},
            "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
            "date_of_birth": {"Description": "date of birth (synthetic)", "Format": "YYYY-MM-DD"},
        },
        root / "participants.json",
    )
    for participant, rows in truth.groupby("participant_id", sort=True):
        sessions = pd.DataFrame(
            {
                "session_id": rows["session_id"],
                "acq_time": rows["scan_date"] + "T09:00:00",
                "age": rows["age"].round(1),
                "edss": rows["edss"],
                "scanner": rows["scanner"],
            }
        )
        write_csv(sessions, root / participant / f"{participant}_sessions.tsv", sep="\t")
    from monai_ms import __version__

    generated_by = [{"Name": "monai-ms", "Version": __version__, "Description": "monai_ms.data.synthetic"}]
    write_json(
        {
            "Name": "monai-ms synthetic MS cohort (MNI ICBM152 2009c derived)",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "License": f"derived from the MNI ICBM152 2009c template; see {LICENCE_NAME}",
            "GeneratedBy": generated_by,
        },
        root / "dataset_description.json",
    )
    write_json(
        {
            "Name": "lesion masks and tissue labels of the synthetic cohort",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": generated_by,
        },
        root / "derivatives" / "lesions" / "dataset_description.json",
    )
    labels = pd.DataFrame({"index": list(TISSUE_LABELS), "name": list(TISSUE_LABELS.values())})
    write_csv(labels, root / "derivatives" / "lesions" / "dseg.tsv", sep="\t")
    write_text(f"ground_truth.csv\nlesion_truth.csv\n{COHORT_MARKER}\n{LICENCE_NAME}\npreview.png\n", root / ".bidsignore")


def _write_docs(
    root: Path, truth: Any, layout: str, seed: int, spacing: float, tiny: bool, settings: SynthSettings
) -> None:
    write_text(mni_copying_text(), root / LICENCE_NAME)
    body, ageing, edss, scan = settings.anatomy, settings.atrophy, settings.edss, settings.acquisition
    t1_mm = scan.t1_voxel_factor * spacing
    t2_inplane, t2_slice = scan.t2_inplane_factor * spacing, scan.t2_slice_factor * spacing
    changes = settings.changes()
    changed = (
        f"\nGenerator settings `{settings.name}` (not the defaults; all of them in {COHORT_MARKER}), changed: "
        + ", ".join(f"{key} = {json.dumps(value)}" for key, value in changes.items())
        + ".\n"
        if changes
        else ""
    )
    files = (
        "T1/{MRI_ID}_T1_preprocessed.nii.gz, T2/{MRI_ID}_T2_preprocessed.nii.gz, masks/{MRI_ID}_lesion.nii.gz, "
        "tissue/{MRI_ID}_tissue.nii.gz, metadata.csv"
        if layout == "seed"
        else "participants.tsv, sub-*/sub-*_sessions.tsv, sub-*/ses-*/anat/*_T1w.nii.gz and *_T2w.nii.gz, "
        "derivatives/lesions/sub-*/ses-*/anat/*_label-lesion_mask.nii.gz and *_dseg.nii.gz"
    )
    text = f"""# Synthetic multiple-sclerosis cohort (monai-ms)

Synthetic data: no real person was scanned. Made by `monai_ms.data.synthetic.generate_cohort` with seed {seed},
T1 voxel {t1_mm:g} mm{" (tiny test settings)" if tiny else ""}, layout `{layout}`:
{truth["Patient_ID"].nunique()} subjects, {len(truth)} sessions.
{changed}
Files: {files}; ground_truth.csv (the latent variables), lesion_truth.csv (one row per lesion and session:
stable lesion id, status baseline/new/enlarged/unchanged, centre in world mm, location class), {COHORT_MARKER}
(generator parameters).

## Generative model (details and numbers: docs/synthetic_cohort.md in monai-ms)

- Each head is the MNI ICBM152 2009c template, scaled (females {body.head_scale_mean_female:g}, males \
{body.head_scale_mean_male:g} on average, sd {body.head_scale_sd:g}),
  smoothly deformed (a few mm), rotated (a few degrees) and shifted (a few mm) in the scanner.
- A latent disease severity drives the white-matter lesion load (lognormal, many periventricular lesions,
  about 1 in 8 subjects lesion-free) and atrophy (ventricles enlarged by up to {ageing.ventricle_expansion_mm:g} mm, \
cortex thinned).
- EDSS = {edss.intercept!r} + {edss.lesion!r} ln(1 + lesion mL) + {edss.atrophy!r} atrophy + {edss.age!r} (age - \
{REFERENCE_AGE:g}) + noise, rounded to 0.5 in [0, 10].
- T1: {t1_mm:g} mm isotropic, {scan.t1_orientation}. T2: {t2_inplane:g} x {t2_inplane:g} x {t2_slice:g} mm, \
{scan.t2_orientation}, another
  field of view: resample T2 onto T1 through the affines. Both are skull-stripped (zero outside the brain), float32,
  with a smooth bias field, Rician noise and an arbitrary intensity scale per image.
- Lesion masks (0/1) and tissue labels (0 background, 1 CSF, 2 GM, 3 WM, 4 lesion) are on the T1 grid.

## Template licence

The images are derived from the MNI ICBM152 2009c template (Fonov et al., NeuroImage 2011; Collins et al.),
distributed under the notice in {LICENCE_NAME}, which must accompany every copy:

{mni_copying_text().strip()}
"""
    write_text(text, root / "README.md")


def _write_preview(root: Path, truth: Any, rows: int = 4) -> None:
    """Montage: one row per session (lesion loads spread over the cohort), T1 | T2 on the T1 grid | T1 + mask."""
    import nibabel as nib
    from matplotlib.figure import Figure
    from nibabel.processing import resample_from_to

    order = truth.sort_values("lesion_volume_ml").index.to_list()
    picks = sorted({order[int(round(q * (len(order) - 1)))] for q in np.linspace(0, 1, min(rows, len(order)))})
    picks = sorted(picks, key=lambda i: truth.loc[i, "lesion_volume_ml"])
    figure = Figure(figsize=(10, 4.0 * len(picks)), layout="constrained")
    axes = figure.subplots(len(picks), 3, squeeze=False)
    for row, index in enumerate(picks):
        record = truth.loc[index]
        # shown in RAS whatever the storage orientation (the default T1 is RAS already: used as stored)
        t1_image = nib.as_closest_canonical(nib.load(str(root / record["paths"]["t1"])))
        t1 = t1_image.get_fdata(dtype=np.float32)
        t2_image = nib.load(str(root / record["paths"]["t2"]))
        t2 = resample_from_to(t2_image, t1_image, order=1).get_fdata(dtype=np.float32)
        mask = np.asarray(nib.as_closest_canonical(nib.load(str(root / record["paths"]["lesion"]))).dataobj)
        per_slice = mask.sum(axis=(0, 1))
        # RAS: the third axis is inferior -> superior
        k = int(np.argmax(per_slice)) if per_slice.any() else int(np.argmax((t1 > 0).sum(axis=(0, 1))))
        # crop every column of the row to the brain on this slice
        rows_, cols_ = np.nonzero(t1[:, :, k].T > 0)
        crop = (
            (slice(max(rows_.min() - 3, 0), rows_.max() + 4), slice(max(cols_.min() - 3, 0), cols_.max() + 4))
            if rows_.size
            else (slice(None), slice(None))
        )
        for column, (image, title) in enumerate([(t1, "T1"), (t2, "T2 (on T1 grid)"), (t1, "T1 + lesion mask")]):
            ax = axes[row, column]
            plane = image[:, :, k].T[crop]
            brain = plane[plane > 0]
            top = float(np.percentile(brain, 99.5)) if brain.size else 1.0
            ax.imshow(plane, cmap="gray", origin="lower", vmin=0, vmax=top, interpolation="nearest")
            if column == 2 and mask[:, :, k].any():
                ax.contour(mask[:, :, k].T[crop], levels=[0.5], colors="red", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title)
        axes[row, 0].set_ylabel(
            f"{record['MRI_ID']}  {record['sex']} {record['age']:.0f} y\n"
            f"EDSS {record['edss']:g}, lesions {record['lesion_volume_ml']:.1f} mL\nz index {k}",
            fontsize=9,
        )
    figure.suptitle("monai-ms synthetic cohort (MNI ICBM152 2009c derived); axial, R on the right", fontsize=10)
    save_figure(figure, root / "preview.png")
