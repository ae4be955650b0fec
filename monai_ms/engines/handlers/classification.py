"""Binary classification (sex) evaluation report: AUC, calibration, confusion matrix, ROC and reliability plots.

Class balance, decisions and baselines: :mod:`monai_ms.engines.metrics.classification`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from monai_ms.data.fields import SEX_CLASSES
from monai_ms.engines.handlers.common import PredictionCollector
from monai_ms.engines.handlers.report import ReportHandler, ReportParts, subjects_of
from monai_ms.engines.metrics.bootstrap import DEFAULT_RESAMPLES
from monai_ms.engines.metrics.classification import (
    class_counts,
    class_from_probability,
    classification_baselines,
    probability_from_logit,
)
from monai_ms.engines.metrics.scores import ECE_BINS, classification_metrics, reliability_bins
from monai_ms.io import save_figure

__all__ = ["ClassificationReportHandler"]

logger = logging.getLogger(__name__)


class ClassificationReportHandler(ReportHandler, PredictionCollector):
    """At the end of an evaluation run, write ``metrics.json``, ``predictions.csv`` and two PNGs.

    Collects the logits of one run, turns them into probabilities (sigmoid) and writes into ``output_dir``:

    - ``metrics.json``: AUC, accuracy, balanced accuracy, Brier score, expected calibration error (``ece``,
      MONAI's ``CalibrationErrorMetric``, ``ECE_BINS`` bins) and confusion matrix (rows = true class,
      columns = predicted, order ``class_names``) of the model and of the baselines of
      :func:`classification_baselines` on the same sessions, each float metric with a 95% subject-bootstrap
      interval (``ci95``); the model's reliability bins (``calibration``); ``beats_baselines`` (AUC against
      the best baseline); ``provenance``; the training split's class counts;
    - ``predictions.csv``: one row per session (true class, probability, predicted class, baselines), and
      ``predictions.provenance.json``;
    - ``roc_curve.png`` (model and brain-volume baseline), ``confusion_matrix.png`` and
      ``reliability_diagram.png`` (observed positive fraction against mean predicted probability per bin).

    Args:
        output_dir: folder of the files.
        entries: manifest entries of the evaluated split (to look up sessions).
        train_entries: manifest entries of the training split (baselines and class counts).
        target_key: the manifest key of the label, ``"sex"``.
        class_names: names of class 0 and class 1 (``("F", "M")``).
        probability_name: column name of P(class 1) in ``predictions.csv``.
        threshold: decision threshold on the probability.
        volume_key: image key whose brain-mask volume feeds the logistic baseline (reads each image's
            voxels once), or ``None`` to skip that baseline.
        extra_columns: manifest keys copied to ``predictions.csv``.
        provenance: the run's provenance (``monai_ms.bundle.evaluation_provenance``), or ``None``.
        n_resamples: bootstrap resamples of the intervals (0: none).
        seed: bootstrap seed.
        imaging_task: add the imaging-feature baseline of this task (``"sex"``), or None.
        bias_correction: measure its features on N4-corrected images (the bundle's ``bias_correction``).

    Examples:
        In ``evaluate.json``: ``{"_target_": "monai_ms.engines.ClassificationReportHandler",
        "output_dir": "@output_dir", "entries": "@evaluate#datalist", "train_entries":
        "@evaluate#train_datalist"}`` in the evaluator's ``val_handlers``.
    """

    def __init__(
        self,
        output_dir: str | Path,
        entries: Sequence[Mapping[str, Any]],
        train_entries: Sequence[Mapping[str, Any]],
        target_key: str = "sex",
        class_names: Sequence[str] = SEX_CLASSES,
        probability_name: str = "p_male",
        threshold: float = 0.5,
        volume_key: str | None = "t1",
        extra_columns: Sequence[str] = ("subject", "age"),
        provenance: Mapping[str, Any] | None = None,
        n_resamples: int = DEFAULT_RESAMPLES,
        seed: int = 0,
        imaging_task: str | None = None,
        bias_correction: bool = False,
    ) -> None:
        self.imaging_task, self.bias_correction = imaging_task, bool(bias_correction)
        super().__init__(id_key="session", pred_key="pred", label_key="label", pred_transform=probability_from_logit)
        if len(class_names) != 2:
            raise ValueError(f"class_names must name two classes, got {list(class_names)}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.output_dir = Path(output_dir)
        self.entries = {str(e["session"]): e for e in entries}
        self.train_entries = list(train_entries)
        self.target_key = target_key
        self.class_names = list(class_names)
        self.probability_name = probability_name
        self.threshold = threshold
        self.volume_key = volume_key
        self.extra_columns = list(extra_columns)
        self.provenance = provenance
        self.n_resamples, self.seed = int(n_resamples), int(seed)

    metric = "auc"
    lower_is_better = False

    def build(self) -> ReportParts:
        entries = [self.entries[i] for i in self.ids]
        probability = np.asarray(self.preds, dtype=np.float64)
        labels = np.asarray(self.labels, dtype=np.float64)
        model = classification_metrics(probability, labels, self.threshold)
        baselines = classification_baselines(
            self.train_entries, entries, self.target_key, self.threshold, self.volume_key, self.imaging_task,
            self.bias_correction,
        )
        frame = pd.DataFrame({"session": self.ids})
        for column in self.extra_columns:
            frame[column] = [e.get(column) for e in entries]
        names = np.asarray(self.class_names, dtype=object)
        frame[self.target_key] = names[labels.astype(int)]
        frame[self.probability_name] = probability
        frame["predicted"] = class_from_probability(probability, self.threshold, self.class_names)
        frame["correct"] = frame["predicted"] == frame[self.target_key]
        curves = {"model": probability}
        for name, result in baselines.items():
            if "volumes_ml" in result:
                frame["brain_volume_ml"] = result.pop("volumes_ml")
            curves[name] = np.asarray(result["probabilities"])
            frame[f"baseline_{name}"] = result.pop("probabilities")
        counts = class_counts(self.train_entries, self.target_key)
        calibration = {"n_bins": ECE_BINS, "method": "monai.metrics.CalibrationErrorMetric (expected), equal-width bins of P(class 1)",
                       **reliability_bins(probability, labels, ECE_BINS)}
        report = {
            "target": self.target_key,
            "classes": {"0": self.class_names[0], "1": self.class_names[1]},
            "threshold": self.threshold,
            "training_class_counts": {self.class_names[0]: counts[0], self.class_names[1]: counts[1]},
            "confusion_matrix_layout": f"rows = true class, columns = predicted class, order {self.class_names}",
            "model": model,
            "baselines": baselines,
            "calibration": calibration,
        }

        def compute(index: np.ndarray) -> dict[str, dict[str, Any]]:
            return {name: classification_metrics(p[index], labels[index], self.threshold) for name, p in curves.items()}

        return ReportParts(report, frame, compute, subjects_of(entries), {"labels": labels, "curves": curves, "calibration": calibration})

    def after_write(self, parts: ReportParts) -> None:
        self._plot(parts.extra["labels"], parts.extra["curves"], parts.report["model"])
        self._plot_reliability(parts.extra["calibration"], parts.report["model"])

    def summary(self, parts: ReportParts) -> str:
        model = parts.report["model"]
        values = ", ".join(f"{k}={v:.3f}" for k, v in model.items() if isinstance(v, float))
        return f"evaluated {model['n']} sessions: {values}; written to {self.output_dir}"

    def _plot(self, labels: np.ndarray, curves: Mapping[str, np.ndarray], model: Mapping[str, Any]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
        if len(np.unique(labels)) == 2:
            for name, probability in curves.items():
                if name == "training_prevalence":
                    continue  # a constant: the chance diagonal
                fpr, tpr, _ = skm.roc_curve(labels, probability)
                auc = skm.roc_auc_score(labels, probability)
                ax.plot(fpr, tpr, label=f"{name.replace('_', ' ')} (AUC {auc:.2f})")
        ax.set(
            xlabel=f"false positive rate (1 - specificity, {self.class_names[0]})",
            ylabel=f"true positive rate (sensitivity, {self.class_names[1]})",
            title=f"ROC, n {model['n']}",
            xlim=(-0.02, 1.02),
            ylim=(-0.02, 1.02),
        )
        ax.legend(loc="lower right", fontsize=8)
        save_figure(fig, self.output_dir / "roc_curve.png")
        plt.close(fig)

        matrix = np.asarray(model["confusion_matrix"])
        fig, ax = plt.subplots(figsize=(3.8, 3.4))
        ax.imshow(matrix, cmap="Blues")
        for (row, column), count in np.ndenumerate(matrix):
            color = "white" if count > matrix.max() / 2 else "black"
            ax.text(column, row, str(count), ha="center", va="center", color=color, fontsize=12)
        ax.set(
            xticks=[0, 1],
            yticks=[0, 1],
            xticklabels=self.class_names,
            yticklabels=self.class_names,
            xlabel="predicted",
            ylabel="true",
            title=f"accuracy {model['accuracy']:.2f}, balanced {model['balanced_accuracy']:.2f}",
        )
        fig.tight_layout()
        save_figure(fig, self.output_dir / "confusion_matrix.png")
        plt.close(fig)

    def _plot_reliability(self, calibration: Mapping[str, Any], model: Mapping[str, Any]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        mean_p = np.asarray(calibration["mean_probability"], dtype=np.float64)
        fraction = np.asarray(calibration["positive_fraction"], dtype=np.float64)
        count = np.asarray(calibration["count"], dtype=np.float64)
        filled = count > 0
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
        top.plot(mean_p[filled], fraction[filled], marker="o", label="model")
        for x, y, k in zip(mean_p[filled], fraction[filled], count[filled]):
            top.annotate(f"{int(k)}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ece = model.get("ece")
        interval = model.get("ci95", {}).get("ece")
        ci = f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else ""
        top.set(ylabel=f"observed fraction {self.class_names[1]}", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
                title=f"reliability, ECE {ece:.3f}{ci}, n {model['n']}")
        top.legend(loc="upper left", fontsize=8)
        width = 1.0 / max(len(count), 1)
        bottom.bar(np.asarray(calibration["bin_low"]) + width / 2, count, width=width * 0.9, color="tab:blue", alpha=0.6)
        bottom.set(xlabel=f"predicted P({self.class_names[1]}) (bin mean)", ylabel="sessions")
        fig.tight_layout()
        save_figure(fig, self.output_dir / "reliability_diagram.png")
        plt.close(fig)
