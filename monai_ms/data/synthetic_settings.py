"""The synthetic generator's parameters as one documented, frozen settings object, and named cohort shifts.

:class:`SynthSettings` groups every number of the generative model of :mod:`monai_ms.data.synthetic`
(demographics, anatomy, atrophy, lesions, EDSS, acquisition). Its defaults are the generator's
reference profile (``GENERATOR_VERSION`` 2): ``SynthSettings()`` gives the same bytes as the generator
always did. A cohort records the settings it was made with in its ``cohort.json``.

Settings are recorded overrides, never subclasses: change a few fields with
:meth:`SynthSettings.with_overrides` (a nested dict, as in a JSON file) or apply a named scanner shift
from :data:`SHIFTS` with :meth:`SynthSettings.shifted`. Everything round-trips through JSON
(:meth:`SynthSettings.to_dict` / :meth:`SynthSettings.from_dict`); an unknown key is refused, naming it.

Examples:
    >>> settings = SynthSettings().shifted("noise")
    >>> settings.acquisition.noise_fraction_3t
    (0.0375, 0.075)
    >>> SynthSettings.from_dict(settings.to_dict()) == settings
    True
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "SynthSettings",
    "DemographicsSettings",
    "AnatomySettings",
    "AtrophySettings",
    "LesionSettings",
    "EdssSettings",
    "AcquisitionSettings",
    "SHIFTS",
    "SCANNER_SHIFTS",
    "REFERENCE_AGE",
]

# the age the linear age terms are centred on (atrophy, lesion load, EDSS): "(age - 40)"
REFERENCE_AGE = 40.0

_GROUPS: dict[str, type[_Group]] = {}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _coerce(path: str, value: Any, default: Any) -> Any:
    """``value`` in the type of ``default`` (lists become tuples, ints become floats), or ValueError."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"setting {path!r} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"setting {path!r} must be an integer, got {value!r}")
        return value
    if isinstance(default, float) or default is None:
        if value is None and default is None:
            return None
        if not _is_number(value):
            raise ValueError(f"setting {path!r} must be a finite number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"setting {path!r} must be a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"setting {path!r} must be a list, got {value!r}")
        if default and isinstance(default[0], tuple):  # a list of records (any length, at least one)
            if not value:
                raise ValueError(f"setting {path!r} must not be empty")
            return tuple(_coerce(f"{path}[{i}]", item, default[0]) for i, item in enumerate(value))
        if len(value) != len(default):
            raise ValueError(f"setting {path!r} must have {len(default)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(f"{path}[{i}]", item, d) for i, (item, d) in enumerate(zip(value, default)))
    raise TypeError(f"setting {path!r}: unsupported default {default!r}")  # pragma: no cover


def _check(condition: bool, path: str, rule: str, value: Any) -> None:
    if not condition:
        raise ValueError(f"setting {path!r} must be {rule}, got {value!r}")


def _plain(value: Any) -> Any:
    """JSON-ready copy: tuples become lists."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


class _Group:
    """Shared machinery of the settings groups: type coercion, validation, dict round trip."""

    section: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _GROUPS[cls.section] = cls

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            path = f"{self.section}.{f.name}"
            object.__setattr__(self, f.name, _coerce(path, getattr(self, f.name), f.default))
        self._validate()

    def _validate(self) -> None:  # pragma: no cover - every group overrides it
        pass

    def _path(self, name: str) -> str:
        return f"{self.section}.{name}"

    def _fraction(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, self._path(name), "in [0, 1]", value)

    def _non_negative(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            _check(value >= 0, self._path(name), ">= 0", value)

    def _positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            _check(value > 0, self._path(name), "> 0", value)

    def _range(self, name: str, low: float | None = None, high: float | None = None) -> None:
        value = getattr(self, name)
        _check(value[0] <= value[1], self._path(name), "a [low, high] pair with low <= high", list(value))
        if low is not None:
            _check(value[0] >= low, self._path(name), f"within [{low:g}, ...]", list(value))
        if high is not None:
            _check(value[1] <= high, self._path(name), f"within [..., {high:g}]", list(value))

    def to_dict(self) -> dict[str, Any]:
        """The group as a JSON-ready dict (tuples as lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Any:
        """A group from a (partial) dict: missing keys keep their defaults, unknown keys raise ValueError."""
        if not isinstance(values, Mapping):
            raise ValueError(f"setting {cls.section!r} must be an object of settings, got {values!r}")
        known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        for key in values:
            if key not in known:
                raise ValueError(
                    f"unknown setting {cls.section + '.' + str(key)!r} ({cls.section} settings: {', '.join(known)})"
                )
        return cls(**values)


@dataclass(frozen=True)
class DemographicsSettings(_Group):
    """Who is scanned, and when.

    Attributes:
        female_fraction: share of female subjects (MS: about 70 %).
        age_range: ``(low, high)`` years; age at the first scan is ``low + (high - low) Beta(a, b)``.
        age_beta: ``(a, b)`` of that Beta distribution (2, 2.6: mean about 39 years, sd about 10).
        second_session_fraction: share of subjects with a second (follow-up) session.
        interval_years: ``(low, high)`` uniform range of the years between the two sessions.
        scanner_3t_fraction: share of subjects first scanned at 3T (the rest at 1.5T).
        scanner_change_fraction: share of follow-ups done on the other field strength.
        first_scan_dates: ``(first, last)`` ISO dates (``YYYY-MM-DD``) between which the first scan falls
            (uniform); the date of birth is the scan date minus the age.
    """

    section: ClassVar[str] = "demographics"

    female_fraction: float = 0.70
    age_range: tuple[float, float] = (18.0, 65.0)
    age_beta: tuple[float, float] = (2.0, 2.6)
    second_session_fraction: float = 0.30
    interval_years: tuple[float, float] = (1.0, 3.0)
    scanner_3t_fraction: float = 0.6
    scanner_change_fraction: float = 0.2
    first_scan_dates: tuple[str, str] = ("2008-01-01", "2022-12-31")

    def _validate(self) -> None:
        self._fraction("female_fraction", "second_session_fraction", "scanner_3t_fraction", "scanner_change_fraction")
        self._range("age_range", low=0.0, high=120.0)
        _check(min(self.age_beta) > 0, self._path("age_beta"), "two positive numbers", list(self.age_beta))
        self._range("interval_years", low=0.0)
        dates = []
        for text in self.first_scan_dates:
            try:
                dates.append(datetime.date.fromisoformat(text))
            except ValueError:
                _check(False, self._path("first_scan_dates"), "two ISO dates (YYYY-MM-DD)", list(self.first_scan_dates))
        _check(dates[0] <= dates[1], self._path("first_scan_dates"), "in order (first <= last)", list(self.first_scan_dates))

    @property
    def scan_dates(self) -> tuple[datetime.date, datetime.date]:
        """``first_scan_dates`` as :class:`datetime.date` objects."""
        first, last = self.first_scan_dates
        return datetime.date.fromisoformat(first), datetime.date.fromisoformat(last)


@dataclass(frozen=True)
class AnatomySettings(_Group):
    """Head size and shape of each subject.

    Attributes:
        head_scale_mean_female: mean global scale of a female head relative to the MNI template (whose brain
            mask holds 1.89 L); 0.93 gives about 1.6 L.
        head_scale_mean_male: the same for men; 0.985 (6 % larger per dimension, 19 % in volume).
        head_scale_sd: sd of the head scale around the sex's mean.
        head_scale_range: ``(low, high)`` the head scale is clipped to.
        deformation_sd_mm: sd (mm) of each component of the random displacements at the control points of the
            subject's smooth nonlinear shape.
        deformation_control_mm: spacing (mm) of those control points (cubic interpolation in between).
        deformation_max_mm: displacement components are clipped to +-this many mm (at most 6.9: the warp must
            stay within the 12 mm margin the renderer looks at around the brain).
    """

    section: ClassVar[str] = "anatomy"

    head_scale_mean_female: float = 0.93
    head_scale_mean_male: float = 0.985
    head_scale_sd: float = 0.03
    head_scale_range: tuple[float, float] = (0.85, 1.08)
    deformation_sd_mm: float = 2.0
    deformation_control_mm: float = 32.0
    deformation_max_mm: float = 6.0

    def _validate(self) -> None:
        self._positive("head_scale_mean_female", "head_scale_mean_male", "deformation_control_mm")
        self._non_negative("head_scale_sd", "deformation_sd_mm", "deformation_max_mm")
        self._range("head_scale_range", low=0.5, high=1.5)
        # the renderer skips template points further than 12 mm from the brain (SUPPORT_MARGIN_MM)
        _check(self.deformation_max_mm * math.sqrt(3) < 12.0, self._path("deformation_max_mm"), "< 6.9 mm",
               self.deformation_max_mm)

    def head_scale_mean(self, sex: str) -> float:
        """Mean head scale of ``sex`` (``"F"`` or ``"M"``)."""
        return self.head_scale_mean_female if sex == "F" else self.head_scale_mean_male


@dataclass(frozen=True)
class AtrophySettings(_Group):
    """Disease atrophy (drives EDSS), normal ageing, and how atrophy shows in the images.

    The latent disease severity is ``D ~ N(0, 1)``. Disease atrophy at the first session is
    ``intercept + per_disease D + per_year_of_age (age - 40) + N(0, sd)``, clipped to [0, 1], and grows by
    ``rate_per_year + rate_per_disease max(D + 1, 0)`` per year until a follow-up. The images show the
    *image atrophy* ``min(1, atrophy + ageing_per_year max(age - ageing_from_age, 0))``.

    Attributes:
        intercept: disease atrophy of an average subject (D = 0) aged 40.
        per_disease: disease atrophy per sd of disease severity.
        per_year_of_age: disease atrophy per year of age (the age effect on atrophy).
        sd: sd of the subject's random atrophy term.
        rate_per_year: disease-atrophy growth per year between sessions, at D <= -1.
        rate_per_disease: extra growth per year per unit of ``max(D + 1, 0)``.
        ageing_per_year: image atrophy added per year of age after ``ageing_from_age`` (normal brain
            ageing; EDSS does not see it), so brain age is learnable and separate from disease.
        ageing_from_age: age (years) at which normal ageing starts to count.
        ventricle_expansion_mm: ventricle wall shift (mm) at image atrophy 1.
        ventricle_flow_sigma_mm: sd (mm) of the Gaussian smoothing of the ventricle mask whose gradient
            carries the template towards the ventricles (template-derived map).
        ventricle_flow_steps: integration steps of that flow (more steps: smoother, never folding).
        cortical_thinning: share of the grey matter next to sulcal CSF that becomes CSF at image atrophy 1.
        cortex_depth_mm: decay length (mm) of that effect away from sulcal CSF (template-derived map).
    """

    section: ClassVar[str] = "atrophy"

    intercept: float = 0.25
    per_disease: float = 0.17
    per_year_of_age: float = 0.008
    sd: float = 0.07
    rate_per_year: float = 0.015
    rate_per_disease: float = 0.02
    ageing_per_year: float = 0.014
    ageing_from_age: float = 18.0
    ventricle_expansion_mm: float = 5.0
    ventricle_flow_sigma_mm: float = 4.0
    ventricle_flow_steps: int = 4
    cortical_thinning: float = 0.6
    cortex_depth_mm: float = 2.0

    def _validate(self) -> None:
        self._non_negative("sd", "ageing_per_year", "ventricle_expansion_mm")
        self._fraction("cortical_thinning")
        self._positive("ventricle_flow_sigma_mm", "ventricle_flow_steps", "cortex_depth_mm")
        _check(self.ventricle_expansion_mm <= 10.0, self._path("ventricle_expansion_mm"), "<= 10 mm",
               self.ventricle_expansion_mm)


@dataclass(frozen=True)
class LesionSettings(_Group):
    """White-matter lesions: how many, how large, where, what shape and contrast.

    Attributes:
        lesion_free_logit_intercept: ``a`` of ``P(no lesions) = sigmoid(a + b D)`` per subject.
        lesion_free_logit_per_disease: ``b`` of that model.
        load_log_ml_intercept: ``a`` of the total lesion load ``exp(N(a + b D + c (age - 40), sd))`` mL.
        load_log_ml_per_disease: ``b``: log-load per sd of disease severity.
        load_log_ml_per_year_of_age: ``c``: log-load per year of age.
        load_log_ml_sd: ``sd`` of the log-load.
        load_range_ml: ``(low, high)`` mL the total load is clipped to.
        sizes: lesion volume mixture, one record per component:
            ``(probability, median mm3, log-sd, min mm3, max mm3)`` (lognormal, clipped).
        sizes_tiny: the mixture used by tiny cohorts (fewer, larger lesions that survive 4 mm voxels).
        max_lesions: at most this many lesions per session.
        max_lesions_tiny: the same for tiny cohorts.
        new_per_year_log_intercept: ``a`` of the rate of new lesions per year, ``exp(a + b D)`` (Poisson).
        new_per_year_log_per_disease: ``b`` of that rate.
        new_per_year_lesion_free: rate of new lesions per year of a lesion-free subject.
        growth_probability: chance that a lesion grows before a follow-up.
        growth_volume_factor: ``(low, high)`` uniform volume factor of a grown lesion.
        periventricular_mm: lesion sites within this many mm of the ventricles are periventricular
            (elongated away from the wall: Dawson's fingers).
        periventricular_elongation: ``(low, high)`` uniform elongation of a periventricular lesion.
        axis_log_sd: sd of the log axis ratios of other lesions (random ellipsoids of equal volume).
        roughness: ``(low, high)`` uniform amplitude of the smooth boundary perturbation (fraction of radius).
        border_mm: ``(low, high)`` uniform width (mm) of the soft partial-volume border.
        t1_contrast: ``(low, high)`` uniform T1 contrast of a lesion: the fraction of the way from white-matter
            to CSF intensity (0.2: grey-matter like; 0.85: black hole).
        t2_contrast_intercept: T2 contrast is ``intercept + per_t1 c_T1 + N(0, sd)`` of the way from white
            matter to CSF, clipped to ``t2_contrast_range``.
        t2_contrast_per_t1: ``per_t1`` of that model.
        t2_contrast_sd: ``sd`` of that model.
        t2_contrast_range: ``(low, high)`` the T2 contrast is clipped to (low 0.35: brighter than grey matter).
        site_min_wm: lesion centres lie where the white-matter probability is at least this
            (template-derived map).
        site_floor: lesion-site weight is ``wm (floor + exp(-d / site_decay_mm))`` with ``d`` the distance to
            the ventricles in mm (template-derived map).
        site_decay_mm: decay length (mm) of the periventricular preference.
        infratentorial_weight: weight factor of sites in the brainstem and cerebellum.
    """

    section: ClassVar[str] = "lesions"

    lesion_free_logit_intercept: float = -2.6
    lesion_free_logit_per_disease: float = -1.2
    load_log_ml_intercept: float = 1.25
    load_log_ml_per_disease: float = 0.85
    load_log_ml_per_year_of_age: float = 0.012
    load_log_ml_sd: float = 0.5
    load_range_ml: tuple[float, float] = (0.3, 60.0)
    sizes: tuple[tuple[float, float, float, float, float], ...] = (
        (0.8, 35.0, 1.0, 3.0, 1500.0),
        (0.2, 700.0, 0.6, 200.0, 6000.0),
    )
    sizes_tiny: tuple[tuple[float, float, float, float, float], ...] = (
        (0.6, 250.0, 0.5, 120.0, 1500.0),
        (0.4, 900.0, 0.5, 300.0, 6000.0),
    )
    max_lesions: int = 150
    max_lesions_tiny: int = 12
    new_per_year_log_intercept: float = 0.2
    new_per_year_log_per_disease: float = 0.6
    new_per_year_lesion_free: float = 0.15
    growth_probability: float = 0.25
    growth_volume_factor: tuple[float, float] = (1.15, 1.8)
    periventricular_mm: float = 8.0
    periventricular_elongation: tuple[float, float] = (1.3, 2.2)
    axis_log_sd: float = 0.25
    roughness: tuple[float, float] = (0.1, 0.3)
    border_mm: tuple[float, float] = (0.8, 2.0)
    t1_contrast: tuple[float, float] = (0.2, 0.85)
    t2_contrast_intercept: float = 0.35
    t2_contrast_per_t1: float = 0.45
    t2_contrast_sd: float = 0.08
    t2_contrast_range: tuple[float, float] = (0.35, 1.0)
    site_min_wm: float = 0.7
    site_floor: float = 0.2
    site_decay_mm: float = 6.0
    infratentorial_weight: float = 0.3

    def _validate(self) -> None:
        self._non_negative("load_log_ml_sd", "new_per_year_lesion_free", "axis_log_sd", "t2_contrast_sd")
        self._non_negative("periventricular_mm", "site_floor", "infratentorial_weight")
        self._fraction("growth_probability", "site_min_wm")
        self._positive("max_lesions", "max_lesions_tiny", "site_decay_mm")
        self._range("load_range_ml", low=0.0)
        self._range("growth_volume_factor", low=0.0)
        self._range("periventricular_elongation", low=1.0)
        self._range("roughness", low=0.0, high=0.45)
        self._range("border_mm", low=0.1)
        self._range("t1_contrast", low=0.0, high=1.0)
        self._range("t2_contrast_range", low=0.0, high=1.0)
        for name in ("sizes", "sizes_tiny"):
            for i, (probability, median, log_sd, low, high) in enumerate(getattr(self, name)):
                record = [probability, median, log_sd, low, high]
                rule = "(probability >= 0, median > 0, log-sd >= 0, 0 < min <= max)"
                valid = probability >= 0 and median > 0 and log_sd >= 0 and 0 < low <= high
                _check(valid, f"{self._path(name)}[{i}]", rule, record)
            _check(sum(s[0] for s in getattr(self, name)) > 0, self._path(name), "a mixture with some probability",
                   _plain(getattr(self, name)))


@dataclass(frozen=True)
class EdssSettings(_Group):
    """The EDSS model: ``intercept + lesion ln(1 + load mL) + atrophy a + age (age - 40) + noise``.

    The continuous score is rounded to the nearest 0.5 and clipped to [0, 10].

    Attributes:
        intercept: EDSS of a lesion-free subject without atrophy aged 40.
        lesion: EDSS points per unit of ``ln(1 + lesion load in mL)``.
        atrophy: EDSS points per unit of disease atrophy (0-1).
        age: EDSS points per year of age.
        subject_sd: sd of the subject's noise term (shared by its sessions).
        session_sd: sd of each session's own noise term.
    """

    section: ClassVar[str] = "edss"

    intercept: float = 0.9
    lesion: float = 1.0
    atrophy: float = 3.0
    age: float = 0.015
    subject_sd: float = 0.45
    session_sd: float = 0.25

    def _validate(self) -> None:
        self._non_negative("subject_sd", "session_sd")


_ORIENTATION_RULE = "three axis codes, one of R/L, A/P, S/I each, in that order (e.g. 'RAS', 'LPS')"


@dataclass(frozen=True)
class AcquisitionSettings(_Group):
    """The scanner: grids, orientation, pose, contrast, bias field, noise and intensity scale.

    Voxel sizes are factors of the cohort's ``spacing`` (2 mm by default, 4 mm for tiny cohorts), so a
    setting means the same at any resolution.

    Attributes:
        t1_voxel_factor: T1 voxel size (isotropic) = ``t1_voxel_factor x spacing``.
        t2_inplane_factor: T2 in-plane voxel size = ``t2_inplane_factor x spacing``.
        t2_slice_factor: T2 slice thickness (third axis) = ``t2_slice_factor x spacing`` (1.5: 3 mm at 2 mm).
        t2_slice_samples: sub-slice samples averaged across each T2 slice (the slice profile). 1 samples the
            slice centre only; more give thick slices their through-plane partial volume.
        t1_fov_mm: T1 field of view (mm) per axis.
        t2_fov_extra_mm: ``(low, high)`` uniform extra T2 field of view (mm) per axis.
        t1_orientation: T1 storage orientation: axis codes of the voxel axes, e.g. ``"RAS"`` (the i axis runs
            to the Right, j Anterior, k Superior) or ``"LPS"`` (DICOM-like: negative x and y diagonal).
        t2_orientation: the same for the T2 (default ``"LPS"``).
        rotation_sd_deg: sd (degrees) of the head's rotation about each axis in the scanner.
        rotation_max_deg: rotations are clipped to +-this many degrees.
        translation_sd_mm: sd (mm) of the head's translation along each axis.
        translation_max_mm: translations are clipped to +-this many mm.
        fov_offset_sd_mm: sd (mm) of each field of view's centre around the head's centre, per axis.
        fov_offset_max_mm: those offsets are clipped to +-this many mm.
        t1_csf_wm_ratio: the scanner's T1 CSF / white-matter intensity ratio; ``None`` keeps the template's
            (0.397). With ``t1_gm_wm_ratio`` (both or neither), every template intensity is mapped through the
            monotone piecewise-linear curve that sends the template's CSF, GM and WM means to these ratios of
            the WM mean (slope 1 above WM), before gamma, bias and noise. Must satisfy
            ``0 < csf < gm < 1``.
        t1_gm_wm_ratio: the T1 grey-matter / white-matter ratio (template: 0.773).
        t2_csf_wm_ratio: the T2 CSF / white-matter ratio (template: 2.29); with ``t2_gm_wm_ratio``, must satisfy
            ``1 < gm < csf`` (slope 1 above CSF).
        t2_gm_wm_ratio: the T2 grey-matter / white-matter ratio (template: 1.35).
        gamma_range: ``(low, high)`` uniform contrast gamma per image: ``wm (value / wm) ** gamma``.
        bias_sd: sd of each coefficient of the multiplicative bias field ``exp(quadratic in world x, y, z
            in units of 100 mm)`` drawn per image (0.08: a few percent; 0.25: a strong field).
        noise_fraction_3t: ``(low, high)`` uniform Rician noise sd per image at 3T, as a fraction of the
            white-matter signal.
        noise_fraction_1_5t: the same at 1.5T.
        intensity_scale_range: ``(low, high)`` log-uniform global intensity scale per image.
        flair_inplane_factor: FLAIR in-plane voxel size = ``flair_inplane_factor x spacing`` (written only with
            ``modalities`` including ``flair``; the FLAIR draws from its own random stream, so the T1, T2 and
            masks are the same bytes with or without it).
        flair_slice_factor: FLAIR slice thickness = ``flair_slice_factor x spacing`` (2.0: 4 mm at 2 mm; clinical
            2D FLAIR is thick-sliced).
        flair_slice_samples: sub-slice samples averaged across each FLAIR slice (the slice profile).
        flair_orientation: FLAIR storage orientation (default ``"LAS"``, a third convention beside T1 and T2).
        flair_csf_wm_ratio: FLAIR CSF / white-matter intensity (the inversion pulse suppresses CSF).
        flair_gm_wm_ratio: FLAIR grey-matter / white-matter intensity.
        flair_lesion_wm_ratio: FLAIR intensity of the brightest lesion / white matter; a lesion's brightness
            goes from white matter to this with its T2 contrast (``lesions.t2_contrast_*``).
    """

    section: ClassVar[str] = "acquisition"

    t1_voxel_factor: float = 1.0
    t2_inplane_factor: float = 1.0
    t2_slice_factor: float = 1.5
    t2_slice_samples: int = 1
    t1_fov_mm: tuple[float, float, float] = (216.0, 248.0, 224.0)
    t2_fov_extra_mm: tuple[float, float] = (0.0, 16.0)
    t1_orientation: str = "RAS"
    t2_orientation: str = "LPS"
    rotation_sd_deg: float = 2.0
    rotation_max_deg: float = 5.0
    translation_sd_mm: float = 4.0
    translation_max_mm: float = 10.0
    fov_offset_sd_mm: float = 2.0
    fov_offset_max_mm: float = 5.0
    t1_csf_wm_ratio: float | None = None
    t1_gm_wm_ratio: float | None = None
    t2_csf_wm_ratio: float | None = None
    t2_gm_wm_ratio: float | None = None
    gamma_range: tuple[float, float] = (0.9, 1.1)
    bias_sd: float = 0.08
    flair_inplane_factor: float = 1.0
    flair_slice_factor: float = 2.0
    flair_slice_samples: int = 3
    flair_orientation: str = "LAS"
    flair_csf_wm_ratio: float = 0.3
    flair_gm_wm_ratio: float = 1.25
    flair_lesion_wm_ratio: float = 1.9
    noise_fraction_3t: tuple[float, float] = (0.015, 0.03)
    noise_fraction_1_5t: tuple[float, float] = (0.025, 0.05)
    intensity_scale_range: tuple[float, float] = (4.0, 12.0)

    def _validate(self) -> None:
        for name in ("t1_voxel_factor", "t2_inplane_factor", "t2_slice_factor", "flair_inplane_factor", "flair_slice_factor"):
            value = getattr(self, name)
            _check(0.25 <= value <= 8.0, self._path(name), "in [0.25, 8]", value)
        _check(1 <= self.t2_slice_samples <= 16, self._path("t2_slice_samples"), "in [1, 16]", self.t2_slice_samples)
        _check(1 <= self.flair_slice_samples <= 16, self._path("flair_slice_samples"), "in [1, 16]", self.flair_slice_samples)
        flair = [self.flair_csf_wm_ratio, self.flair_gm_wm_ratio, self.flair_lesion_wm_ratio]
        _check(0 < flair[0] < 1 < flair[1] < flair[2], self._path("flair_csf_wm_ratio"), "0 < csf < 1 < gm < lesion", flair)
        _check(min(self.t1_fov_mm) >= 32.0, self._path("t1_fov_mm"), "at least 32 mm per axis", list(self.t1_fov_mm))
        self._range("t2_fov_extra_mm", low=0.0)
        for name in ("t1_orientation", "t2_orientation", "flair_orientation"):
            code = getattr(self, name)
            valid = len(code) == 3 and code[0] in "RL" and code[1] in "AP" and code[2] in "SI"
            _check(valid, self._path(name), _ORIENTATION_RULE, code)
        self._non_negative("rotation_sd_deg", "translation_sd_mm", "fov_offset_sd_mm", "bias_sd")
        self._non_negative("rotation_max_deg", "translation_max_mm", "fov_offset_max_mm")
        _check(self.rotation_max_deg <= 45.0, self._path("rotation_max_deg"), "<= 45", self.rotation_max_deg)
        for modality, low, high in (("t1", 0.0, 1.0), ("t2", 1.0, math.inf)):
            csf, gm = getattr(self, f"{modality}_csf_wm_ratio"), getattr(self, f"{modality}_gm_wm_ratio")
            if (csf is None) != (gm is None):
                raise ValueError(
                    f"settings {self._path(modality + '_csf_wm_ratio')!r} and {self._path(modality + '_gm_wm_ratio')!r} "
                    f"must be given together (or both null), got {csf!r} and {gm!r}"
                )
            if csf is not None:
                ordered = low < csf < gm < high if modality == "t1" else low < gm < csf
                rule = "0 < csf < gm < 1" if modality == "t1" else "1 < gm < csf"
                _check(ordered, f"{self._path(modality + '_csf_wm_ratio')} / {modality}_gm_wm_ratio", rule, [csf, gm])
        self._range("gamma_range", low=0.1, high=10.0)
        self._range("noise_fraction_3t", low=0.0, high=1.0)
        self._range("noise_fraction_1_5t", low=0.0, high=1.0)
        self._range("intensity_scale_range")
        _check(self.intensity_scale_range[0] > 0, self._path("intensity_scale_range"), "positive",
               list(self.intensity_scale_range))

    def noise_fraction(self, scanner: str) -> tuple[float, float]:
        """Noise range of a scanner (``"3T"`` or ``"1.5T"``)."""
        return self.noise_fraction_3t if scanner == "3T" else self.noise_fraction_1_5t

    def tissue_ratios(self, modality: str) -> tuple[float, float] | None:
        """``(csf / wm, gm / wm)`` intensity ratios of ``modality`` (``"t1"``/``"t2"``), None for the template's
        (and for the FLAIR, which is drawn from tissue maps with its own ratios)."""
        if modality not in ("t1", "t2"):
            return None
        csf, gm = getattr(self, f"{modality}_csf_wm_ratio"), getattr(self, f"{modality}_gm_wm_ratio")
        return None if csf is None else (csf, gm)

    @staticmethod
    def flips(orientation: str) -> tuple[bool, bool, bool]:
        """Which voxel axes run against world RAS for an orientation code (``"LPS"``: x and y)."""
        return tuple(letter in "LPI" for letter in orientation)  # type: ignore[return-value]


_SECTIONS = ("demographics", "anatomy", "atrophy", "lesions", "edss", "acquisition")


@dataclass(frozen=True)
class SynthSettings:
    """Every parameter of the synthetic generator, grouped; defaults are the reference profile.

    Pass it to :func:`monai_ms.data.synthetic.generate_cohort` and
    :func:`monai_ms.data.synthetic.sample_latents` (``settings=...``); ``None`` there means ``SynthSettings()``.
    Each group's docstring lists its fields with meaning and units (also in ``docs/synthetic_cohort.md``).

    Attributes:
        name: a label recorded in ``cohort.json`` and the cohort's README (shifts set it, e.g. ``"noise"``).
        demographics: :class:`DemographicsSettings` (sex, age, sessions, scanners, dates).
        anatomy: :class:`AnatomySettings` (head size by sex, nonlinear shape).
        atrophy: :class:`AtrophySettings` (disease atrophy, the age effect, ventricles, cortex).
        lesions: :class:`LesionSettings` (lesion load, sizes, sites, shapes, contrast).
        edss: :class:`EdssSettings` (the EDSS model).
        acquisition: :class:`AcquisitionSettings` (grids, orientation, pose, contrast, bias, noise).

    Examples:
        >>> settings = SynthSettings.from_dict({"acquisition": {"bias_sd": 0.25}})
        >>> settings.acquisition.bias_sd, settings.changes()
        (0.25, {'acquisition.bias_sd': 0.25})
        >>> SynthSettings.from_dict({"acquisition": {"bias": 0.25}})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown setting 'acquisition.bias' (acquisition settings: ...)
    """

    name: str = "default"
    demographics: DemographicsSettings = field(default_factory=DemographicsSettings)
    anatomy: AnatomySettings = field(default_factory=AnatomySettings)
    atrophy: AtrophySettings = field(default_factory=AtrophySettings)
    lesions: LesionSettings = field(default_factory=LesionSettings)
    edss: EdssSettings = field(default_factory=EdssSettings)
    acquisition: AcquisitionSettings = field(default_factory=AcquisitionSettings)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"setting 'name' must be a non-empty string, got {self.name!r}")
        for section in _SECTIONS:
            if not isinstance(getattr(self, section), _GROUPS[section]):
                raise ValueError(
                    f"setting {section!r} must be a {_GROUPS[section].__name__}, got {getattr(self, section)!r}"
                )

    # -- JSON round trip ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """All settings as a JSON-ready nested dict: ``{"name": ..., "demographics": {...}, ...}``."""
        return {"name": self.name, **{section: getattr(self, section).to_dict() for section in _SECTIONS}}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SynthSettings:
        """Settings from a (partial) nested dict; missing keys keep their defaults.

        Args:
            values: ``{"name": ..., "<group>": {"<field>": value, ...}, ...}`` as written by :meth:`to_dict`
                (lists for pairs and records).

        Raises:
            ValueError: an unknown group or field (the message names it), or a value of the wrong type or
                out of range (the message gives the rule and the value).
        """
        if not isinstance(values, Mapping):
            raise ValueError(f"synthetic-generator settings must be a JSON object, got {type(values).__name__}")
        known = ("name", *_SECTIONS)
        for key in values:
            if key not in known:
                raise ValueError(f"unknown setting {key!r} (settings groups: {', '.join(known)})")
        groups = {
            section: _GROUPS[section].from_dict(values[section])
            for section in _SECTIONS
            if section in values and not isinstance(values[section], _GROUPS[section])
        }
        groups.update({s: values[s] for s in _SECTIONS if s in values and isinstance(values[s], _GROUPS[s])})
        return cls(**({"name": values["name"]} if "name" in values else {}), **groups)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The settings as indented JSON text; also written to ``path`` when given."""
        text = _dumps(self.to_dict())
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> SynthSettings:
        """Settings from a JSON file (partial files keep the other defaults).

        Raises:
            OSError: the file cannot be read.
            ValueError: not JSON, or a setting is unknown or invalid (the message starts with the path).
        """
        text = Path(path).read_text()
        try:
            return cls.from_dict(json.loads(text))
        except ValueError as error:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{path}: {error}") from None

    # -- overrides and shifts -------------------------------------------------------------------------------
    def with_overrides(self, overrides: Mapping[str, Any]) -> SynthSettings:
        """A copy with some fields changed: ``{"acquisition": {"bias_sd": 0.25}}`` (a nested, partial dict)."""
        merged = self.to_dict()
        for key, value in overrides.items():
            if key in _SECTIONS and isinstance(value, Mapping) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **copy.deepcopy(dict(value))}
            else:
                merged[key] = copy.deepcopy(value)
        return SynthSettings.from_dict(merged)

    def shifted(self, *names: str) -> SynthSettings:
        """These settings with the named shifts of :data:`SHIFTS` applied in order (later ones win).

        The result's ``name`` records them: ``"noise"`` from the defaults, ``"mysite+noise"`` otherwise.

        Raises:
            ValueError: an unknown shift name.
        """
        settings = self
        for shift in names:
            if shift not in SHIFTS:
                raise ValueError(f"unknown cohort shift {shift!r}; known shifts: {', '.join(SHIFTS)}")
            settings = settings.with_overrides(SHIFTS[shift])
        if names:
            label = "+".join(names)
            settings = dataclasses.replace(settings, name=label if self.name == "default" else f"{self.name}+{label}")
        return settings

    def changes(self) -> dict[str, Any]:
        """The fields that differ from the defaults, as ``{"group.field": value}`` (JSON-ready); ``name`` aside."""
        mine, default = self.to_dict(), SynthSettings().to_dict()
        return {
            f"{section}.{key}": value
            for section in _SECTIONS
            for key, value in mine[section].items()
            if value != default[section][key]
        }

    def template_map_key(self) -> tuple[float, ...]:
        """The settings that shape the template-derived maps (computed once per process and per key)."""
        return (
            self.atrophy.cortex_depth_mm,
            self.atrophy.ventricle_flow_sigma_mm,
            self.lesions.site_min_wm,
            self.lesions.site_floor,
            self.lesions.site_decay_mm,
            self.lesions.infratentorial_weight,
        )


def _dumps(settings: dict[str, Any]) -> str:
    """JSON with one line per field (pairs and records stay on their field's line)."""
    lines = []
    for key, value in settings.items():
        if isinstance(value, dict):
            inner = [f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()]
            lines.append(f"  {json.dumps(key)}: {{\n" + ",\n".join(inner) + "\n  }")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _merge(*overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for override in overrides:
        for section, values in override.items():
            merged[section] = {**merged.get(section, {}), **values}
    return merged


# Named shifts: a collaborator's scanner differs from the reference profile in one respect (or all).
# Each is a nested dict of overrides (recorded, JSON-ready); apply with SynthSettings().shifted(name).
SCANNER_SHIFTS: dict[str, dict[str, Any]] = {
    # another sequence / field strength: stronger T1 grey-white and CSF contrast, T2 with brighter CSF
    # and grey matter closer to white matter (template: T1 0.397 / 0.773, T2 2.29 / 1.35)
    "contrast": {
        "acquisition": {"t1_csf_wm_ratio": 0.3, "t1_gm_wm_ratio": 0.66, "t2_csf_wm_ratio": 2.9, "t2_gm_wm_ratio": 1.22}
    },
    # strong smooth bias field (no or poor bias correction, a large receive coil)
    "bias": {"acquisition": {"bias_sd": 0.25}},
    # 2.5x the Rician noise (faster protocol, older scanner)
    "noise": {"acquisition": {"noise_fraction_3t": [0.0375, 0.075], "noise_fraction_1_5t": [0.0625, 0.125]}},
    # 1.3x coarser T1; thick-slice T2 (2.25 x spacing: 4.5 mm at 2 mm) with its through-plane partial volume
    "resolution": {"acquisition": {"t1_voxel_factor": 1.3, "t2_slice_factor": 2.25, "t2_slice_samples": 5}},
    # larger head rotations and translations, and both images stored LPS (DICOM-like)
    "pose": {
        "acquisition": {
            "rotation_sd_deg": 6.0,
            "rotation_max_deg": 15.0,
            "translation_sd_mm": 8.0,
            "translation_max_mm": 20.0,
            "t1_orientation": "LPS",
            "t2_orientation": "LPS",
        }
    },
}
SHIFTS: dict[str, dict[str, Any]] = {**SCANNER_SHIFTS, "all": _merge(*SCANNER_SHIFTS.values())}
