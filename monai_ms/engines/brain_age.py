"""Brain age: the brain-age gap with the usual linear age-bias correction, and the bundle's reports.

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
import pandas as pd
from ignite.engine import Engine, Events
from scipy import stats

from monai_ms.engines.bootstrap import DEFAULT_RESAMPLES
from monai_ms.engines.evaluation_report import finish_report, subjects_of, write_sidecar
from monai_ms.engines.handlers import PredictionCollector, PredictionTableHandler
from monai_ms.engines.metrics import regression_baselines, regression_metrics
from monai_ms.io import save_figure, sha256_file, write_csv, write_json

__all__ = [
    "AgeBias",
    "fit_age_bias",
    "brain_age_gap",
    "gap_summary",
    "file_sha256",
    "load_age_bias",
    "BrainAgeReportHandler",
    "BrainAgeTableHandler",
]

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


class BrainAgeReportHandler(PredictionCollector):
    """At the end of an evaluation run, write the brain-age ``metrics.json``, ``predictions.csv`` and ``scatter.png``.

    The age-bias correction is fitted on the predictions of the ``calibration`` collector, which a
    second evaluator fills by running the same checkpoint over the validation split first (see the
    brain_age bundle's ``evaluate.json``). ``metrics.json`` holds MAE, dataset-level RMSE, Pearson r and
    R^2 of the uncorrected predictions, the same for the training-median baseline (each with a 95%
    subject-bootstrap interval, ``ci95``), whether the model's MAE beats the baseline's
    (``beats_baselines``), the run's ``provenance``, the fitted correction, and the raw and corrected
    gap's mean, SD, mean absolute value and correlation with age. ``predictions.provenance.json``
    records the provenance beside the table.

    Args:
        output_dir: folder of the three files.
        entries: manifest entries of the evaluated split.
        train_entries: manifest entries of the training split (baseline).
        calibration: the collector of the validation run (``PredictionCollector``), a fixed
            :class:`AgeBias`, or ``None`` (no correction).
        bias_file: where to save the fitted correction for inference (``models/age_bias.json``), or ``None``.
        checkpoint: the evaluated checkpoint; its SHA-256 is recorded in ``bias_file``.
        min_slope: see :func:`fit_age_bias`.
        extra_columns: manifest keys copied to ``predictions.csv``.
        provenance: the run's provenance (``monai_ms.bundle.evaluation_provenance``), or ``None``.
        n_resamples: bootstrap resamples of the intervals (0: none).
        seed: bootstrap seed.
        imaging_task: add the imaging-feature baseline of this task (``"brain_age"``), or None.

    Raises:
        RuntimeError: at write time, ``calibration`` is a collector that has collected nothing (the
            validation run was not started first).
    """

    def __init__(
        self,
        output_dir: str | Path,
        entries: Sequence[Mapping[str, Any]],
        train_entries: Sequence[Mapping[str, Any]],
        calibration: PredictionCollector | AgeBias | None = None,
        bias_file: str | Path | None = None,
        checkpoint: str | Path | None = None,
        min_slope: float = MIN_SLOPE,
        extra_columns: Sequence[str] = ("subject", "sex"),
        provenance: Mapping[str, Any] | None = None,
        n_resamples: int = DEFAULT_RESAMPLES,
        seed: int = 0,
        imaging_task: str | None = None,
    ) -> None:
        self.imaging_task = imaging_task
        super().__init__(id_key="session", pred_key="pred", label_key="label")
        self.output_dir = Path(output_dir)
        self.entries = {str(e["session"]): e for e in entries}
        self.train_entries = list(train_entries)
        self.provenance = provenance
        self.n_resamples, self.seed = int(n_resamples), int(seed)
        self.calibration = calibration
        self.bias_file = None if bias_file is None else Path(bias_file)
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.min_slope = min_slope
        self.extra_columns = list(extra_columns)

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def fit_bias(self) -> tuple[AgeBias | None, str]:
        """The age-bias correction from the calibration run, and a note on how it was obtained."""
        if self.calibration is None:
            return None, "no calibration split given"
        if isinstance(self.calibration, AgeBias):
            return self.calibration, "given"
        if not self.calibration.preds:
            raise RuntimeError(
                "the age-bias calibration collected no predictions: run the validation-split evaluator "
                "(evaluate#calibration#evaluator) before the evaluator this report is attached to"
            )
        sha = sha256_file(self.checkpoint) if self.checkpoint is not None and self.checkpoint.is_file() else None
        try:
            bias = fit_age_bias(self.calibration.preds, self.calibration.labels, self.min_slope, "validation", sha)
        except ValueError as error:
            logger.warning(f"brain-age gap left uncorrected: {error}")
            return None, str(error)
        return bias, f"fitted on {bias.n} validation sessions"

    def write(self, engine: Engine | None = None) -> dict[str, Any]:
        entries = [self.entries[i] for i in self.ids]
        age = np.asarray(self.labels, dtype=np.float64)
        pred = np.asarray(self.preds, dtype=np.float64)
        model = regression_metrics(pred, age)
        baselines = regression_baselines(self.train_entries, entries, "age", linear_on_demographics=False, imaging_task=self.imaging_task)
        bias, note = self.fit_bias()
        gaps = brain_age_gap(pred, age, bias)

        frame = pd.DataFrame({"session": self.ids})
        for column in self.extra_columns:
            frame[column] = [e.get(column) for e in entries]
        frame["age"] = age
        frame["age_pred"] = pred
        frame["brain_age_gap"] = gaps["gap"]
        frame["age_pred_corrected"] = gaps.get("predicted_corrected", np.full_like(pred, np.nan))
        frame["brain_age_gap_corrected"] = gaps.get("gap_corrected", np.full_like(pred, np.nan))
        predictions = {name: np.asarray(result.pop("predictions")) for name, result in baselines.items()}
        for name, values in predictions.items():
            frame[f"baseline_{name}"] = values

        correction: dict[str, Any] = {"applied": bias is not None, "note": note, "formula": "(age_pred - intercept) / slope"}
        if bias is not None:
            correction.update(bias.to_dict())
        gap_report = {"bias_correction": correction, "uncorrected": gap_summary(gaps["gap"], age)}
        if bias is not None:
            gap_report["corrected"] = gap_summary(gaps["gap_corrected"], age)
        report = {"target": "age", "model": model, "baselines": baselines, "brain_age_gap": gap_report}

        def compute(index: np.ndarray) -> dict[str, dict[str, Any]]:
            out = {"model": regression_metrics(pred[index], age[index])}
            out.update({name: regression_metrics(values[index], age[index]) for name, values in predictions.items()})
            return out

        finish_report(report, compute, subjects_of(entries), "mae", True, self.provenance, self.n_resamples, self.seed)
        write_json(report, self.output_dir / "metrics.json")
        write_csv(frame, self.output_dir / "predictions.csv")
        write_sidecar(self.output_dir / "predictions.csv", self.provenance, frame.columns, len(frame))
        if bias is not None and self.bias_file is not None and not isinstance(self.calibration, AgeBias):
            write_json(bias.to_dict(), self.bias_file)
        self._plot(frame, model, bias)
        summary = ", ".join(f"{k}={v:.3f}" for k, v in model.items() if isinstance(v, float))
        median = baselines["training_median"]["mae"]
        logger.info(f"evaluated {model['n']} sessions: {summary} (training-median MAE {median:.3f}); written to {self.output_dir}")
        return report

    def _plot(self, frame: pd.DataFrame, model: Mapping[str, float], bias: AgeBias | None) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4.2))
        age, pred = frame["age"], frame["age_pred"]
        low, high = float(min(age.min(), pred.min())), float(max(age.max(), pred.max()))
        span = np.array([low, high])
        left.plot(span, span, color="grey", linestyle="--", linewidth=1, label="identity")
        if bias is not None:
            left.plot(span, bias.intercept + bias.slope * span, color="tab:red", linewidth=1, label="age bias (validation fit)")
        left.scatter(age, pred, s=18, alpha=0.8, label="sessions")
        left.set(xlabel="chronological age (years)", ylabel="predicted age (years)",
                 title=f"MAE {model['mae']:.1f} y, r {model['pearson_r']:.2f}, n {model['n']}")
        left.legend(loc="upper left", fontsize=8)
        right.axhline(0.0, color="grey", linestyle="--", linewidth=1)
        right.scatter(age, frame["brain_age_gap"], s=18, alpha=0.8, label="raw gap")
        if bias is not None:
            right.scatter(age, frame["brain_age_gap_corrected"], s=18, alpha=0.8, marker="s", label="bias-corrected gap")
        right.set(xlabel="chronological age (years)", ylabel="brain-age gap (years)", title="brain-age gap")
        right.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        save_figure(fig, self.output_dir / "scatter.png")
        plt.close(fig)


class BrainAgeTableHandler(PredictionTableHandler):
    """Inference table of the brain-age bundle: predicted age per session, and the gap where age is known.

    Columns: ``session``, ``age_pred``, ``age_pred_corrected`` (with a valid correction), then where the
    manifest gives ``age``: ``age``, ``brain_age_gap`` and ``brain_age_gap_corrected``; ``model_version``.

    Args:
        output_file: the CSV to write.
        entries: manifest entries of the inferred split (for ``age``).
        bias_file: the ``age_bias.json`` saved by evaluation, or ``None``; see :func:`load_age_bias`.
        checkpoint: the checkpoint in use (the correction must belong to it).
        model_version: recorded in every row.
        provenance: the run's provenance, written beside the table (see :class:`PredictionTableHandler`).
    """

    def __init__(
        self,
        output_file: str | Path,
        entries: Sequence[Mapping[str, Any]],
        bias_file: str | Path | None = None,
        checkpoint: str | Path | None = None,
        model_version: str = "",
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(output_file, value_name="age_pred", model_version=model_version, provenance=provenance)
        self.entries = {str(e["session"]): e for e in entries}
        self.bias_file = bias_file
        self.checkpoint = checkpoint

    def write(self, engine: Engine | None = None) -> pd.DataFrame:
        bias = load_age_bias(self.bias_file, self.checkpoint)
        pred = np.asarray(self.preds, dtype=np.float64)
        age = np.array([_age_or_nan(self.entries[i].get("age")) for i in self.ids], dtype=np.float64)
        gaps = brain_age_gap(pred, age, bias)
        frame = pd.DataFrame({"session": self.ids, "age_pred": pred})
        if bias is not None:
            frame["age_pred_corrected"] = gaps["predicted_corrected"]
        if np.isfinite(age).any():
            frame["age"] = age
            frame["brain_age_gap"] = gaps["gap"]
            if bias is not None:
                frame["brain_age_gap_corrected"] = gaps["gap_corrected"]
        frame["model_version"] = self.model_version
        write_csv(frame, self.output_file)
        self.write_provenance(frame)
        logger.info(f"wrote {len(frame)} brain-age predictions to {self.output_file}")
        return frame


def _age_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
