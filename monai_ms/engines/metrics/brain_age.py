"""Brain age: the brain-age gap with the usual linear age-bias correction (pure functions; the reports: handlers).

A brain-age model regresses towards the training mean: it over-estimates the young and under-estimates
the old, so the raw gap (predicted minus chronological age) correlates with age. The usual correction
(Cole et al. 2018; de Lange and Cole 2020) fits ``predicted = a + b * age`` on a held-out split (here the
validation split, never the test split) and corrects ``corrected = (predicted - a) / b``; the corrected
gap ``corrected - age`` is then uncorrelated with age on that split. Dividing by ``b`` amplifies the
model's noise by ``1 / b``, so a fit with ``b <= min_slope`` is refused and the corrected columns stay
empty. Accuracy (MAE, r) is always reported on the uncorrected predictions: the correction uses the true
ages, so corrected accuracy would flatter the model.

The correction is fitted at evaluation and saved next to the checkpoint (``models/age_bias.json``) with
the checkpoint's SHA-256, so inference on new scans applies the same correction, and only to that model.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from monai_ms.io import sha256_file

__all__ = ["AgeBias", "fit_age_bias", "brain_age_gap", "gap_summary", "file_sha256", "load_age_bias"]


logger = logging.getLogger(__name__)

MIN_SLOPE = 0.1


@dataclass(frozen=True)
class AgeBias:
    """A fitted linear age bias ``predicted = intercept + slope * age`` and its inverse.

    Args:
        intercept: ``a`` in years.
        slope: ``b`` (> 0).
        n: sessions the fit used.
        split: the split it was fitted on.
        checkpoint_sha256: SHA-256 of the model checkpoint whose predictions were fitted, if known.

    Examples:
        >>> AgeBias(intercept=20.0, slope=0.5, n=10).correct([40.0]).tolist()
        [40.0]
    """

    intercept: float
    slope: float
    n: int
    split: str = "validation"
    checkpoint_sha256: str | None = None

    def correct(self, predicted: Sequence[float] | np.ndarray) -> np.ndarray:
        """Bias-corrected predicted age ``(predicted - intercept) / slope``, shape as ``predicted``."""
        return (np.asarray(predicted, dtype=np.float64) - self.intercept) / self.slope

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "age bias") -> AgeBias:
        """Build from a dict as written by :meth:`to_dict`, checking the values.

        Raises:
            ValueError: a missing or non-finite intercept/slope, or a slope <= 0; names ``source``.
        """
        try:
            intercept, slope = float(values["intercept"]), float(values["slope"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: needs numeric 'intercept' and 'slope', got {dict(values)!r} ({error})") from None
        if not (math.isfinite(intercept) and math.isfinite(slope)) or slope <= 0:
            raise ValueError(f"{source}: intercept must be finite and slope > 0, got intercept={intercept}, slope={slope}")
        return cls(
            intercept=intercept,
            slope=slope,
            n=int(values.get("n", 0)),
            split=str(values.get("split", "validation")),
            checkpoint_sha256=values.get("checkpoint_sha256"),
        )


def fit_age_bias(
    predicted: Sequence[float] | np.ndarray,
    age: Sequence[float] | np.ndarray,
    min_slope: float = MIN_SLOPE,
    split: str = "validation",
    checkpoint_sha256: str | None = None,
) -> AgeBias:
    """Least-squares fit of ``predicted = a + b * age`` (the age bias of a brain-age model).

    Args:
        predicted: predicted ages of the calibration split, shape ``(N,)``.
        age: chronological ages, shape ``(N,)``.
        min_slope: refuse slopes ``<= min_slope`` (the correction would amplify noise more than ``1/min_slope``).
        split: recorded name of the calibration split.
        checkpoint_sha256: recorded identity of the model.

    Returns:
        the fitted :class:`AgeBias`.

    Raises:
        ValueError: fewer than 3 sessions, a constant age, non-finite values, or a slope ``<= min_slope``.

    Examples:
        >>> bias = fit_age_bias([35.0, 40.0, 45.0], [30.0, 40.0, 50.0])
        >>> round(bias.intercept, 6), round(bias.slope, 6)
        (20.0, 0.5)
    """
    pred = np.asarray(predicted, dtype=np.float64).ravel()
    true = np.asarray(age, dtype=np.float64).ravel()
    if pred.shape != true.shape:
        raise ValueError(f"predicted and age must have equal length, got {pred.size} and {true.size}")
    if pred.size < 3:
        raise ValueError(f"the age-bias fit needs at least 3 {split} sessions, got {pred.size}")
    if not (np.isfinite(pred).all() and np.isfinite(true).all()):
        raise ValueError("the age-bias fit got non-finite predicted or true ages")
    if np.ptp(true) == 0:
        raise ValueError(f"the age-bias fit needs different ages in the {split} split, all are {true[0]:g}")
    fit = stats.linregress(true, pred)
    if not fit.slope > min_slope:
        raise ValueError(
            f"age-bias slope on the {split} split is {fit.slope:.3f} (must be > {min_slope}): the model's "
            f"predictions barely follow age there, and dividing by the slope would amplify noise {1 / max(fit.slope, 1e-9):.0f}-fold"
        )
    return AgeBias(float(fit.intercept), float(fit.slope), int(pred.size), split, checkpoint_sha256)


def brain_age_gap(
    predicted: Sequence[float] | np.ndarray, age: Sequence[float] | np.ndarray, bias: AgeBias | None = None
) -> dict[str, np.ndarray]:
    """Brain-age gap per session, raw and (with ``bias``) corrected.

    Args:
        predicted: predicted ages, shape ``(N,)``.
        age: chronological ages, shape ``(N,)`` (NaN where unknown: the gaps are NaN there).
        bias: the validation split's :class:`AgeBias`, or ``None``.

    Returns:
        ``{"gap": predicted - age}`` and, with ``bias``, ``"predicted_corrected"`` and ``"gap_corrected"``
        (``predicted_corrected - age``); each of shape ``(N,)``.

    Examples:
        >>> gaps = brain_age_gap([35.0, 50.0], [30.0, 50.0], AgeBias(intercept=20.0, slope=0.5, n=3))
        >>> gaps["gap"].tolist(), gaps["gap_corrected"].tolist()
        ([5.0, 0.0], [0.0, 10.0])
    """
    pred = np.asarray(predicted, dtype=np.float64).ravel()
    true = np.asarray(age, dtype=np.float64).ravel()
    if pred.shape != true.shape:
        raise ValueError(f"predicted and age must have equal length, got {pred.size} and {true.size}")
    result = {"gap": pred - true}
    if bias is not None:
        corrected = bias.correct(pred)
        result["predicted_corrected"] = corrected
        result["gap_corrected"] = corrected - true
    return result


def gap_summary(gap: Sequence[float] | np.ndarray, age: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Mean, standard deviation, mean absolute value of a gap and its Pearson correlation with age.

    The correlation is NaN when it is undefined (constant gap or age, fewer than 2 sessions).

    Examples:
        >>> gap_summary([1.0, -1.0, 3.0], [30.0, 40.0, 50.0])["mean"]
        1.0
    """
    gap = np.asarray(gap, dtype=np.float64).ravel()
    age = np.asarray(age, dtype=np.float64).ravel()
    defined = gap.size > 1 and np.ptp(gap) > 0 and np.ptp(age) > 0
    return {
        "mean": float(gap.mean()),
        "sd": float(gap.std(ddof=1)) if gap.size > 1 else float("nan"),
        "mean_abs": float(np.abs(gap).mean()),
        "pearson_r_with_age": float(stats.pearsonr(gap, age).statistic) if defined else float("nan"),
    }


file_sha256 = sha256_file
"""Kept for compatibility: :func:`monai_ms.io.sha256_file` under its old name (the project's one file digest)."""


def load_age_bias(path: str | Path | None, checkpoint: str | Path | None = None) -> AgeBias | None:
    """Read a saved age-bias correction; ``None`` (with a warning) when absent or fitted for another model.

    Args:
        path: ``age_bias.json`` as written by :class:`BrainAgeReportHandler`, or ``None``.
        checkpoint: the checkpoint in use; its SHA-256 must match the recorded one.

    Returns:
        the correction, or ``None`` when there is none for this checkpoint.

    Raises:
        ValueError: the file exists but is not a valid correction (names the file).
    """
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        logger.warning(f"no age-bias correction at {path} (run the bundle's 'evaluating' first): writing the uncorrected gap only")
        return None
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable age-bias JSON file ({error})") from None
    if not isinstance(values, Mapping):
        raise ValueError(f"{path}: expected a JSON object with 'intercept' and 'slope', got {type(values).__name__}")
    bias = AgeBias.from_dict(values, source=str(path))
    if checkpoint is not None and bias.checkpoint_sha256 is not None and Path(checkpoint).is_file():
        if sha256_file(checkpoint) != bias.checkpoint_sha256:
            logger.warning(
                f"{path} was fitted for another checkpoint than {checkpoint} (SHA-256 differs): not applying it; "
                "rerun 'evaluating' to refit the age-bias correction"
            )
            return None
    return bias
