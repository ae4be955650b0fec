"""Brain age reports: the evaluation report (MAE, gap, age-bias fit) and the inference table.

The gap and its correction: :mod:`monai_ms.engines.metrics.brain_age`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ignite.engine import Engine

from monai_ms.engines.handlers.common import PredictionCollector, PredictionTableHandler
from monai_ms.engines.handlers.report import ReportHandler, ReportParts, subjects_of
from monai_ms.engines.metrics.bootstrap import DEFAULT_RESAMPLES
from monai_ms.engines.metrics.brain_age import MIN_SLOPE, AgeBias, brain_age_gap, fit_age_bias, gap_summary, load_age_bias
from monai_ms.engines.metrics.scores import regression_baselines, regression_metrics
from monai_ms.io import save_figure, sha256_file, write_csv, write_json

__all__ = ["BrainAgeReportHandler", "BrainAgeTableHandler"]

logger = logging.getLogger(__name__)


class BrainAgeReportHandler(ReportHandler, PredictionCollector):
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
        bias_correction: measure its features on N4-corrected images (the bundle's ``bias_correction``).

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
        bias_correction: bool = False,
    ) -> None:
        self.imaging_task, self.bias_correction = imaging_task, bool(bias_correction)
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

    def build(self) -> ReportParts:
        entries = [self.entries[i] for i in self.ids]
        age = np.asarray(self.labels, dtype=np.float64)
        pred = np.asarray(self.preds, dtype=np.float64)
        model = regression_metrics(pred, age)
        baselines = regression_baselines(
            self.train_entries, entries, "age", linear_on_demographics=False, imaging_task=self.imaging_task,
            bias_correction=self.bias_correction,
        )
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

        return ReportParts(report, frame, compute, subjects_of(entries), {"bias": bias})

    def after_write(self, parts: ReportParts) -> None:
        bias = parts.extra["bias"]
        if bias is not None and self.bias_file is not None and not isinstance(self.calibration, AgeBias):
            write_json(bias.to_dict(), self.bias_file)
        self._plot(parts.table, parts.report["model"], bias)

    def summary(self, parts: ReportParts) -> str:
        model = parts.report["model"]
        values = ", ".join(f"{k}={v:.3f}" for k, v in model.items() if isinstance(v, float))
        median = parts.report["baselines"]["training_median"]["mae"]
        return f"evaluated {model['n']} sessions: {values} (training-median MAE {median:.3f}); written to {self.output_dir}"

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
